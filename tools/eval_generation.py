"""Evaluate an instruction-tuned student on held-out prompt/response pairs: Rouge-L of its sampled
answers against the references (mean over seeds), and with a teacher the exact reverse KL
student || teacher per response token (teacher-forced on the references, and on its own samples).

Example:
  python tools/eval_generation.py --student runs/minillm/checkpoints --teacher-hf SmolLM2_DIR \
      --tokenizer SmolLM2_DIR --data valid.jsonl --seeds 10 20 30 --output runs/minillm/eval.json
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402
from megakd.minillm.cli import add_model_args  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_model_args(p, "student")
    add_model_args(p, "teacher", required=False)
    p.add_argument("--tokenizer", required=True, help="local Hugging Face tokenizer directory")
    p.add_argument("--data", required=True, help="held-out jsonl with 'prompt' and 'response'")
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 20, 30, 40, 50])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--output", help="also write the results here (json)")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    import torch

    from megakd import platform
    from megakd.data.shards import write_json_atomic
    from megakd.minillm import cli
    from megakd.minillm.data import encode, read_jsonl
    from megakd.minillm.evaluate import evaluate, generation_rouge

    try:
        tok = cli.setup(args.tp, args.tokenizer)
        student = cli.load_model(args.student, args.student_hf, args.tp, tok, args.tokenizer)
        records = read_jsonl(args.data)
        examples = [encode(tok, r, args.max_length) for r in records]
        result = generation_rouge(student, tok, examples, [r["response"] for r in records],
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                  seeds=args.seeds, temperature=args.temperature, top_p=args.top_p)
        if args.teacher or args.teacher_hf:
            teacher = cli.load_model(args.teacher, args.teacher_hf, args.tp, tok, args.tokenizer)
            result.update(evaluate(student, teacher, examples, vocab_size=tok.vocab_size, eos=tok.eod,
                                   max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                   seed=args.seeds[0]))
        if torch.distributed.get_rank() == 0:
            print(json.dumps(result, indent=1))
            if args.output:
                write_json_atomic(args.output, result)
    finally:
        platform.destroy()


if __name__ == "__main__":
    main()
