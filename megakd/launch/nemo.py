"""Run a recipe through NeMo-Run: torchrun on this machine, or a Slurm batch job in a container.

    spec = LaunchSpec("pretrain_pd", executor="slurm", config="configs/x.yaml", nodes=4,
                      gpus_per_node=8, container="IMAGE", account="acct", partition="batch")
    launch(spec)              # submits (slurm) or runs to the end (local)
    print(dryrun(spec))       # the sbatch script / torchrun command, nothing is run

NeMo-Run facts this relies on (nemo_run 0.11): the local launcher exits 0 even when a job failed,
so `launch` checks every job's final state; it calls `torchrun` from PATH; it keeps its state in
$NEMORUN_HOME (default ~/.nemo_run).
"""

import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from megakd.launch.plan import (CONTAINER_CODE_DIR, REPO, LaunchError, Recipe, World, get_recipe,
                                plan_world, read_raw_config)

INSTALL_HINT = "pip install 'nemo_run>=0.11,<0.12' 'leptonai<0.47'"


@dataclass
class LaunchSpec:
    """One launch as the CLI describes it (tools/launch.py --help explains each flag)."""

    recipe: str
    executor: str = "local"
    config: Optional[str] = None
    args: List[str] = field(default_factory=list)
    """Passed to the entry point after --config (dotted overrides, or the tool's own flags)."""
    nproc: int = 1
    """local: student processes on this machine."""
    nodes: int = 1
    """slurm: student nodes (teacher nodes are added)."""
    gpus_per_node: int = 8
    container: Optional[str] = None
    account: Optional[str] = None
    partition: Optional[str] = None
    time: str = "04:00:00"
    mounts: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    code_dir: str = CONTAINER_CODE_DIR
    """slurm: where the checkout lives inside the container."""
    name: Optional[str] = None


def _nemo_run():
    try:
        import nemo_run
    except ImportError as e:  # also leptonai>=0.47: "No module named 'leptonai.api.v1'"
        raise LaunchError(f"NeMo-Run is not importable ({e}); {INSTALL_HINT}") from None
    return nemo_run


def plan(spec: LaunchSpec) -> World:
    """Check the spec and size its world (student + dedicated-teacher ranks)."""
    recipe = get_recipe(spec.recipe)
    if spec.executor not in ("local", "slurm"):
        raise LaunchError(f"unknown executor {spec.executor!r}; choose local or slurm")
    local = spec.executor == "local"
    nodes, per_node = (1, spec.nproc) if local else (spec.nodes, spec.gpus_per_node)
    if nodes < 1 or per_node < 1:
        raise LaunchError("--nproc, --nodes and --gpus-per-node must be positive")
    if not local:
        missing = [flag for flag, value in (("--container", spec.container),
                                            ("--account", spec.account)) if not value]
        if missing:
            raise LaunchError(f"the slurm executor needs {' and '.join(missing)}")
    if not recipe.torchrun:
        if nodes * (per_node if local else 1) != 1:
            raise LaunchError(f"{spec.recipe} runs as one process; drop --nproc/--nodes")
        return World(1, 1, 1, 0)
    return plan_world(read_raw_config(spec.config, spec.args), nodes, per_node,
                      whole_nodes=not local)


def _task(run, recipe: Recipe, spec: LaunchSpec):
    local = spec.executor == "local"
    if spec.config is None:
        config_args = []
    elif local:
        config_args = ["--config", os.path.abspath(spec.config)]
    else:  # shipped by the packager into the job's code dir, the container's working directory
        shipped = f"/{run.config.RUNDIR_NAME}/code/{os.path.basename(spec.config)}"
        config_args = ["--config", shipped]
    script = os.path.join(REPO if local else spec.code_dir, recipe.script)
    # torchrun needs entrypoint "python" (anything else adds --no-python); a plain local job
    # uses this interpreter, not whatever `python` is first on PATH.
    entrypoint = sys.executable if local and not recipe.torchrun else "python"
    return run.Script(path=script, entrypoint=entrypoint, args=config_args + list(spec.args))


def _job_env(spec: LaunchSpec) -> Dict[str, str]:
    if spec.executor == "local":  # NeMo-Run's LOGLEVEL=INFO adds ~40 lines of torchrun chatter
        return {"LOGLEVEL": "WARNING", **spec.env}
    return dict(spec.env)


def _executor(run, recipe: Recipe, spec: LaunchSpec, world: World):
    launcher = "torchrun" if recipe.torchrun else None
    if spec.executor == "local":
        return run.LocalExecutor(ntasks_per_node=world.procs_per_node, launcher=launcher,
                                 env_vars=_job_env(spec))
    packager = run.Packager()
    if spec.config is not None:
        config = os.path.abspath(spec.config)
        packager = run.PatternPackager(include_pattern=config,
                                       relative_path=os.path.dirname(config))
    return run.SlurmExecutor(
        account=spec.account, partition=spec.partition, time=spec.time,
        nodes=world.nodes, ntasks_per_node=world.procs_per_node if recipe.torchrun else 1,
        gpus_per_node=spec.gpus_per_node, container_image=spec.container,
        container_mounts=list(spec.mounts), env_vars=_job_env(spec), launcher=launcher,
        packager=packager)


def _add_job(run, exp, spec: LaunchSpec, world: World, tail_logs: bool = False):
    recipe = get_recipe(spec.recipe)
    exp.add(_task(run, recipe, spec), executor=_executor(run, recipe, spec, world),
            name=spec.recipe, tail_logs=tail_logs)


def dryrun(spec: LaunchSpec) -> str:
    """The world plan and what would run: the sbatch script (slurm) or the torchrun command."""
    world = plan(spec)
    run = _nemo_run()
    out = [f"# megakd {spec.recipe}: {world.describe()}"]
    with run.Experiment(spec.name or f"megakd-{spec.recipe}", log_level="WARN",
                        clean_mode=True) as exp:
        _add_job(run, exp, spec, world)
        exp.dryrun(log=False)
        # nemo_run keeps the rendered request on the job (its own dryrun log wraps long lines)
        request = exp.jobs[0]._dryrun_info.request
    if spec.executor == "slurm":
        out.append(request.materialize())
    else:
        for replicas in request.role_params.values():
            for replica in replicas:
                env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(_job_env(spec).items()))
                out.append(f"cd {shlex.quote(replica.cwd or os.getcwd())} && env {env} "
                           + shlex.join(replica.args))
    return "\n".join(out)


def launch(spec: LaunchSpec) -> World:
    """Run locally to the end, or submit to Slurm; raise LaunchError if a local job failed."""
    world = plan(spec)
    run = _nemo_run()
    print(f"megakd {spec.recipe}: {world.describe()}", flush=True)
    local = spec.executor == "local"
    with run.Experiment(spec.name or f"megakd-{spec.recipe}", log_level="WARN",
                        enable_goodbye_message=not local) as exp:
        _add_job(run, exp, spec, world, tail_logs=local)
        exp.run(sequential=True, detach=not local)
    if local:  # the experiment waits for local jobs on exit; their states are final now
        from torchx.specs import AppState

        failed = [f"{job.id} ({job.state}; logs in {job.executor.job_dir})" for job in exp.jobs
                  if job.state != AppState.SUCCEEDED]
        if failed:
            raise LaunchError(f"job failed: {', '.join(failed)}")
    return world
