"""Convert between Hugging Face models and megakd (megatron-core) distributed checkpoints.

  python tools/convert_checkpoint.py hf-to-mcore --hf MODEL_DIR_OR.gguf --out CKPT
  python tools/convert_checkpoint.py mcore-to-hf --ckpt CKPT --out HF_DIR [--tokenizer TOK]

The checkpoint loads at any TP/PP (e.g. checkpoint.pretrained=CKPT with parallel.tp=2); --tp/--pp
are accepted for Megatron-LM habits and only checked against the model's head and layer counts.
Families: Llama / SmolLM2 / Mistral, Qwen2, GPT-2 (megakd/convert/families.py).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.errors import cli_main  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF directory or .gguf file -> dist checkpoint")
    a.add_argument("--hf", required=True, help="local HF model directory or .gguf file")
    a.add_argument("--out", required=True, help="checkpoint directory to create")
    a.add_argument("--tp", type=int, default=1, help="TP you intend to load it at (checked only)")
    a.add_argument("--pp", type=int, default=1, help="PP you intend to load it at (checked only)")
    a.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    a.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="pad the vocabulary to a multiple of this (model.make_vocab_size_divisible_by)")
    b = sub.add_parser("mcore-to-hf", help="dist checkpoint (any TP/PP) -> HF directory")
    b.add_argument("--ckpt", required=True, help="checkpoint root or iter_* directory")
    b.add_argument("--out", required=True, help="HF model directory to create")
    b.add_argument("--tokenizer", help="tokenizer directory or .gguf file to copy beside the model")
    b.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                   help="weights dtype (default: the checkpoint's model.precision)")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    import dataclasses

    from megakd.config import Config, ParallelConfig
    from megakd.convert import hf_to_mcore, mcore_to_hf, model_config_from_hf
    from megakd.convert.families import family_for_model
    from megakd.models import padded_vocab_size

    if args.command == "hf-to-mcore":
        m = model_config_from_hf(args.hf)
        m = dataclasses.replace(m, make_vocab_size_divisible_by=args.make_vocab_size_divisible_by)
        cfg = Config(model=m, parallel=ParallelConfig(tp=args.tp, pp=args.pp))
        cfg.data.prefix = cfg.data.tokenizer = "unused"  # only the model/parallel rules matter here
        cfg.validate()
        padded_vocab_size(m.vocab_size, m, args.tp)
        hf_to_mcore(args.hf, args.out, dtype=args.dtype,
                    make_vocab_size_divisible_by=args.make_vocab_size_divisible_by)
        print(f"wrote {args.out} ({family_for_model(m).name}, {m.num_layers} layers, hidden "
              f"{m.hidden_size}, vocab {m.vocab_size}); load it at any TP/PP with "
              f"checkpoint.pretrained={args.out}")
    else:
        mcore_to_hf(args.ckpt, args.out, tokenizer=args.tokenizer, dtype=args.dtype)
        print(f"wrote {args.out}; load it with transformers.AutoModelForCausalLM.from_pretrained")


if __name__ == "__main__":
    main()
