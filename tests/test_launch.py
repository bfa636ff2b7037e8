"""Launcher: recipe table, world size with dedicated-teacher ranks, Slurm dry-run, real local runs.

The NeMo-Run jobs run as real processes (tools/launch.py in a subprocess, torchrun/gloo on CPU);
NEMORUN_HOME points into tmp_path so nothing lands in ~/.nemo_run.
"""

import os
import subprocess
import sys

import pytest

from megakd.errors import ConfigError, MegakdError
from dist_utils import REPO, read_metrics, tiny_args

from megakd.launch import plan as launch_plan
from megakd.launch.plan import LaunchError, Recipe, get_recipe, plan_world, read_raw_config

LAUNCH = os.path.join(REPO, "tools", "launch.py")
SLURM_2x8 = ["--executor", "slurm", "--nodes", "2", "--gpus-per-node", "8",
             "--container", "nvcr.io/acme/megakd:1.0", "--account", "acct", "--partition", "batch"]


def launch_cli(args, tmp_path, recipes=None, timeout=300):
    """tools/launch.py ARGS in a subprocess (cwd tmp_path), `recipes` added to the table first."""
    patch = "".join(f"plan.RECIPES[{name!r}] = plan.Recipe({script!r}, {torchrun!r}, 'test');"
                    for name, (script, torchrun) in (recipes or {}).items())
    code = (f"import runpy, sys; from megakd.launch import plan; {patch} "
            f"sys.argv = [{LAUNCH!r}] + sys.argv[1:]; "
            f"runpy.run_path({LAUNCH!r}, run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": REPO, "NEMORUN_HOME": str(tmp_path / "nemo_run_home"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=timeout)


def write_yaml(path, text):
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------------------
# Recipes and world size (pure Python)


def test_recipe_table_covers_the_entry_points():
    for name in ("pretrain_pd", "dump_teacher_logits", "miniplm_score", "train_minillm"):
        assert launch_plan.RECIPES[name].torchrun
    assert not launch_plan.RECIPES["preprocess_data"].torchrun
    assert get_recipe("pretrain_pd").script == "examples/pretrain_pd.py"
    with pytest.raises(LaunchError, match="did you mean 'pretrain_pd'"):
        get_recipe("pretrain_dp")


def test_recipe_without_its_script_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(launch_plan.RECIPES, "ghost", Recipe("tools/ghost.py", True, "missing"))
    with pytest.raises(LaunchError, match="needs tools/ghost.py, which does not exist"):
        get_recipe("ghost")
    proc = launch_cli(["ghost", "--executor", "local", "--nproc", "2"], tmp_path,
                      recipes={"ghost": ("tools/ghost.py", True)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: recipe 'ghost' needs tools/ghost.py, which does not exist in this checkout yet; "
        f"recipes available now: {', '.join(launch_plan.available_recipes())}"]


def test_raw_config_keeps_unknown_sections_and_applies_overrides(tmp_path):
    path = write_yaml(tmp_path / "t.yaml", "parallel: {tp: 2}\nteacher:\n  placement: dedicated\n"
                                           "  ranks: 8\n  checkpoint: /ckpt/teacher\n")
    raw = read_raw_config(path, ["teacher.ranks=16", "train.iters=5", "--flag", "not-an-override"])
    assert raw["teacher"] == {"placement": "dedicated", "ranks": 16, "checkpoint": "/ckpt/teacher"}
    assert raw["parallel"] == {"tp": 2} and raw["train"] == {"iters": 5}
    with pytest.raises(ConfigError, match="config file .* does not exist"):
        read_raw_config(str(tmp_path / "missing.yaml"), [])
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_raw_config(write_yaml(tmp_path / "list.yaml", "- 1\n"), [])


@pytest.mark.parametrize("raw, whole_nodes, want", [
    ({}, True, (2, 8, 16, 0)),
    ({"teacher": {"placement": "colocated", "ranks": 8}}, True, (2, 8, 16, 0)),
    ({"kd": {"source": "offline"}, "teacher": {"placement": "colocated"}}, True, (2, 8, 16, 0)),
    ({"kd": {"source": "online"}, "teacher": {"placement": "dedicated", "ranks": 8}}, True, (3, 8, 16, 8)),
    ({"kd": {"source": "online"}, "teacher": {"placement": "dedicated", "ranks": 16}, "parallel": {"tp": 8, "pp": 2}}, True,
     (4, 8, 16, 16)),
    ({"kd": {"source": "online"}, "teacher": {"placement": "dedicated", "ranks": 3}}, False, (1, 19, 16, 3)),
])
def test_world_is_student_plus_teacher_ranks(raw, whole_nodes, want):
    nodes, per_node = (2, 8) if whole_nodes else (1, 16)
    world = plan_world(raw, nodes, per_node, whole_nodes)
    assert (world.nodes, world.procs_per_node, world.student_ranks, world.teacher_ranks) == want
    assert world.size == world.student_ranks + world.teacher_ranks


@pytest.mark.parametrize("raw, match", [
    ({"kd": {"source": "online"}, "teacher": {"placement": "dedicated"}}, "needs teacher.ranks: N > 0"),
    ({"kd": {"source": "online"}, "teacher": {"placement": "dedicated", "ranks": 0}}, "needs teacher.ranks: N > 0"),
    ({"kd": {"source": "online"}, "teacher": {"placement": "dedicated", "ranks": 4}}, "does not fill whole nodes of 8"),
    ({"teacher": {"placement": "dedicated", "ranks": 8}}, "placement=dedicated needs kd.source=online"),
    ({"parallel": {"tp": 0}}, "parallel.tp must be a positive"),
    ({"parallel": {"tp": 3}}, "not a multiple of parallel.tp"),
    ({"teacher": "dedicated"}, "section 'teacher' must be a mapping"),
])
def test_world_errors_name_the_fix(raw, match):
    with pytest.raises(MegakdError, match=match):
        plan_world(raw, 2, 8, whole_nodes=True)


# ---------------------------------------------------------------------------------------------------
# Dry runs through NeMo-Run


def test_slurm_dryrun_2x8_renders_nodes_tasks_rendezvous_and_container(tmp_path):
    config = write_yaml(tmp_path / "run.yaml", "train: {iters: 100}\n")
    proc = launch_cli(["pretrain_pd", "--config", config, *SLURM_2x8, "--mount", "/lustre:/lustre",
                       "--env", "NCCL_DEBUG=WARN", "--dryrun", "train.iters=10"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "# megakd pretrain_pd: world 16 = 16 student ranks on 2 node(s) x 8" in out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --account=acct", "#SBATCH --partition=batch", "export NCCL_DEBUG=WARN"):
        assert line in out.splitlines(), line
    srun = next(line for line in out.splitlines() if line.startswith("srun "))
    for part in ("--container-image nvcr.io/acme/megakd:1.0", "--container-mounts /lustre:/lustre,",
                 "torchrun --rdzv-backend c10d --rdzv-endpoint $head_node_ip:29500",
                 "--nnodes 2 --nproc-per-node 8 --node-rank $SLURM_NODEID",
                 "/workspace/megakd/examples/pretrain_pd.py --config /nemo_run/code/run.yaml "
                 "train.iters=10"):
        assert part in srun, part
    assert 'head_node_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address)' in out


@pytest.fixture()
def nemo(tmp_path, monkeypatch, request):
    """megakd.launch.nemo with NeMo-Run's state in tmp_path (in this process: no start-up cost)."""
    import nemo_run

    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(tmp_path / "nemo_run_home"))
    # NeMo-Run's packagers shell out through invoke, which reads stdin: pytest's capture refuses
    devnull = open(os.devnull)
    request.addfinalizer(devnull.close)
    monkeypatch.setattr(sys, "stdin", devnull)
    from megakd.launch import nemo as nemo_module

    return nemo_module


def test_slurm_dryrun_counts_dedicated_teacher_ranks(nemo, tmp_path):
    config = write_yaml(tmp_path / "kd.yaml", "kd: {source: online}\n"
                                            "teacher:\n  placement: dedicated\n  ranks: 8\n")
    spec = nemo.LaunchSpec("pretrain_pd", executor="slurm", config=config, nodes=2,
                           gpus_per_node=8, container="img:1", account="acct")
    out = nemo.dryrun(spec)
    assert "world 24 = 16 student + 8 teacher ranks on 3 node(s) x 8" in out
    assert "#SBATCH --nodes=3" in out.splitlines()
    assert "--nnodes 3 --nproc-per-node 8" in out
    # an override on the command line counts too
    spec.args = ["teacher.ranks=16"]
    assert "#SBATCH --nodes=4" in nemo.dryrun(spec).splitlines()


def test_local_dryrun_adds_teacher_processes(nemo, tmp_path):
    config = write_yaml(tmp_path / "kd.yaml", "kd: {source: online}\n"
                                            "teacher: {placement: dedicated, ranks: 1}\n")
    spec = nemo.LaunchSpec("pretrain_pd", config=config, nproc=2, args=["train.iters=3"])
    out = nemo.dryrun(spec)
    assert "world 3 = 2 student + 1 teacher ranks on 1 node(s) x 3" in out
    command = out.splitlines()[-1]
    assert "torchrun " in command and "--nnodes 1 --nproc-per-node 3" in command
    assert command.endswith(f"{REPO}/examples/pretrain_pd.py --config {config} train.iters=3")


def test_single_process_recipe_rejects_a_process_count(nemo):
    with pytest.raises(LaunchError, match="preprocess_data runs as one process"):
        nemo.dryrun(nemo.LaunchSpec("preprocess_data", nproc=2))


# ---------------------------------------------------------------------------------------------------
# Real local runs through NeMo-Run


def test_local_executor_trains_two_processes(tiny_corpus, tmp_path):
    args = tiny_args(tiny_corpus, tmp_path / "work")
    proc = launch_cli(["pretrain_pd", "--config", os.path.join(REPO, "configs", "tiny_cpu.yaml"),
                       "--executor", "local", "--nproc", "2", *args], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "megakd pretrain_pd: world 2 = 2 student ranks on 1 node(s) x 2" in proc.stdout
    assert "world 2 (tp 1, pp 1, dp 2)" in proc.stdout  # the trainer's own start-up line
    metrics = read_metrics(tmp_path / "work" / "metrics.jsonl")
    assert sorted(metrics) == list(range(1, 7))
    assert metrics[6]["lm loss"] < metrics[1]["lm loss"]
    # the job ran in the launcher's working directory: tiny_cpu's relative paths land there
    assert (tmp_path / "runs" / "tiny_cpu" / "tensorboard").is_dir()


def test_failed_local_job_makes_the_launcher_fail(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import os, sys\nprint('rank', os.environ['RANK'], 'fails')\nsys.exit(3)\n")
    proc = launch_cli(["failing", "--nproc", "2"], tmp_path,
                      recipes={"failing": (str(script), True)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: job failed: failing (FAILED; logs in "), last
