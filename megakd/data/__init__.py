"""Data preprocessing: local tokenizers, megatron-core indexed datasets, corpus -> .bin/.idx.

Kept import-light on purpose: `import megatron.core` costs seconds (it pulls in torch and most of
megatron-core), and a CLI should reject a mistyped path before paying for it.
"""

import warnings


def import_megatron_quietly() -> None:
    """Import megatron.core with its "Transformer Engine and Apex are not installed" warnings
    silenced: expected on CPU, and they would turn a one-line CLI error into many lines."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed")
        import megatron.core  # noqa: F401
