"""Metrics out: console lines, tensorboard scalars and an optional JSON-lines file (rank 0 only)."""

import json
import os
import sys
from typing import Dict, Optional


class MetricsLogger:
    def __init__(self, enabled: bool, tensorboard_dir: Optional[str] = None,
                 metrics_file: Optional[str] = None):
        self.enabled = enabled
        self.tb = None
        self.file = None
        if not enabled:
            return
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=tensorboard_dir)
        if metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(metrics_file)), exist_ok=True)
            self.file = open(metrics_file, "a")

    def log(self, step: int, metrics: Dict[str, float], prefix: str = "train", console: bool = True):
        if not self.enabled:
            return
        if console:
            parts = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
            print(f"[{prefix}] iter {step:6d} | {parts}", file=sys.stdout, flush=True)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
        if self.file is not None:
            self.file.write(json.dumps({"split": prefix, "iter": step, **metrics}) + "\n")
            self.file.flush()

    def close(self):
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.file is not None:
            self.file.close()


def read_metrics(path: str, split: str = "train") -> Dict[int, dict]:
    """{iteration: metrics} of one split from a log.metrics_file (what tests and benchmarks read)."""
    out = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["split"] == split:
                out[rec["iter"]] = rec
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4e}" if (v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5)) else f"{v:.4f}"
    return str(v)
