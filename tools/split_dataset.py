"""Split an indexed dataset into a held-out slice and the rest, deterministically (by documents).

Example (a 10 % slice to train the MiniPLM reference model on):
  python tools/split_dataset.py --input data/corpus_text_document --fraction 0.1 \
      --held-out-prefix data/reference_text_document --rest-prefix data/main_text_document
Use --tokens N instead of --fraction for a slice of about N tokens. Same --seed, same split.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", required=True, help="indexed dataset prefix (.bin/.idx)")
    p.add_argument("--held-out-prefix", required=True, help="writes the slice here")
    p.add_argument("--rest-prefix", required=True, help="writes the remaining documents here")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--fraction", type=float, help="fraction of the documents to hold out")
    size.add_argument("--tokens", type=int, help="hold out documents until this many tokens")
    p.add_argument("--seed", type=int, default=0, help="which documents (default 0)")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from megakd.miniplm.split import split_dataset

    r = split_dataset(args.input, args.held_out_prefix, args.rest_prefix, args.fraction,
                      args.tokens, args.seed)
    print(f"held out {r.held_out_documents:,} documents ({r.held_out_tokens:,} tokens) -> "
          f"{args.held_out_prefix}; rest {r.rest_documents:,} documents ({r.rest_tokens:,} tokens) "
          f"-> {args.rest_prefix}")


if __name__ == "__main__":
    main()
