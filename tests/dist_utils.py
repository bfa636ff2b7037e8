"""Run megakd entry points as real processes (python or torchrun/gloo) and read their metrics."""

import os
import signal
import socket
import subprocess
import sys
import tempfile

from megakd.platform import is_rendezvous_var
from megakd.training.logging import read_metrics  # noqa: F401  (tests import it from here)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(REPO, "examples", "pretrain_pd.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(args, nproc: int = 1, env=None, timeout: int = 600, script: str = PRETRAIN,
            check: bool = True) -> subprocess.CompletedProcess:
    """`python script args` (nproc=1) or `torchrun --nproc-per-node nproc script args`."""
    if nproc == 1:
        cmd = [sys.executable, script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), script]
    # a job never joins this process's rendezvous
    inherited = {k: v for k, v in os.environ.items() if not is_rendezvous_var(k)}
    # the checkout first; what the caller's PYTHONPATH adds (e.g. wheels unpacked on a GPU box) after
    path = os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    full_env = {**inherited, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **(env or {})}
    argv = cmd + [str(a) for a in args]
    # Output goes to files, not pipes, and the job gets its own session: megatron-core's checkpoint
    # writer starts a multiprocessing Manager that outlives a SIGKILLed trainer and would hold a
    # pipe open forever. The whole session is killed once the job has ended.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=full_env, cwd=REPO,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(argv, returncode, out.read(), err.read())
    if check and result.returncode != 0:
        raise AssertionError(f"job failed ({result.returncode}): {' '.join(argv)}"
                             f"\n--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n"
                             f"{result.stderr[-4000:]}")
    return result


def tiny_args(corpus, workdir, **overrides):
    """Overrides for a tiny, fast, dropout-free Llama-style run on the synthetic corpus."""
    tok_dir, prefix = corpus
    args = {
        "data.prefix": prefix, "data.tokenizer": tok_dir, "data.cache_dir": f"{workdir}/cache",
        "model.num_layers": 2, "model.hidden_size": 64, "model.num_attention_heads": 4,
        "model.num_query_groups": 2, "train.seq_length": 32, "train.micro_batch_size": 2,
        "train.global_batch_size": 8, "train.iters": 6, "train.eval_interval": 0,
        "optim.lr": 3e-3, "optim.warmup_iters": 1, "log.interval": 1,
        "log.metrics_file": f"{workdir}/metrics.jsonl", "checkpoint.save": None,
    }
    args.update(overrides)
    return [f"{k}={'null' if v is None else v}" for k, v in args.items()]


def init_and_teacher(corpus, work):
    """(init, teacher) checkpoints of the tiny model: the teacher is the init trained 3 steps more,
    so its distribution really differs from a student started at init."""
    init, teacher = work / "init", work / "teacher"
    run_job(tiny_args(corpus, work, **{"train.iters": 0, "checkpoint.save": init}))
    run_job(tiny_args(corpus, work, **{"train.iters": 3, "checkpoint.save": teacher,
                                       "checkpoint.pretrained": init}))
    return init, teacher
