"""Dump a teacher's truncated next-token distributions (top-p, then top-k) over an indexed dataset
into an offline logits store, keyed by (document id, token offset).

Example (2 data-parallel ranks; --tp 2 splits the teacher over 2 ranks instead):
  torchrun --nproc-per-node 2 tools/dump_teacher_logits.py --teacher runs/teacher/checkpoints \
      --tokenizer data/tokenizer --data-prefix data/corpus_text_document --output data/corpus.logits \
      --top-p 0.95 --top-k 100
A killed run resumes where it stopped when started again with the same arguments, and ends with the
same bytes. Read the store with megakd.data.logits_store.open_store; format: docs/LOGITS_STORE.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    from megakd import platform
    from megakd.teacher.dump import DumpArgs, dump

    args = DumpArgs.parse(argv, __doc__)  # flags from DumpArgs' fields, validated
    try:
        dump(args)
    finally:
        platform.destroy()


if __name__ == "__main__":
    main()
