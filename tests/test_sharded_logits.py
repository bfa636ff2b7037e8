"""megakd.models.sharded_logits: GPTModel's logits in megatron's [s, b, V/TP] layout, without the copy."""

import pytest
import torch

from megakd.config import ModelConfig, ParallelConfig


@pytest.mark.parametrize("tie", [True, False])
def test_sharded_logits_equal_gptmodel_forward_transposed(tie):
    """Same values and same gradients as GPTModel.forward's [b, s, V] logits, with tied and untied
    output weights; post_process is restored, also when the forward raises."""
    from megakd.convert.convert import single_process
    from megakd.models import build_model, sharded_logits

    with single_process():
        torch.manual_seed(0)
        model = build_model(ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, tie_embeddings=tie),
                            ParallelConfig(), 96, 8)
        tokens = torch.randint(96, (2, 8))
        positions = torch.arange(8).expand(2, 8)
        w = torch.randn(2, 8, model.vocab_size)

        ref = model(tokens, positions, None)  # [b, s, V]
        ref_grads = torch.autograd.grad((ref * w).sum(), list(model.parameters()))
        got = sharded_logits(model, lambda: model(tokens, positions, None))  # [s, b, V]
        assert got.shape == (8, 2, model.vocab_size) and model.post_process
        torch.testing.assert_close(got.transpose(0, 1), ref, rtol=0, atol=0)
        grads = torch.autograd.grad((got.transpose(0, 1) * w).sum(), list(model.parameters()))
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b)

        def fails():
            raise RuntimeError("forward failed")

        with pytest.raises(RuntimeError, match="forward failed"):
            sharded_logits(model, fails)
        assert model.post_process
        model.post_process = False
        with pytest.raises(ValueError, match="last pipeline stage"):
            sharded_logits(model, lambda: None)
