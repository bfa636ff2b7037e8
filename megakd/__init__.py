"""megakd: knowledge distillation of LLMs during pre-training, on megatron-core."""

import warnings

# megatron-core warns at import that Transformer Engine / Apex are missing; on CPU that is expected,
# and the warning would turn every one-line CLI error into several lines.
for _msg in (".*Transformer Engine and Apex are not installed.*", "Apex is not installed.*",
             "full scope is deprecated.*"):
    warnings.filterwarnings("ignore", message=_msg)

__version__ = "0.1.0"
