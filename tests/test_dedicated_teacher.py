"""Teacher on dedicated ranks (teacher.placement=dedicated) equals the co-located teacher step by step
(same top-k truncation), at other teacher/student layouts, and the offline store for a teacher that
ignores context; a hung teacher stops the job, named."""

import os
import time

import pytest

from dist_utils import REPO, init_and_teacher, read_metrics, run_job, tiny_args

from megakd.config import ModelConfig, ParallelConfig, load_config
from megakd.errors import ConfigError
from megakd.platform import faults

KD = {"kd.source": "online", "kd.kind": "fkl", "kd.temperature": 2.0, "kd.top_p": 0.95,
      "kd.top_k": 20, "kd.alpha": 0.9, "train.iters": 4, "train.eval_interval": 2,
      "train.eval_iters": 1, "data.split": "90,10,0"}
DEDICATED = {"teacher.placement": "dedicated", "teacher.timeout_s": 60}

# name -> (processes, overrides). Students are the first ranks, the teacher the last teacher.ranks.
LAYOUTS = {
    "student1_teacher_tp2": (3, {**DEDICATED, "teacher.ranks": 2, "teacher.tp": 2}),
    "student_pp2_teacher_pp2": (4, {**DEDICATED, "teacher.ranks": 2, "teacher.pp": 2,
                                    "parallel.pp": 2, "teacher.prefetch": 1}),
    "student_dp2_share_one_teacher": (3, {**DEDICATED, "teacher.ranks": 1,
                                          "train.micro_batch_size": 1}),
}
KEYS = ("lm loss", "kd loss", "loss", "grad norm")


