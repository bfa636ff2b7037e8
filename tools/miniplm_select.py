"""MiniPLM selection: keep the top-ratio instances by difference score, write a refined corpus.

Example:
  python tools/miniplm_select.py --scores data/corpus.scores \
      --data-prefix data/corpus_text_document --ratio 0.5 --output-prefix data/refined
Writes OUT.bin/.idx (train on it with data.prefix=OUT), OUT.stats.json and OUT.hist.png.
Cross-family: add --tokenizer TEACHER_TOKENIZER --student-tokenizer STUDENT_TOKENIZER to write
the kept text re-tokenized for the student. Details: megakd/miniplm/select.py, docs/MINIPLM.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scores", required=True, help="directory written by tools/miniplm_score.py")
    p.add_argument("--data-prefix", required=True, nargs="+",
                   help="the dataset prefix(es) that were scored, in the same order")
    p.add_argument("--output-prefix", required=True, help="writes OUT.bin/.idx (+ .stats.json, "
                                                          ".hist.png)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of instances to keep (0.5)")
    p.add_argument("--mode", choices=["top", "sample"], default="top",
                   help="top: deterministic top-k by diff (MiniPLM); sample: Gumbel-top-k")
    p.add_argument("--temperature", type=float, default=1.0, help="sample mode: P ∝ exp(diff/T)")
    p.add_argument("--seed", type=int, default=0, help="sample mode: random seed")
    p.add_argument("--tokenizer", help="the corpus' (teacher's) tokenizer: split kept instances "
                                       "at EOD into documents; needed with --student-tokenizer")
    p.add_argument("--student-tokenizer",
                   help="re-tokenize the kept text with this tokenizer (cross-family)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="no histogram PNG")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from megakd.miniplm.select import SelectArgs, select

    s = select(SelectArgs(**vars(args)))
    d, o = s["diff"], s["output"]
    print(f"kept {s['kept']:,} of {s['instances']:,} instances ({s['mode']}, ratio {s['ratio']}), "
          f"{s['tokens_kept']:,} of {s['tokens']:,} tokens; threshold diff {s['threshold']}")
    if d["count"]:
        print(f"diff: mean {d['mean']:.4f} std {d['std']:.4f} min {d['min']:.4f} "
              f"median {d['p50']:.4f} max {d['max']:.4f}")
    if len(s["sources"]) > 1:
        for src in s["sources"]:
            print(f"  {src['prefix']}: kept {src['kept']:,}/{src['instances']:,} instances, "
                  f"{src['tokens_kept']:,}/{src['tokens']:,} tokens")
    print(f"wrote {o['prefix']}.bin/.idx ({o['documents']:,} documents, {o['tokens']:,} tokens), "
          f"{args.output_prefix}.stats.json"
          + (f", {s['histogram']}" if s.get("histogram") else ""))



if __name__ == "__main__":
    main()
