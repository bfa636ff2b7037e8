"""megakd: knowledge distillation of LLMs during pre-training, on megatron-core."""

__version__ = "0.1.0"
