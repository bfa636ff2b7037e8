"""Online KD with a co-located teacher: loss = (1-alpha)*LM + alpha*KD through megakd.losses.

The student starts from a fixed init checkpoint; the teacher is that same init trained 3 steps more,
so its distribution really differs from the student's.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from dist_utils import init_and_teacher, read_metrics, run_job, tiny_args

from megakd.config import load_config
from megakd.errors import ConfigError

KD = {"kd.source": "online", "kd.kind": "fkl", "kd.temperature": 2.0, "kd.top_p": 0.95,
      "kd.top_k": 20, "kd.alpha": 0.9, "kd.alpha_schedule": "wsd", "kd.alpha_warmup": 0.25}


@pytest.fixture(scope="module")
def models(tiny_corpus, tmp_path_factory):
    return init_and_teacher(tiny_corpus, tmp_path_factory.mktemp("kd"))


def _run(corpus, work, nproc=1, **overrides):
    run_job(tiny_args(corpus, work, **overrides), nproc=nproc)
    return read_metrics(work / "metrics.jsonl")


def test_teacher_equal_to_student_gives_zero_kd_and_alpha_zero_is_lm_only(models, tiny_corpus,
                                                                          tmp_path):
    init, _ = models
    same = _run(tiny_corpus, tmp_path / "same", **{**KD, "checkpoint.pretrained": init,
                                                   "teacher.checkpoint": init,
                                                   "kd.top_p": 1.0, "kd.top_k": 0})
    assert same[1]["kd loss"] == pytest.approx(0.0, abs=1e-6)
    lm_only = _run(tiny_corpus, tmp_path / "lm", **{"checkpoint.pretrained": init})
    no_kd = _run(tiny_corpus, tmp_path / "a0", **{**KD, "checkpoint.pretrained": init,
                                                  "teacher.checkpoint": init, "kd.alpha": 0.0})
    assert [no_kd[i]["lm loss"] for i in range(1, 7)] == pytest.approx(
        [lm_only[i]["lm loss"] for i in range(1, 7)], rel=1e-6)


def test_kd_tp2_and_dp2_match_one_process(models, tiny_corpus, tmp_path):
    init, teacher = models
    args = {**KD, "checkpoint.pretrained": init, "teacher.checkpoint": teacher}
    ref = _run(tiny_corpus, tmp_path / "ref", **args)
    kd = [ref[i]["kd loss"] for i in range(1, 7)]
    assert kd[0] > 1e-3, "teacher and student should differ"
    # alpha follows the WSD schedule: warm-up over the first 25 % of 6 steps
    assert ref[1]["alpha"] == 0.0 and ref[3]["alpha"] == pytest.approx(0.9)
    # mbs 1: the student's logits must not be edited in place by the LM loss before KD reads them
    for name, layout in {"tp2": {"parallel.tp": 2}, "dp2_mbs1": {"train.micro_batch_size": 1}}.items():
        got = _run(tiny_corpus, tmp_path / name, nproc=2, **args, **layout)
        for key in ("kd loss", "lm loss", "loss", "grad norm"):
            assert [got[i][key] for i in range(1, 7)] == pytest.approx(
                [ref[i][key] for i in range(1, 7)], rel=5e-4), (name, key)


# bf16 rounds each teacher weight and activation by at most 2^-8 relative (8 significant bits); in
# this 2-layer teacher its logits move by about that much and the KD loss on them (computed in fp32)
# by less, as the roundings partly cancel over tokens and vocab (~1e-5 relative seen). One bf16 unit
# roundoff allows for bf16, not for wrong targets (those move the loss by O(1)).
BF16_REL = 2.0 ** -8


@pytest.mark.parametrize("student", ["fp32", "bf16"])
def test_bf16_teacher_kd_loss_close_to_fp32_teacher(models, tiny_corpus, tmp_path, student):
    """teacher.precision=bf16 (default with a bf16 student) next to an fp32 teacher: the dense bf16
    logits feed the losses; the KD loss moves by bf16 rounding only."""
    init, teacher = models
    args = {**KD, "checkpoint.pretrained": init, "teacher.checkpoint": teacher, "train.iters": 2,
            "model.precision": student}
    bf16_teacher = {"teacher.precision": "bf16"} if student == "fp32" else {}  # else the default
    runs = [(tmp_path / "fp32", {**args, "teacher.precision": "fp32"}),
            (tmp_path / "bf16", {**args, **bf16_teacher})]
    with ThreadPoolExecutor(2) as pool:  # two single-threaded jobs side by side
        ref, got = pool.map(lambda run: _run(tiny_corpus, run[0], **run[1]), runs)
    for i in (1, 2):
        assert got[i]["kd loss"] == pytest.approx(ref[i]["kd loss"], rel=BF16_REL)
    assert got[1]["kd loss"] != ref[1]["kd loss"], "the teacher did not run in bf16"


@pytest.mark.parametrize("overrides, message", [
    (["kd.source=online"], "needs exactly one of teacher.checkpoint and teacher.hf_path"),
    (["kd.kind=kl"], "kd.kind='kl' is not one of"),
    (["kd.alpha=1.5"], "kd.alpha=1.5 must be in [0, 1]"),
])
def test_kd_config_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.prefix=p", "data.tokenizer=t", *overrides])
    assert message in str(e.value)


def test_teacher_from_hugging_face_dir(tiny_corpus, tmp_path):
    """teacher.hf_path: a local HF model is converted once (rank 0, cached) and used as teacher;
    a teacher whose vocabulary does not fit the student's tokenizer is a one-line error."""
    import torch
    import transformers as T

    from megakd.data.tokenizer import load_tokenizer

    vocab = len(load_tokenizer(tiny_corpus[0]))
    dirs = {}
    for name, v in {"fits": vocab, "too_big": vocab + 200}.items():
        torch.manual_seed(0)
        cfg = T.LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        dirs[name] = tmp_path / f"hf_{name}"
        T.AutoModelForCausalLM.from_config(cfg).save_pretrained(dirs[name])
    env = {"MEGAKD_CACHE": str(tmp_path / "cache")}
    # converted once in fp32; the load, not the conversion, decides what the teacher runs in
    args = {**KD, "teacher.hf_path": dirs["fits"], "train.iters": 2, "teacher.precision": "bf16"}
    run_job(tiny_args(tiny_corpus, tmp_path / "ok", **args), env=env)
    got = read_metrics(tmp_path / "ok" / "metrics.jsonl")
    assert got[2]["kd loss"] > 0 and got[2]["alpha"] > 0
    proc = run_job(tiny_args(tiny_corpus, tmp_path / "bad", **{**args, "teacher.hf_path":
                                                                dirs["too_big"]}),
                   env=env, check=False)
    assert proc.returncode == 2 and "distill between models that share a tokenizer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_teacher_with_another_tokenizer_is_refused(models, tiny_corpus, tmp_path):
    """Same vocabulary size, two token ids swapped: the recorded fingerprints differ."""
    import json
    import shutil

    other = str(tmp_path / "tok")
    shutil.copytree(tiny_corpus[0], other)
    with open(f"{other}/tokenizer.json") as f:
        spec = json.load(f)
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    with open(f"{other}/tokenizer.json", "w") as f:
        json.dump(spec, f)
    teacher = tmp_path / "teacher"
    run_job(tiny_args(tiny_corpus, tmp_path / "t", **{"train.iters": 0, "checkpoint.save": teacher,
                                                      "data.tokenizer": other}))
    init, _ = models
    proc = run_job(tiny_args(tiny_corpus, tmp_path / "s", **{**KD, "teacher.checkpoint": teacher,
                                                             "checkpoint.pretrained": init}),
                   check=False)
    assert proc.returncode == 2 and "was trained with tokenizer" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
