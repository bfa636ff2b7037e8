"""Dump a teacher's truncated next-token distributions (top-p, then top-k) over an indexed dataset
into an offline logits store, keyed by (document id, token offset).

Example (2 data-parallel ranks; --tp 2 splits the teacher over 2 ranks instead):
  torchrun --nproc-per-node 2 tools/dump_teacher_logits.py --teacher runs/teacher/checkpoints \
      --tokenizer data/tokenizer --data-prefix data/corpus_text_document --output data/corpus.logits \
      --top-p 0.95 --top-k 100
A killed run resumes where it stopped when started again with the same arguments, and ends with the
same bytes. Read the store with megakd.data.logits_store.open_store; format: docs/LOGITS_STORE.md.
"""

import argparse
import os
import sys
from typing import get_args

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


def parse_args(argv=None):
    from megakd.config import Precision, TransformerImpl
    from megakd.teacher.dump import DumpArgs

    d = DumpArgs("", "", "")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--teacher", help="teacher megakd dist checkpoint (dir or iter_* dir)")
    who.add_argument("--teacher-hf", help="or a local Hugging Face model dir / .gguf (converted once, cached)")
    p.add_argument("--tokenizer", required=True, help="the dataset's tokenizer (dir or .gguf); must be the teacher's")
    p.add_argument("--data-prefix", required=True, help="indexed dataset prefix (<prefix>.bin/.idx)")
    p.add_argument("--output", required=True, help="store directory (created)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus kept per token (PD paper: 0.95)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="at most this many ids per token (PD paper: 50-100)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="teacher temperature before truncation")
    p.add_argument("--window", type=int, default=d.window,
                   help="tokens per teacher forward; longer documents get overlapping windows")
    p.add_argument("--stride", type=int, default=d.stride,
                   help="window step: every token past the first window has >= window - stride tokens of context")
    p.add_argument("--tp", type=int, default=d.tp, help="tensor-parallel size of the teacher")
    p.add_argument("--precision", choices=get_args(Precision), default=d.precision,
                   help="what the teacher runs in (recorded in the store); bf16 halves its memory")
    p.add_argument("--transformer-impl", choices=get_args(TransformerImpl), default=d.transformer_impl,
                   help="the teacher's layer spec (auto: Transformer Engine where TE and CUDA are)")
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size, help="windows per forward")
    p.add_argument("--codec", choices=["zlib", "lzma"], default=d.codec, help="block compression (lzma: ~8%% smaller, slower)")
    p.add_argument("--max-kl", type=float, default=d.max_kl,
                   help="per-token bound on KL(stored || exact truncated) of the quantised probabilities")
    p.add_argument("--block-rows", type=int, default=d.block_rows, help="token positions per compressed block")
    p.add_argument("--shard-tokens", type=int, default=d.shard_tokens, help="tokens per resumable shard file")
    p.add_argument("--timeout-minutes", type=float, default=d.timeout_minutes, help="collective timeout")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from megakd import platform
    from megakd.teacher.dump import DumpArgs, dump

    try:
        dump(DumpArgs(**vars(args)))
    finally:
        platform.destroy()


if __name__ == "__main__":
    main()
