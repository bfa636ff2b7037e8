"""Half precision end to end on CPU: bf16/fp16 runs save, resume bit-exactly, initialise other TP/PP
layouts, export to Hugging Face and evaluate (bf16 is what every GPU user trains in; saving it used to
fail in megatron's optimizer checkpoint map)."""

import json
import os
import shutil

import pytest
import torch

from dist_utils import REPO, read_metrics, run_job, tiny_args

from megakd.training.checkpoint import TRACKER, iter_dir

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
    """mcore-to-hf keeps the bf16 weights bit for bit; transformers' loss on a document equals
    tools/eval_loss.py's on the same checkpoint (both in bf16)."""
    from transformers import AutoModelForCausalLM

    from megakd.convert.convert import _weights, load_checkpoint_model, single_process
    from megakd.data.indexed import open_indexed, write_indexed

    ckpt = bf16_init[0]
    out = tmp_path / "hf"
    run_job(["mcore-to-hf", "--ckpt", ckpt, "--out", out, "--tokenizer", tiny_corpus[0]],
            script=CONVERT)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.dtype == torch.bfloat16
    with single_process():
        mine = {k: v.clone() for k, v in _weights(load_checkpoint_model(str(ckpt))[0]).items()}
    hf_state = hf.state_dict()
    emb = mine["embedding.word_embeddings.weight"]
    assert emb.dtype == torch.bfloat16
    assert torch.equal(hf_state["model.embed_tokens.weight"], emb[:hf_state["model.embed_tokens.weight"].shape[0]])

    # one prefix of documents, each shorter than the window: eval_loss == HF's mean NLL
    prefix = str(tmp_path / "heldout")
    data = open_indexed(tiny_corpus[1])
    docs = [d for d in (data[i] for i in range(len(data))) if 2 < len(d) <= 32][:8]
    assert len(docs) == 8
    write_indexed(prefix, (d.tolist() for d in docs), 256)
    proc = run_job(["--ckpt", ckpt, "--data-prefix", prefix, "--seq-length", "32"], script=EVAL)
    got = json.loads(proc.stdout.strip().splitlines()[-1])[prefix]
    nll, count = 0.0, 0
    with torch.no_grad():
        for d in docs:
            ids = torch.as_tensor(d, dtype=torch.long)[None]
            logp = hf(ids).logits.float().log_softmax(-1)[0, :-1]
            nll -= logp.gather(-1, ids[0, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    assert got["tokens"] == count
    assert got["nll"] == pytest.approx(nll / count, rel=1e-2)
