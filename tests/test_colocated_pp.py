"""Co-located teacher at PP > 1: the teacher's layers split over the student's pipeline stages, its
hidden states sent with the student's. PP=2 must reproduce PP=1 step for step (through a save and
resume, and in validation), and the teacher must stay out of the student's checkpoint and gradients.

The teacher is wider and deeper than the student (hidden 96, 4 layers vs 64, 2), so a wrong split
of the concatenated p2p tensor cannot go unnoticed.
"""

import pytest

from dist_utils import read_metrics, run_job, tiny_args

from megakd.config import ModelConfig, ParallelConfig, load_config
from megakd.errors import ConfigError

STEPS = 4
KD = {"kd.source": "online", "kd.kind": "fkl", "kd.temperature": 2.0, "kd.top_p": 0.95,
      "kd.top_k": 20, "kd.alpha": 0.9, "kd.alpha_schedule": "linear", "train.iters": STEPS,
      "train.eval_interval": 2, "train.eval_iters": 1}
TEACHER = {"model.num_layers": 4, "model.hidden_size": 96}


@pytest.fixture(scope="module")
def models(tiny_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("coloc")
    init, teacher = work / "init", work / "teacher"
    run_job(tiny_args(tiny_corpus, work, **{"train.iters": 0, "checkpoint.save": init}))
    run_job(tiny_args(tiny_corpus, work, **TEACHER, **{"train.iters": 2, "checkpoint.save": teacher}))
    return init, teacher


def _tensor_shapes(ckpt):
    from megatron.core import dist_checkpointing

    return {k: tuple(v.global_shape) for k, v in dist_checkpointing.load_tensors_metadata(ckpt).items()}


def test_pp2_equals_pp1_through_save_and_resume(models, tiny_corpus, tmp_path):
    init, teacher = models
    args = {**KD, "checkpoint.pretrained": init, "teacher.checkpoint": teacher}
    run_job(tiny_args(tiny_corpus, tmp_path / "pp1", **args))
    want = read_metrics(tmp_path / "pp1" / "metrics.jsonl")
    assert want[1]["kd loss"] > 1e-2, "teacher and student should differ"

    # PP=2: stop after a checkpoint at step 2, resume to the end (same metrics file).
    ckpt = tmp_path / "pp2" / "ckpt"
    pp2 = {**args, "parallel.pp": 2, "checkpoint.save": ckpt}
    run_job(tiny_args(tiny_corpus, tmp_path / "pp2", **pp2, **{"train.exit_interval": 2}), nproc=2)
    run_job(tiny_args(tiny_corpus, tmp_path / "pp2", **pp2, **{"checkpoint.load": ckpt}), nproc=2)
    got = read_metrics(tmp_path / "pp2" / "metrics.jsonl")
    assert sorted(got) == list(range(1, STEPS + 1))
    for key in ("lm loss", "kd loss", "loss", "grad norm", "alpha"):
        assert [got[i][key] for i in got] == pytest.approx(
            [want[i][key] for i in got], rel=1e-5), key
    valid, want_valid = (read_metrics(tmp_path / d / "metrics.jsonl", "valid") for d in ("pp2", "pp1"))
    assert sorted(valid) == [2, 4]
    for key in ("lm loss", "kd loss", "loss"):
        assert [valid[i][key] for i in valid] == pytest.approx([want_valid[i][key] for i in valid],
                                                               rel=1e-5), key

    # The student's checkpoint holds the student only: the same tensors as the LM-only init's
    # (model), and optimizer state only of those shapes (a frozen teacher has no grads to step).
    student = _tensor_shapes(init / "iter_0000000")
    saved = _tensor_shapes(ckpt / f"iter_{STEPS:07d}")
    assert {k: v for k, v in saved.items() if k in student} == student
    extra = {k: v for k, v in saved.items() if k not in student}
    assert extra and all(k.startswith("optimizer.") for k in extra), sorted(extra)
    assert {v for v in extra.values() if len(v) > 1} <= set(student.values()), extra


def test_teacher_layers_not_divisible_by_pp_is_one_line_error(models, tiny_corpus, tmp_path):
    init, _ = models
    odd = tmp_path / "odd"
    run_job(tiny_args(tiny_corpus, tmp_path / "t", **{"model.num_layers": 3, "train.iters": 0,
                                                      "checkpoint.save": odd}))
    proc = run_job(tiny_args(tiny_corpus, tmp_path / "s", **KD, **{
        "teacher.checkpoint": odd, "checkpoint.pretrained": init, "parallel.pp": 2}),
        nproc=2, check=False)
    for rank in (0, 1):
        assert f"[rank {rank}] error: teacher {odd} has 3 layers, which pp=2 does not divide" \
            in proc.stderr, proc.stderr[-3000:]
    # torchrun prints its own traceback on a failed child; none may come from megakd's code
    frames = [x for x in proc.stderr.splitlines() if x.strip().startswith('File "')]
    assert proc.returncode != 0 and all("torch/distributed" in x or "<frozen" in x for x in frames)


def test_teacher_layout_and_config_errors():
    from megakd.teacher.loading import check_layout

    m = ModelConfig(num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=1)
    check_layout("t", m, ParallelConfig(tp=1, pp=2))
    with pytest.raises(ConfigError, match="4 attention heads in 1 query groups, which tp=2"):
        check_layout("t", m, ParallelConfig(tp=2))
    with pytest.raises(ConfigError, match="has 4 layers, which pp=3 does not divide"):
        check_layout("t", m, ParallelConfig(pp=3))
    base = ["data.prefix=p", "data.tokenizer=t", "kd.source=online", "teacher.checkpoint=x",
            "parallel.pp=2", "model.num_layers=2"]
    load_config(None, base)  # PP > 1 is allowed for a co-located teacher now
    with pytest.raises(ConfigError, match="does not support parallel.sequence_parallel"):
        load_config(None, base + ["parallel.tp=2", "parallel.sequence_parallel=true"])


def test_pipeline_pair_splits_input_and_sends_back_the_students_gradient_only():
    """A middle stage: the received [s, b, h_s + h_t] tensor is split; backward through the sent
    cat(student, teacher) gives the student's input gradient exactly, zeros in the teacher's part."""
    import torch
    from types import SimpleNamespace

    from megakd.teacher.colocated import PipelinePair

    class Stage(torch.nn.Module):  # what the pair needs of a GPTModel pipeline stage
        def __init__(self, hidden, frozen):
            super().__init__()
            self.config = SimpleNamespace(hidden_size=hidden, params_dtype=torch.float64)
            self.post_process = False
            self.lin = torch.nn.Linear(hidden, hidden, dtype=torch.float64)
            self.lin.requires_grad_(not frozen)

        def set_input_tensor(self, tensors):
            self.x = tensors[0]

        def forward(self, tokens, position_ids, attention_mask, **kwargs):
            return torch.tanh(self.lin(self.x))

    torch.manual_seed(0)
    student, teacher = Stage(4, frozen=False), Stage(6, frozen=True)
    pair = PipelinePair(student, teacher)
    x = torch.randn(3, 2, 10, dtype=torch.float64, requires_grad=True)
    pair.set_input_tensor([x])
    out = pair(None, None, None)
    assert out.shape == (3, 2, 10) and not teacher.x.requires_grad
    assert torch.equal(out[..., 4:], torch.tanh(teacher.lin(x[..., 4:])).detach())
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref_x = x.detach()[..., :4].clone().requires_grad_(True)
    torch.tanh(student.lin(ref_x)).backward(grad_out[..., :4])
    assert torch.equal(x.grad[..., :4], ref_x.grad)
    assert torch.count_nonzero(x.grad[..., 4:]) == 0 and teacher.lin.weight.grad is None