@pytest.fixture(scope="module")
def models(tiny_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("dedicated")
    init, teacher = init_and_teacher(tiny_corpus, work)
    ref = work / "colocated"
    run_job(tiny_args(tiny_corpus, ref, **KD, **{"checkpoint.pretrained": init,
                                                 "teacher.checkpoint": teacher}))
    return init, teacher, read_metrics(ref / "metrics.jsonl"), read_metrics(ref / "metrics.jsonl",
                                                                           "valid")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_dedicated_equals_colocated(layout, models, tiny_corpus, tmp_path):
    init, teacher, ref, ref_valid = models
    nproc, overrides = LAYOUTS[layout]
    run_job(tiny_args(tiny_corpus, tmp_path, **KD, **overrides, **{
        "checkpoint.pretrained": init, "teacher.checkpoint": teacher}), nproc=nproc)
    got, valid = read_metrics(tmp_path / "metrics.jsonl"), read_metrics(tmp_path / "metrics.jsonl",
                                                                         "valid")
    assert ref[1]["kd loss"] > 1e-3, "teacher and student should differ"
    for key in KEYS:
        assert [got[i][key] for i in range(1, 5)] == pytest.approx(
            [ref[i][key] for i in range(1, 5)], rel=5e-4), key
    for key in ("lm loss", "kd loss"):  # validation batches get their targets too
        assert [valid[i][key] for i in (2, 4)] == pytest.approx(
            [ref_valid[i][key] for i in (2, 4)], rel=5e-4), key
    assert got[4]["teacher wait"] >= 0 and got[4]["teacher queue"] >= 0


@pytest.mark.parametrize("fault", ["hang", "kill"])
def test_dead_or_hung_teacher_stops_the_job_naming_the_rank(fault, models, tiny_corpus, tmp_path):
    """hang: the students' receive times out (ours); kill: torchrun sees the exit first and ends
    the job, naming the rank and its signal."""
    init, teacher, _, _ = models
    start = time.monotonic()
    proc = run_job(tiny_args(tiny_corpus, tmp_path, **KD, **{
        **DEDICATED, "teacher.ranks": 1, "teacher.timeout_s": 5, "checkpoint.pretrained": init, "teacher.checkpoint": teacher}), nproc=2,
        env={faults.TEACHER: f"{fault}:1"}, check=False, timeout=300)
    assert proc.returncode != 0
    ours = "error: teacher global rank 1 failed or sent nothing for 5 s" in proc.stderr
    torchrun = "rank      : 1 (local_rank: 1)\n  exitcode  : -9" in proc.stderr
    assert ours if fault == "hang" else (ours or torchrun), proc.stderr[-3000:]
    assert time.monotonic() - start < 120


@pytest.mark.parametrize("overrides, world, message", [
    (["teacher.ranks=2"], 2, "world size 2 must equal student ranks"),
    (["teacher.ranks=2", "parallel.tp=2"], 3, "world size 3 must equal student ranks"),
    (["teacher.ranks=3", "teacher.tp=2"], 5, "teacher.ranks=3 is not a multiple of"),
    (["teacher.sharing=per_replica"], 3, "needs exactly 2"),
    (["teacher.ranks=2"], 3, "needs at most 1"),
    (["kd.top_k=0"], 2, "set kd.top_k > 0"),
    (["teacher.prefetch=0"], 2, "teacher.prefetch=0 must be positive"),
])
def test_dedicated_config_errors(overrides, world, message):
    base = ["data.prefix=p", "data.tokenizer=t", "kd.source=online", "teacher.checkpoint=x",
            "teacher.placement=dedicated", "kd.top_k=8", "teacher.ranks=1", "train.micro_batch_size=1",
            "train.global_batch_size=4"]
    with pytest.raises(ConfigError) as e:
        load_config(None, base + overrides, world_size=world)
    assert message in str(e.value)


def test_teacher_layout_must_split_its_heads_and_layers():
    """The dedicated teacher loads through teacher.loading, whose layout check names teacher.tp/pp."""
    from megakd.teacher.loading import check_layout

    model = ModelConfig(num_layers=3, num_attention_heads=4, num_query_groups=2)
    check_layout("t", model, ParallelConfig(tp=2, pp=3))
    with pytest.raises(ConfigError, match="tp=4 does not divide .* a dedicated one at teacher.tp"):
        check_layout("t", model, ParallelConfig(tp=4))
    with pytest.raises(ConfigError, match="a dedicated one's over teacher.pp"):
        check_layout("t", model, ParallelConfig(pp=2))


def test_schedule_follows_the_trainer_loop_and_checksum_sees_order():
    """Both roles walk `megakd.schedule` (train steps, evaluations, exit_interval, resume point); a
    target for other tokens, even the same tokens in another order, fails the checksum."""
    import torch

    from megakd.schedule import Step, phases, steps
    from megakd.teacher.dedicated import token_checksum

    cfg = load_config(None, ["data.prefix=p", "data.tokenizer=t", "train.iters=6",
                             "train.eval_interval=2", "train.exit_interval=4"])
    assert list(phases(cfg.train, 0)) == [("train", 1), ("train", 2), ("valid", 1), ("train", 3),
                                          ("train", 4), ("valid", 2)]
    assert list(phases(cfg.train, 4)) == [("train", 5), ("train", 6), ("valid", 3)]
    assert list(steps(cfg.train, 4)) == [Step(5, 0, False), Step(6, 3, False)]
    tokens = torch.tensor([[5, 7, 9], [1, 2, 3]])
    assert token_checksum(tokens) == token_checksum(tokens.clone())
    assert token_checksum(tokens) != token_checksum(tokens[:, [1, 0, 2]])


def test_dedicated_equals_offline_for_a_context_free_teacher(models, tiny_corpus, tmp_path):
    """The offline store holds each token's teacher row computed over its whole document, the dedicated
    teacher computes it over the packed sample, so on real text they differ by design. A teacher whose
    attention output projections are zero ignores context (its output is a function of the current
    token), so both paths must then give the same per-step losses, up to the store's quantisation
    (KL <= 1e-3 per row): the same tokens get the same targets through both pipelines."""
    import torch
    import transformers as T

    from megakd.convert import hf_to_mcore
    from megakd.data.tokenizer import load_tokenizer

    init = models[0]
    tok_dir, prefix = tiny_corpus
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(T.LlamaConfig(
        vocab_size=len(load_tokenizer(tok_dir)), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
        hf.lm_head.weight.mul_(50)  # peaked rows: no near-ties at the top-k boundary
    hf.save_pretrained(tmp_path / "hf")
    teacher = hf_to_mcore(str(tmp_path / "hf"), str(tmp_path / "teacher"))
    store = tmp_path / "store"
    run_job(["--teacher", teacher, "--tokenizer", tok_dir, "--data-prefix", prefix, "--output", store,
             "--top-p", KD["kd.top_p"], "--top-k", KD["kd.top_k"], "--temperature",
             KD["kd.temperature"], "--no-progress"], script=os.path.join(REPO, "tools",
                                                                         "dump_teacher_logits.py"))
    common = {**KD, "checkpoint.pretrained": init}
    run_job(tiny_args(tiny_corpus, tmp_path / "offline", **{**common, "kd.source": "offline",
                                                            "kd.store": store}))
    run_job(tiny_args(tiny_corpus, tmp_path / "dedicated", **common, **DEDICATED, **{
        "teacher.ranks": 1, "teacher.checkpoint": teacher}), nproc=2)
    off, ded = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("offline", "dedicated"))
    assert off[1]["kd loss"] > 1e-2, "teacher and student should differ"
    for key in KEYS:
        assert [ded[i][key] for i in range(1, 5)] == pytest.approx(
            [off[i][key] for i in range(1, 5)], rel=3e-3), key
