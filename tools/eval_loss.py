"""Held-out LM loss (nats/token) of a megakd checkpoint on whole indexed datasets.

  python tools/eval_loss.py --ckpt runs/tiny_cpu/checkpoints \
      --data-prefix data/heldout_text_document data/other_text_document --seq-length 256
  torchrun --nproc-per-node 2 tools/eval_loss.py ...   # windows spread over data-parallel ranks
Every document is cut into windows of --seq-length predictions, so each token but a document's
first is predicted once with at most --seq-length tokens of context (megakd/training/heldout.py).
Prints one JSON line: {prefix: {"nll": nats/token, "tokens": n}}; --output also writes it to a file.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", required=True, help="megakd dist checkpoint (root or iter_* directory)")
    p.add_argument("--data-prefix", required=True, nargs="+", help="indexed dataset prefix(es) (.bin/.idx)")
    p.add_argument("--seq-length", type=int, required=True, help="predictions per window (the training seq_length)")
    p.add_argument("--micro-batch-size", type=int, default=4, help="windows per forward")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--output", help="also write the JSON here (temp name, then renamed)")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from megakd import platform
    from megakd.data.shards import write_json_atomic
    from megakd.training.heldout import evaluate_checkpoint

    try:
        res = evaluate_checkpoint(args.ckpt, args.data_prefix, args.seq_length, args.micro_batch_size,
                                  args.tp, args.pp)
        if res is not None:
            print(json.dumps(res), flush=True)
            if args.output:
                write_json_atomic(args.output, res)
    finally:
        platform.destroy()


if __name__ == "__main__":
    main()
