"""MiniPLM scoring: per-instance mean log-likelihood under a teacher and a reference model.

Example (2 data-parallel ranks; add --tp 2 to split each model over 2 ranks instead):
  torchrun --nproc-per-node 2 tools/miniplm_score.py --teacher runs/teacher/checkpoints \
      --reference runs/reference/checkpoints --data-prefix data/corpus_text_document \
      --instance-length 1024 --output data/corpus.scores
Writes OUTPUT/scores.npy (float32 [N, 3]: diff, teacher, reference) + OUTPUT/metadata.json.
A killed run resumes where it stopped when started again with the same arguments.
Details: megakd/miniplm/score.py, docs/MINIPLM.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    from megakd import platform
    from megakd.miniplm.score import ScoreArgs, score

    args = ScoreArgs.parse(argv, __doc__)  # flags from ScoreArgs' fields, validated
    try:
        score(args)
    finally:
        platform.destroy()


if __name__ == "__main__":
    main()
