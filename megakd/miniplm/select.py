"""Select instances by score and write the refined corpus.

  * ``top`` (MiniPLM): keep the k = floor(ratio*N + 0.5) instances with the largest diff; ties go to
    the lower instance index, so the choice is deterministic.
  * ``sample``: Gumbel-top-k, i.e. k draws without replacement with P ∝ exp(diff / temperature)
    (seeded); temperature -> 0 recovers ``top``.
Unscored instances (one token, diff NaN) rank below every scored one.

The refined corpus is a new indexed dataset with the kept instances in their original order: one
entry per instance, or, given the tokenizer, one entry per piece between EODs (so source documents
stay documents). With ``student_tokenizer`` the pieces' exact text (megakd.miniplm.text) is
re-tokenized with it and its EOD appended where the source had one (cross-family distillation).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Iterator, List, Literal, Optional

import numpy

from megakd.data.indexed import write_indexed
from megakd.errors import ConfigError
from megakd.miniplm.instances import Instances, check_same_data
from megakd.miniplm.score import read_scores
from megakd.toolargs import ToolArgs

MODES = ("top", "sample")


@dataclass
class SelectArgs(ToolArgs):
    """tools/miniplm_select.py's settings (flags: --scores, --ratio, ...)."""

    scores: str
    """directory written by tools/miniplm_score.py"""
    data_prefix: List[str]
    """the dataset prefix(es) that were scored, in the same order"""
    output_prefix: str
    """writes OUT.bin/.idx (+ .stats.json, .hist.png)"""
    ratio: float = 0.5
    """fraction of instances to keep"""
    mode: Literal["top", "sample"] = "top"
    """top: deterministic top-k by diff (MiniPLM); sample: Gumbel-top-k"""
    temperature: float = 1.0
    """sample mode: P ∝ exp(diff/T)"""
    seed: int = 0
    """sample mode: random seed"""
    tokenizer: Optional[str] = None
    """the corpus' (teacher's) tokenizer: split kept instances at EOD into documents; needed with
    --student-tokenizer"""
    student_tokenizer: Optional[str] = None
    """re-tokenize the kept text with this tokenizer (cross-family)"""
    plot: bool = True
    """histogram PNG"""

    def validate(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"--ratio must be in (0, 1], got {self.ratio}")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "sample" and not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if self.student_tokenizer and not self.tokenizer:
            raise ConfigError("--student-tokenizer needs --tokenizer (the teacher's tokenizer, to turn "
                              "the scored tokens back into text)")


def num_kept(n: int, ratio: float) -> int:
    return min(n, int(math.floor(ratio * n + 0.5)))


def choose(diff: numpy.ndarray, k: int, mode: str = "top", temperature: float = 1.0,
           seed: int = 0) -> numpy.ndarray:
    """Indices (ascending) of the k kept instances."""
    key = numpy.where(numpy.isnan(diff), -numpy.inf, diff.astype(numpy.float64))
    if mode == "sample":
        gumbel = numpy.random.default_rng(seed).gumbel(size=len(key))
        key = key / temperature + gumbel
    order = numpy.lexsort((numpy.arange(len(key)), -key))  # by -key, then by index
    return numpy.sort(order[:k])


def _summary(x: numpy.ndarray) -> dict:
    x = x[numpy.isfinite(x)].astype(numpy.float64)
    if not len(x):
        return {"count": 0}
    q = numpy.percentile(x, [0, 10, 25, 50, 75, 90, 100])
    return {"count": int(len(x)), "mean": float(x.mean()), "std": float(x.std()),
            **{k: float(v) for k, v in zip(("min", "p10", "p25", "p50", "p75", "p90", "max"), q)}}


def select(args: SelectArgs) -> dict:
    """Choose, write OUTPUT_PREFIX.bin/.idx, .stats.json and .hist.png; returns the stats."""
    args.validate()
    scores, meta = read_scores(args.scores)
    im = meta["instances"]
    instances = Instances(args.data_prefix, im["mode"], im["length"] or 1024)
    check_same_data(im, instances)

    diff = scores[:, 0]
    k = num_kept(len(instances), args.ratio)
    kept = choose(diff, k, args.mode, args.temperature, args.seed)
    documents, vocab_size = _documents(args, instances, kept, meta)
    written = write_indexed(args.output_prefix, documents, vocab_size)

    stats = _stats(args, instances, scores, kept, meta, written)
    with open(f"{args.output_prefix}.stats.json", "w") as f:
        json.dump(stats, f, indent=1)
        f.write("\n")
    if args.plot:
        stats["histogram"] = plot_histogram(f"{args.output_prefix}.hist.png", diff, kept,
                                            stats["threshold"])
    return stats


