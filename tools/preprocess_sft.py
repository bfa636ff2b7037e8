"""Tokenise instruction data (jsonl: prompt, response[, system]) into an indexed dataset that keeps
the prompt/response boundary (one document = two sequences), for examples/train_minillm.py.

Example:
  python tools/preprocess_sft.py --input train.jsonl --tokenizer TOKENIZER_DIR --output-prefix data/train_sft
The prompt uses the tokenizer's chat template when it has one (megakd/minillm/data.py).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", required=True, help="jsonl with 'prompt', 'response' (and 'system')")
    p.add_argument("--tokenizer", required=True, help="local Hugging Face tokenizer directory")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    p.add_argument("--max-length", type=int, default=1024,
                   help="prompt + response tokens kept (prompt: its last half at most)")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
    from megakd.minillm.data import encode, read_jsonl, write_sft

    tok = MegatronTokenizer(load_tokenizer(args.tokenizer))
    examples = [encode(tok, r, args.max_length) for r in read_jsonl(args.input)]
    stats = write_sft(args.output_prefix, examples, tok.vocab_size)
    print(f"wrote {args.output_prefix}.bin/.idx: {stats.documents:,} examples, {stats.tokens:,} tokens")


if __name__ == "__main__":
    main()
