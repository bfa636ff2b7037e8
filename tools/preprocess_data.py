"""Tokenise a raw-text corpus into a megatron-core IndexedDataset (<prefix>.bin/.idx).

Example:
  python tools/preprocess_data.py --input corpus.jsonl --tokenizer assets/gpt2-tokenizer \
      --output-prefix data/corpus --workers 2
Formats and details: megakd/data/preprocess.py.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", required=True,
                   help=".jsonl/.parquet/.txt file (a .txt file is ONE document), a directory of "
                        "them (sorted order), or a datasets.save_to_disk directory")
    p.add_argument("--tokenizer", required=True,
                   help="local Hugging Face tokenizer directory or .gguf file")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    p.add_argument("--workers", type=int, default=1, help="tokenising processes (default 1)")
    p.add_argument("--json-key", default="text", help="text field/column (default: text)")
    p.add_argument("--no-append-eod", dest="append_eod", action="store_false",
                   help="do not append the tokenizer's EOS after each document")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from megakd.data.preprocess import preprocess

    r = preprocess(args.input, args.tokenizer, args.output_prefix, workers=args.workers,
                   json_key=args.json_key, append_eod=args.append_eod)
    secs = max(r.seconds, 1e-9)
    print(f"wrote {r.prefix}.bin/.idx: {r.documents:,} documents, {r.tokens:,} tokens in "
          f"{r.seconds:.1f} s ({r.documents / secs:,.0f} docs/s, {r.tokens / secs:,.0f} tokens/s)")


if __name__ == "__main__":
    main()
