"""`TargetSpec`: what the KD target is — the divergence (kind + its own arguments) and the teacher
processing (temperature, top-p, top-k) — as one frozen value, validated once when it is built.

    spec = cfg.kd.spec()                       # or TargetSpec("jsd", {"beta": 0.3}, top_k=50)
    loss = distill_loss(student_logits, teacher, spec, tp_group=tp_group)
    target = truncate_teacher(teacher_logits, spec, tp_group=tp_group)

Every consumer (loss, truncation, dump, offline store check, dedicated teacher, MiniLLM's KD) takes
the spec whole. A kind's arguments are checked against its term in `terms.py` (`KINDS`), so a new
divergence with its own parameter needs no change here. Errors are one-line `ConfigError`s naming the
`kd.*` key to change.
"""

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Dict, Tuple

from megakd.errors import ConfigError
from megakd.losses.terms import KINDS, Term, make_term


@dataclass(frozen=True)
class TargetSpec:
    """kind: a divergence of `KINDS`; kind_args: its own arguments (a mapping, kept as sorted
    (name, value) pairs so the spec is hashable and immutable); temperature T > 0 for both
    distributions; top_p in (0, 1] then top_k >= 0 (0 = all) truncate the teacher (PD paper)."""

    kind: str = "fkl"
    kind_args: Tuple[Tuple[str, float], ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"kd.kind={self.kind!r} is not one of {sorted(KINDS)}")
        args = self.kind_args.items() if isinstance(self.kind_args, Mapping) else self.kind_args
        try:
            args = tuple(sorted((str(k), v) for k, v in args))
            make_term(self.kind, dict(args))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"kd.kind_args={self.kind_args!r}: {e}") from None
        object.__setattr__(self, "kind_args", tuple((k, float(v)) for k, v in args))
        t = self.temperature
        if isinstance(t, bool) or not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ConfigError(f"kd.temperature must be a finite number > 0, got {t!r}")
        if isinstance(self.top_p, bool) or not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ConfigError(f"kd.top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ConfigError(f"kd.top_k must be an int >= 0 (0 = no top-k), got {self.top_k!r}")
        if self.kind == "mse" and self.truncates:
            raise ConfigError("kd.kind=mse compares full logits: set kd.top_p=1.0 and kd.top_k=0")

    @property
    def args(self) -> Dict[str, float]:
        """kind_args as a dict (keyword arguments of the kind's term)."""
        return dict(self.kind_args)

    @property
    def truncates(self) -> bool:
        """Whether the teacher distribution is cut to a top-p nucleus and/or top-k ids."""
        return self.top_p < 1.0 or self.top_k > 0

    @property
    def sparse(self) -> bool:
        """Whether dense teacher logits become a sparse target (truncated, or kind 'nll': top-1)."""
        return self.kind == "nll" or self.truncates

    def term(self) -> Term:
        """The kind's divergence term with its arguments."""
        return make_term(self.kind, self.args)

    def untruncated(self) -> "TargetSpec":
        """The same divergence and temperature without truncation: for a SparseTarget that its
        source already truncated at this spec (truncating again is not idempotent)."""
        return dataclasses.replace(self, top_p=1.0, top_k=0)
