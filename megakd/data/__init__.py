"""Data: local tokenizers, megatron-core indexed datasets, corpus -> .bin/.idx, GPTDataset wiring.

Kept import-light on purpose: `import megatron.core` costs seconds, and a CLI should reject a
mistyped path before paying for it. (megatron-core's "TE/Apex not installed" warnings are silenced
once, in megakd/__init__.py.)
"""
