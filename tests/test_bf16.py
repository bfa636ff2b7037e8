"""Half precision end to end on CPU: bf16/fp16 runs save, resume bit-exactly, initialise other TP/PP
layouts, export to Hugging Face and evaluate (bf16 is what every GPU user trains in; saving it used to
fail in megatron's optimizer checkpoint map)."""

import json
import os
import shutil

import pytest
import torch

from dist_utils import REPO, read_metrics, run_job, tiny_args

from megakd.checkpoint import TRACKER, iter_dir

CONVERT = os.path.join(REPO, "tools", "convert_checkpoint.py")
EVAL = os.path.join(REPO, "tools", "eval_loss.py")


def _rewind(src, dst, iteration: int):
    """A copy of checkpoint root `src` whose newest checkpoint is `iteration` (later ones removed)."""
    shutil.copytree(src, dst)
    for name in os.listdir(dst):
        if name.startswith("iter_") and int(name[5:]) > iteration:
            shutil.rmtree(os.path.join(dst, name))
    with open(os.path.join(dst, TRACKER), "w") as f:
        f.write(str(iteration))


@pytest.mark.parametrize("precision,extra", [
    ("bf16", {}),
    ("fp16", {"optim.initial_loss_scale": 1024}),  # steps taken: the loss scaler's state resumes
    ("fp16", {}),  # 2**32 overflows: no step before the save, so no optimizer state is saved
], ids=["bf16", "fp16", "fp16-unstepped"])
def test_half_precision_resume_continues_bit_exact(precision, extra, tiny_corpus, tmp_path):
    """4 steps straight == 2 steps, resume from the step-2 checkpoint, 2 more (losses, LR, grad norm,
    skipped steps)."""
    common = {"model.precision": precision, "train.iters": 4, "checkpoint.interval": 2,
              "optim.lr_schedule": "wsd", **extra}
    straight = tmp_path / "straight"
    run_job(tiny_args(tiny_corpus, straight, **common, **{"checkpoint.save": straight / "ckpt"}))
    ckpt = tmp_path / "ckpt"
    _rewind(straight / "ckpt", ckpt, 2)
    resumed = tmp_path / "resumed"
    run_job(tiny_args(tiny_corpus, resumed, **common,
                      **{"checkpoint.save": ckpt, "checkpoint.load": ckpt}))
    want, got = read_metrics(straight / "metrics.jsonl"), read_metrics(resumed / "metrics.jsonl")
    assert sorted(got) == [3, 4]
    for it in (3, 4):
        for key in ("lm loss", "lr", "grad norm", "skipped"):
            assert got[it].get(key) == want[it].get(key), (it, key)
    assert os.path.isdir(iter_dir(str(ckpt), 4))
    skipped = [want[it].get("skipped", 0.0) for it in (1, 2)]
    assert skipped == ([1.0, 1.0] if precision == "fp16" and not extra else [0.0, 0.0])


@pytest.fixture(scope="module")
def bf16_init(tiny_corpus, tmp_path_factory):
    """A bf16 checkpoint saved after 2 steps, the TP=1 losses of 2 steps started from it, and the
    first loss of the untrained model."""
    work = tmp_path_factory.mktemp("bf16")
    run_job(tiny_args(tiny_corpus, work / "a", **{"model.precision": "bf16", "train.iters": 2,
                                                  "checkpoint.save": work / "ckpt"}))
    run_job(tiny_args(tiny_corpus, work / "b", **{"model.precision": "bf16", "train.iters": 2,
                                                  "checkpoint.pretrained": work / "ckpt"}))
    return (work / "ckpt", read_metrics(work / "b" / "metrics.jsonl"),
            read_metrics(work / "a" / "metrics.jsonl")[1]["lm loss"])


@pytest.mark.parametrize("layout", [{"parallel.tp": 2}, {"parallel.pp": 2}], ids=["tp2", "pp2"])
def test_bf16_checkpoint_initialises_another_layout(layout, bf16_init, tiny_corpus, tmp_path):
    """checkpoint.pretrained reshards a bf16 checkpoint: the first step's loss (the saved weights'
    forward) matches TP=1 to bf16 rounding of split matmuls (bf16 keeps 8 bits: ~4e-3 relative)."""
    ckpt, ref, untrained = bf16_init
    run_job(tiny_args(tiny_corpus, tmp_path, **{"model.precision": "bf16", "train.iters": 2,
                                               "checkpoint.pretrained": ckpt, **layout}), nproc=2)
    got = read_metrics(tmp_path / "metrics.jsonl")
    assert got[1]["lm loss"] == pytest.approx(ref[1]["lm loss"], rel=1e-2)
    assert got[1]["lm loss"] < untrained - 0.2  # the trained weights were loaded


def test_bf16_checkpoint_exports_to_hf_and_evaluates(bf16_init, tiny_corpus, tmp_path):
    """mcore-to-hf keeps the bf16 weights bit for bit and its logits are megakd's; tools/eval_loss.py
    equals the NLL of megakd's own logits, softmax over the padded vocabulary as in training (the HF
    export drops the padding rows, so HF's softmax is over fewer ids: ~0.4 nats lower on this barely
    trained model, whose padding logits are not yet pushed down)."""
    from transformers import AutoModelForCausalLM

    from megakd.convert.convert import _weights, load_checkpoint_model, single_process
    from megakd.data.indexed import open_indexed, write_indexed

    ckpt = bf16_init[0]
    out = tmp_path / "hf"
    run_job(["mcore-to-hf", "--ckpt", ckpt, "--out", out, "--tokenizer", tiny_corpus[0]],
            script=CONVERT)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.dtype == torch.bfloat16
    data = open_indexed(tiny_corpus[1])
    docs = [torch.as_tensor(data[i][:33], dtype=torch.long) for i in range(8)]  # 32 predictions each
    tokens = torch.stack(docs)
    with single_process():
        model = load_checkpoint_model(str(ckpt))[0].eval()
        emb = _weights(model)["embedding.word_embeddings.weight"].clone()
        with torch.no_grad():
            mine = model(tokens, torch.arange(33)[None].expand_as(tokens), None).float()
    with torch.no_grad():
        theirs = hf(tokens).logits.float()
    real = theirs.shape[-1]
    assert emb.dtype == torch.bfloat16
    assert torch.equal(hf.state_dict()["model.embed_tokens.weight"], emb[:real])
    torch.testing.assert_close(theirs, mine[..., :real], atol=2e-2, rtol=0)  # bf16 ulp at |logit| ~ 2-4

    prefix = str(tmp_path / "heldout")
    write_indexed(prefix, (d.tolist() for d in docs), 256)
    proc = run_job(["--ckpt", ckpt, "--data-prefix", prefix, "--seq-length", "32"], script=EVAL)
    got = json.loads(proc.stdout.strip().splitlines()[-1])[prefix]
    logp = mine[:, :-1].double().log_softmax(-1).gather(-1, tokens[:, 1:, None])
    assert got["tokens"] == logp.numel()
    assert got["nll"] == pytest.approx(-logp.mean().item(), rel=2e-3)
