"""Answer instruction prompts with a (teacher) model: SeqKD training data, or teacher-made data sets.

Example (2 data-parallel ranks; --tp 2 splits the model instead):
  torchrun --nproc-per-node 2 tools/generate_responses.py --model-hf SmolLM2_DIR \
      --tokenizer SmolLM2_DIR --input prompts.jsonl --output teacher_answers.jsonl --max-new-tokens 128
Writes the input records with 'response' replaced by the model's answer (greedy unless --sample).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402
from megakd.minillm.cli import add_model_args  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_model_args(p, "model")
    p.add_argument("--tokenizer", required=True, help="local Hugging Face tokenizer directory")
    p.add_argument("--input", required=True, help="jsonl with 'prompt' (and 'system')")
    p.add_argument("--output", required=True, help="jsonl written (atomically)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-length", type=int, default=1024, help="prompt tokens kept: last half of this")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sample", action="store_true", help="sample (temperature, top-p) instead of greedy")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--tp", type=int, default=1)
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    import torch
    from megatron.core import parallel_state as ps

    from megakd import platform
    from megakd.minillm import cli
    from megakd.minillm.data import encode, read_jsonl
    from megakd.minillm.evaluate import dp_share
    from megakd.minillm.generate import answer_all, seeded

    try:
        tok = cli.setup(args.tp, args.tokenizer, args.seed)
        model = cli.load_model(args.model, args.model_hf, args.tp, tok, args.tokenizer)
        records = read_jsonl(args.input)
        mine = dp_share(list(range(len(records))), ps.get_data_parallel_rank(),
                        ps.get_data_parallel_world_size())
        prompts = [encode(tok, records[i], args.max_length)[0] for i in mine]
        answers = answer_all(model, prompts, batch_size=args.batch_size, vocab_size=tok.vocab_size,
                             eos=tok.eod, max_new_tokens=args.max_new_tokens, greedy=not args.sample,
                             temperature=args.temperature, top_p=args.top_p,
                             generator=seeded(args.seed + ps.get_data_parallel_rank()))
        texts = cli.gather_dp([tok.detokenize([t for t in a if t != tok.eod]) for a in answers])
        if torch.distributed.get_rank() == 0:
            cli.write_jsonl(args.output, [{**r, "response": t} for r, t in zip(records, texts)])
            print(f"wrote {len(texts)} responses to {args.output}")
    finally:
        platform.destroy()


if __name__ == "__main__":
    main()
