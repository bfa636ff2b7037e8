"""Data preprocessing: local tokenizers, megatron-core indexed datasets, corpus -> .bin/.idx.

megatron-core warns at import time that Transformer Engine/Apex are missing; on a CPU machine that
is expected, and the warning would turn every one-line CLI error into several lines, so the first
import happens here with that one warning silenced.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    import megatron.core  # noqa: F401
