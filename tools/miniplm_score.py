"""MiniPLM scoring: per-instance mean log-likelihood under a teacher and a reference model.

Example (2 data-parallel ranks; add --tp 2 to split each model over 2 ranks instead):
  torchrun --nproc-per-node 2 tools/miniplm_score.py --teacher runs/teacher/checkpoints \
      --reference runs/reference/checkpoints --data-prefix data/corpus_text_document \
      --instance-length 1024 --output data/corpus.scores
Writes OUTPUT/scores.npy (float32 [N, 3]: diff, teacher, reference) + OUTPUT/metadata.json.
A killed run resumes where it stopped when started again with the same arguments.
Details: megakd/miniplm/score.py, docs/MINIPLM.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher dist checkpoint (dir or iter_* dir)")
    p.add_argument("--reference", required=True, help="reference-model dist checkpoint")
    p.add_argument("--data-prefix", required=True, nargs="+",
                   help="indexed dataset prefix(es); several = one corpus of several sources")
    p.add_argument("--output", required=True, help="scores directory (created)")
    p.add_argument("--instances", choices=["chunks", "documents"], default="chunks",
                   help="chunks: fixed-length pieces of the token stream (MiniPLM); "
                        "documents: one instance per document")
    p.add_argument("--instance-length", type=int, default=1024,
                   help="tokens per chunk (the last chunk of a source is shorter); "
                        "MiniPLM uses 1025 (1024 predictions)")
    p.add_argument("--micro-batch-size", type=int, default=4, help="instances per forward")
    p.add_argument("--shard-size", type=int, default=256,
                   help="instances per resumable shard file (default 256)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size of both models")
    p.add_argument("--pp", type=int, default=1,
                   help="pipeline-parallel size of both models (megatron-core schedule, "
                        "forward only)")
    p.add_argument("--timeout-minutes", type=float, default=60.0,
                   help="collective timeout (ranks wait for each other at the end)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from megakd import platform
    from megakd.miniplm.score import ScoreArgs, score

    try:
        score(ScoreArgs(**vars(args)))
    finally:
        platform.destroy()


if __name__ == "__main__":
    main()
