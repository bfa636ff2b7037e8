"""Instruction-tune a megatron-core student: SFT, word-level KD, SeqKD or MiniLLM.

    torchrun --nproc-per-node 2 examples/train_minillm.py --method minillm --config configs/tiny_cpu.yaml \
        minillm.train_data=train.jsonl minillm.valid_data=valid.jsonl teacher.checkpoint=TEACHER \
        checkpoint.pretrained=STUDENT_INIT [key.sub=value ...]

--method sets minillm.method; every other option is a config key (docs/CONFIG.md, `minillm:`).
"""

import argparse

from megakd.config import load_config
from megakd.errors import cli_main
from megakd.minillm.trainer import run


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=["sft", "kd", "seqkd", "minillm"])
    parser.add_argument("--config", default=None, help="YAML config (model, train, optim sections)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.iters=50")
    args = parser.parse_args(argv)
    run(load_config(args.config, [*args.overrides, f"minillm.method={args.method}"]))


if __name__ == "__main__":
    main()
