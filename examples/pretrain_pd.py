"""Pre-train (and, with a `kd` section, distill) a megatron-core student.

    torchrun --nproc-per-node 2 examples/pretrain_pd.py --config configs/tiny_cpu.yaml [key.sub=value ...]

Without --config it runs the embedded default, configs/tiny_cpu.yaml.
"""

import argparse
import os


from megakd.config import load_config
from megakd.errors import cli_main
from megakd.training.trainer import run

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                              "tiny_cpu.yaml")


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: tiny_cpu)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.iters=50")
    args = parser.parse_args(argv)
    run(load_config(args.config, args.overrides))


if __name__ == "__main__":
    main()
