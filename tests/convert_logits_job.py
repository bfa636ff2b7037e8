"""Test helper (torchrun): load converted checkpoints at this TP/PP and save the full logits.

    torchrun --nproc-per-node 2 tests/convert_logits_job.py TP OUT.pt TOKENS.pt CKPT [CKPT ...]

Writes {ckpt: logits [b, s, padded vocab]} (gathered over the TP group) from rank 0.
"""

import sys

import torch


def main(tp: int, out: str, tokens_file: str, ckpts):
    from megatron.core import tensor_parallel

    from megakd import platform
    from megakd.config import ParallelConfig
    from megakd.convert import load_checkpoint_model

    env = platform.init_model_parallel(tp, 1)
    tokens = torch.load(tokens_file)
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    result = {}
    for ckpt in ckpts:
        model, _ = load_checkpoint_model(ckpt, ParallelConfig(tp=tp))
        model.eval()
        with torch.no_grad():
            logits = model(tokens, positions, None)  # [b, s, V/TP]
            result[ckpt] = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
    if env.rank == 0:
        torch.save(result, out)
    platform.destroy()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:])
