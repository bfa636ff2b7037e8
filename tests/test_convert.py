"""HF <-> megatron-core conversion on tiny random models of every family (CPU, fp32).

- HF -> megatron-core: logits equal the HF model's at TP=1 (in process) and TP=2 (torchrun/gloo);
- megatron -> HF -> megatron and HF -> megatron -> HF are bit-exact;
- a student trained by megakd at PP=2 from model.init_from_hf exports to HF, loads in transformers,
  gives the same logits and generates;
- unsupported architectures, missing weights and shape mismatches are one-line errors naming the
  tensor, and leave no output behind.
"""

import json
import os

import pytest
import torch

from dist_utils import REPO, read_metrics, run_job, tiny_args

TOOL = os.path.join(REPO, "tools", "convert_checkpoint.py")
VOCAB = 300  # not a multiple of 128: the megatron embedding has padded rows
ATOL = 1e-4


def _hf_configs():
    import transformers as T

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    return {
        "llama": T.LlamaConfig(tie_word_embeddings=True, rope_theta=5e5, **common),
        "mistral": T.MistralConfig(tie_word_embeddings=False, sliding_window=None, **common),
        "qwen2": T.Qwen2Config(tie_word_embeddings=False, rms_norm_eps=1e-6, **common),
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                             bos_token_id=1, eos_token_id=2),
    }


def _hf_logits(model_dir, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def _randomize(model, seed):
    """Non-trivial norms and biases (HF initialises them to 1 and 0, which would hide mix-ups)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(p + 0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """{family: (hf_dir, ckpt_dir)}: tiny random HF models and their converted checkpoints."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from megakd.convert import hf_to_mcore

    root = tmp_path_factory.mktemp("convert")
    out = {}
    for i, (name, cfg) in enumerate(_hf_configs().items()):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_config(cfg)
        _randomize(model, i)
        hf_dir = root / f"hf_{name}"
        model.save_pretrained(hf_dir)
        if name == "gpt2":  # as the original GPT-2 files: .bin, no "transformer." prefix, mask buffers
            sd = load_file(hf_dir / "model.safetensors")
            sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
            sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
            torch.save(sd, hf_dir / "pytorch_model.bin")
            os.remove(hf_dir / "model.safetensors")
        out[name] = (str(hf_dir), hf_to_mcore(str(hf_dir), str(root / f"ckpt_{name}")))
    return out


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))


def _mcore_state(ckpt):
    from megakd.convert.convert import _weights, load_checkpoint_model, single_process

    with single_process():
        model, _ = load_checkpoint_model(ckpt)
        return {k: v.clone() for k, v in _weights(model).items()}


def _mcore_logits(ckpt, tokens):
    from megakd.convert.convert import load_checkpoint_model, single_process

    with single_process():
        model, _ = load_checkpoint_model(ckpt)
        model.eval()
        with torch.no_grad():
            positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
            return model(tokens, positions, None)


