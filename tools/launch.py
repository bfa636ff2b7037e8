"""Launch a megakd entry point through NeMo-Run, on this machine or on a Slurm cluster.

  python tools/launch.py pretrain_pd --config configs/tiny_cpu.yaml --executor local --nproc 2
  python tools/launch.py pretrain_pd --config configs/my_run.yaml --executor slurm --nodes 4 \\
      --gpus-per-node 8 --container IMAGE --account ACCT --partition batch [--dryrun]

Arguments the launcher does not know (dotted overrides like train.iters=50, or a tool's own
flags; everything after `--`) are passed to the entry point. --nproc / --nodes x --gpus-per-node
size the student; with `teacher.placement: dedicated` the launcher adds `teacher.ranks` processes.
On Slurm the config file is shipped with the job and the code comes from the container
(--code-dir, where the Dockerfile installs it). Needs: pip install nemo_run 'leptonai<0.47'.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402
from megakd.launch.plan import CONTAINER_CODE_DIR, RECIPES  # noqa: E402


def _key_value(item: str):
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    return key, value


def parse_args(argv=None):
    recipes = "\n".join(f"  {name:<20} {r.summary} ({r.script})" for name, r in RECIPES.items())
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawTextHelpFormatter,
                                epilog=f"recipes:\n{recipes}")
    p.add_argument("recipe", help="entry point to run (see the list below)")
    p.add_argument("--config", help="YAML config passed to the entry point")
    p.add_argument("--executor", choices=["local", "slurm"], default="local")
    p.add_argument("--dryrun", action="store_true",
                   help="print the sbatch script / torchrun command; run nothing")
    p.add_argument("--name", help="NeMo-Run experiment name (default megakd-RECIPE)")
    p.add_argument("--env", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable)")
    local = p.add_argument_group("local executor")
    local.add_argument("--nproc", type=int, default=1, help="student processes (default 1)")
    slurm = p.add_argument_group("slurm executor")
    slurm.add_argument("--nodes", type=int, default=1, help="student nodes (default 1)")
    slurm.add_argument("--gpus-per-node", type=int, default=8, help="GPUs = processes per node")
    slurm.add_argument("--container", help="container image (e.g. built from the Dockerfile)")
    slurm.add_argument("--account")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", default="04:00:00", help="job time limit (default 04:00:00)")
    slurm.add_argument("--mount", action="append", default=[], metavar="SRC:DST",
                       help="container mount (repeatable), e.g. /lustre/data:/data")
    slurm.add_argument("--code-dir", default=CONTAINER_CODE_DIR,
                       help=f"checkout inside the container (default {CONTAINER_CODE_DIR})")
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    known = argv[:argv.index("--")] if "--" in argv else argv
    args, extra = p.parse_known_args(known)
    args.args = extra + passthrough
    return args


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from megakd.launch.nemo import LaunchSpec, dryrun, launch

    spec = LaunchSpec(recipe=args.recipe, executor=args.executor, config=args.config,
                      args=args.args, nproc=args.nproc, nodes=args.nodes,
                      gpus_per_node=args.gpus_per_node, container=args.container,
                      account=args.account, partition=args.partition, time=args.time,
                      mounts=args.mount, env=dict(args.env), code_dir=args.code_dir,
                      name=args.name)
    if args.dryrun:
        print(dryrun(spec))
    else:
        launch(spec)


if __name__ == "__main__":
    main()
