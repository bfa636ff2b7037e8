"""MiniPLM selection: keep the top-ratio instances by difference score, write a refined corpus.

Example:
  python tools/miniplm_select.py --scores data/corpus.scores \
      --data-prefix data/corpus_text_document --ratio 0.5 --output-prefix data/refined
Writes OUT.bin/.idx (train on it with data.prefix=OUT), OUT.stats.json and OUT.hist.png.
Cross-family: add --tokenizer TEACHER_TOKENIZER --student-tokenizer STUDENT_TOKENIZER to write
the kept text re-tokenized for the student. Details: megakd/miniplm/select.py, docs/MINIPLM.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    from megakd.miniplm.select import SelectArgs, select

    args = SelectArgs.parse(argv, __doc__)  # flags from SelectArgs' fields, validated
    s = select(args)
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