def _documents(args: SelectArgs, instances: Instances, kept: numpy.ndarray, meta: dict):
    """(iterator of token lists for write_indexed, its vocabulary size)."""
    if not args.tokenizer:
        return (instances.tokens(i) for i in kept), meta["teacher"]["vocab_size"]
    from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
    from megakd.miniplm.text import ByteLevelText

    teacher = MegatronTokenizer(load_tokenizer(args.tokenizer))
    if teacher.vocab_size > meta["teacher"]["vocab_size"]:
        raise ConfigError(f"--tokenizer {args.tokenizer} has {teacher.vocab_size} tokens but the "
                          f"teacher's vocabulary is {meta['teacher']['vocab_size']}; pass the "
                          f"tokenizer the scored corpus was made with")
    if not args.student_tokenizer:
        return _split_at_eod(instances, kept, teacher.eod), meta["teacher"]["vocab_size"]
    student = MegatronTokenizer(load_tokenizer(args.student_tokenizer))
    text = ByteLevelText(teacher.hf_tokenizer, teacher.eod)
    return _retokenized(instances, kept, text, student), student.vocab_size


def _split_at_eod(instances: Instances, kept, eod: int) -> Iterator[numpy.ndarray]:
    for i in kept:
        ids = instances.tokens(i)
        cuts = numpy.flatnonzero(ids == eod) + 1
        for piece in numpy.split(ids, cuts):
            if len(piece):
                yield piece


def _retokenized(instances: Instances, kept, text, student) -> Iterator[List[int]]:
    for i in kept:
        src, start = instances.sources[instances.source[i]], int(instances.start[i])
        for piece, ends_doc in text.pieces(src.stream, start, start + int(instances.size[i])):
            ids = student.tokenize(piece) + ([student.eod] if ends_doc else [])
            if ids:
                yield ids


def _stats(args, instances: Instances, scores, kept, meta, written) -> dict:
    diff = scores[:, 0]
    mask = numpy.zeros(len(instances), dtype=bool)
    mask[kept] = True
    kept_diff = diff[kept]
    finite = kept_diff[numpy.isfinite(kept_diff)]
    sources = []
    for s, src in enumerate(instances.sources):
        of = instances.source == s
        sources.append({"prefix": src.prefix, "instances": int(of.sum()),
                        "kept": int((of & mask).sum()),
                        "tokens": int(instances.size[of].sum()),
                        "tokens_kept": int(instances.size[of & mask].sum())})
    return {
        "scores": os.path.abspath(args.scores),
        "mode": args.mode, "ratio": args.ratio,
        **({"temperature": args.temperature, "seed": args.seed} if args.mode == "sample" else {}),
        "instances": len(instances), "kept": int(len(kept)),
        "unscored": int(numpy.isnan(diff).sum()),
        "threshold": float(finite.min()) if len(finite) else None,
        "tokens": int(instances.size.sum()), "tokens_kept": int(instances.size[kept].sum()),
        "diff": _summary(diff), "diff_kept": _summary(kept_diff),
        "teacher": _summary(scores[:, 1]), "reference": _summary(scores[:, 2]),
        "sources": sources,
        "output": {"prefix": os.path.abspath(args.output_prefix), "documents": written.documents,
                   "tokens": written.tokens,
                   "tokenizer": os.path.abspath(args.student_tokenizer) if args.student_tokenizer
                   else "teacher's (same token ids)"},
    }


def plot_histogram(path: str, diff: numpy.ndarray, kept: numpy.ndarray, threshold) -> Optional[str]:
    """Histogram of all and kept diffs with the threshold marked; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; no histogram (pip install matplotlib)")
        return None
    finite = diff[numpy.isfinite(diff)]
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = numpy.histogram_bin_edges(finite, bins=min(100, max(10, len(finite) // 20)))
    ax.hist(finite, bins=bins, color="0.7", label=f"all ({len(diff)})")
    kd = diff[kept]
    ax.hist(kd[numpy.isfinite(kd)], bins=bins, color="tab:blue", alpha=0.7,
            label=f"kept ({len(kept)})")
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.4f}")
    ax.set_xlabel("diff = mean log p_teacher - mean log p_reference")
    ax.set_ylabel("instances")
    ax.set_title("MiniPLM difference scores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