FAMILIES = ["llama", "mistral", "qwen2", "gpt2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_hf_tp1(family, hf_models, tokens):
    hf_dir, ckpt = hf_models[family]
    ref = _hf_logits(hf_dir, tokens)
    got = _mcore_logits(ckpt, tokens)
    assert got.shape[-1] == 384  # 300 padded to a multiple of 128
    diff = (got[..., :VOCAB] - ref).abs().max().item()
    print(f"{family} TP=1 max |logits diff| = {diff:.3g}")
    assert diff <= ATOL


def test_logits_match_hf_tp2(hf_models, tokens, tmp_path):
    """One 2-process torchrun job loads every family's checkpoint at TP=2 (resharded on load)."""
    torch.save(tokens, tmp_path / "tokens.pt")
    ckpts = [hf_models[f][1] for f in FAMILIES]
    run_job([2, tmp_path / "logits.pt", tmp_path / "tokens.pt", *ckpts], nproc=2,
            script=os.path.join(REPO, "tests", "convert_logits_job.py"))
    got = torch.load(tmp_path / "logits.pt")
    for family, ckpt in zip(FAMILIES, ckpts):
        diff = (got[ckpt][..., :VOCAB] - _hf_logits(hf_models[family][0], tokens)).abs().max().item()
        print(f"{family} TP=2 max |logits diff| = {diff:.3g}")
        assert diff <= ATOL, family


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trips_are_bit_exact(family, hf_models, tmp_path):
    from megakd.convert import hf_to_mcore, mcore_to_hf
    from megakd.convert.hf_io import normalize_names, read_hf_config, read_hf_weights

    hf_dir, ckpt = hf_models[family]
    exported = mcore_to_hf(ckpt, str(tmp_path / "hf"))
    again = hf_to_mcore(exported, str(tmp_path / "ckpt"))
    # megatron -> HF -> megatron
    first, second = _mcore_state(ckpt), _mcore_state(again)
    assert first.keys() == second.keys()
    for k in first:
        assert torch.equal(first[k], second[k]), k
    # HF -> megatron -> HF (same tensor names, values and config)
    prefix = "transformer." if family == "gpt2" else "model."
    orig = normalize_names(read_hf_weights(hf_dir), prefix)
    back = read_hf_weights(exported)
    assert orig.keys() == back.keys()
    for k in orig:
        assert torch.equal(orig[k], back[k]), k
    a, b = read_hf_config(hf_dir).to_dict(), read_hf_config(exported).to_dict()
    for key in ("model_type", "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert a[key] == b[key], key


def test_student_trained_at_pp2_from_hf_exports_and_generates(hf_models, tiny_corpus, tmp_path):
    """model.init_from_hf in a 2-rank PP=2 run, then mcore-to-hf (CLI) -> transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megakd.convert import hf_to_mcore

    hf_dir = hf_models["llama"][0]
    work = tmp_path / "run"
    env = {"MEGAKD_CACHE": str(tmp_path / "cache")}
    args = tiny_args(tiny_corpus, work, **{"model.init_from_hf": hf_dir, "parallel.pp": 2,
                                            "train.iters": 3, "checkpoint.save": work / "ckpt",
                                            "model.num_layers": 4})  # replaced by the HF model's 2
    run_job(args, nproc=2, env=env)
    losses = read_metrics(work / "metrics.jsonl")
    assert len(losses) == 3
    cached = os.listdir(tmp_path / "cache" / "hf_convert")
    assert len(cached) == 1  # converted once, by rank 0, into the cache ...
    init = _mcore_state(str(tmp_path / "cache" / "hf_convert" / cached[0]))
    reference = _mcore_state(hf_models["llama"][1])
    assert all(torch.equal(init[k], reference[k]) for k in reference)  # ... as hf-to-mcore does

    out = tmp_path / "student_hf"
    proc = run_job(["mcore-to-hf", "--ckpt", work / "ckpt", "--out", out, "--tokenizer",
                    tiny_corpus[0]], script=TOOL, env=env)
    assert "wrote" in proc.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
    config = json.load(open(out / "config.json"))
    assert config["num_hidden_layers"] == 2 and config["tie_word_embeddings"] is True

    tokens = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(1))
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ref = hf(tokens).logits
    got = _mcore_logits(str(work / "ckpt"), tokens)
    diff = (got[..., :VOCAB] - ref).abs().max().item()
    print(f"trained student (PP=2 checkpoint) -> HF max |logits diff| = {diff:.3g}")
    assert diff <= ATOL
    # the student moved away from the HF initialisation
    assert (ref - _hf_logits(hf_dir, tokens)).abs().max() > 1e-3

    # megatron -> HF -> megatron on trained weights: bit-exact except the vocab padding rows, which
    # HF files do not carry (they come back as zeros; no token id reaches them)
    trained, again = _mcore_state(str(work / "ckpt")), _mcore_state(
        hf_to_mcore(str(out), str(tmp_path / "again")))
    emb = "embedding.word_embeddings.weight"
    for k in trained:
        assert torch.equal(trained[k][:VOCAB] if k == emb else trained[k],
                           again[k][:VOCAB] if k == emb else again[k]), k
    assert trained[emb][VOCAB:].any() and not again[emb][VOCAB:].any()

    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok("the king", return_tensors="pt")
    gen = hf.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 5


# ----------------------------------------------------------------------------------------- errors


def _assert_no_output(path):
    parent, name = os.path.split(str(path))
    assert not [f for f in os.listdir(parent) if f.startswith(name)]


def test_unsupported_architecture_is_one_line_cli_error(tmp_path):
    src = tmp_path / "bert"
    src.mkdir()
    json.dump({"model_type": "bert", "architectures": ["BertForMaskedLM"]},
              open(src / "config.json", "w"))
    proc = run_job(["hf-to-mcore", "--hf", src, "--out", tmp_path / "out"], script=TOOL,
                   check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unsupported architecture model_type='bert'" in lines[0]
    _assert_no_output(tmp_path / "out")


def _copy_model(hf_dir, dst, drop=None, config_edit=None):
    from safetensors.torch import load_file, save_file

    os.makedirs(dst)
    weights = load_file(os.path.join(hf_dir, "model.safetensors"))
    weights.pop(drop, None)
    save_file(weights, os.path.join(dst, "model.safetensors"))
    config = json.load(open(os.path.join(hf_dir, "config.json")))
    config.update(config_edit or {})
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    return str(dst)


@pytest.mark.parametrize("case,message", [
    (dict(drop="model.layers.1.self_attn.k_proj.bias"),
     "HF checkpoint is missing weight model.layers.1.self_attn.k_proj.bias"),
    (dict(config_edit={"intermediate_size": 128}),
     "shape mismatch: HF weight model.layers.0.mlp.gate_proj.weight"),
    (dict(config_edit={"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}),
     "RoPE scaling 'yarn'"),
], ids=["missing", "shape", "rope-scaling"])
def test_bad_models_are_one_line_errors_naming_the_tensor(case, message, hf_models, tmp_path):
    from megakd.convert import ConversionError, hf_to_mcore

    src = _copy_model(hf_models["qwen2"][0], tmp_path / "src", **case)
    with pytest.raises(ConversionError) as e:
        hf_to_mcore(src, str(tmp_path / "out"))
    assert message in str(e.value) and "\n" not in str(e.value)
    _assert_no_output(tmp_path / "out")
