"""`data.prefix` as a blend: one dataset, a list of them, or weighted pairs.

Its own module, importing nothing of megakd but errors, so the config can check a blend without
importing the dataset builders (which need the config).
"""

from typing import List, Optional, Tuple

from megakd.errors import ConfigError


def parse_blend(prefix) -> Tuple[List[str], Optional[List[float]]]:
    """`data.prefix` -> (prefixes, weights): "p", ["p1", "p2"] or [w1, "p1", w2, "p2"]."""
    if isinstance(prefix, str):
        return [prefix], None
    items = list(prefix)
    if all(isinstance(x, str) for x in items):
        return items, None
    if len(items) % 2 or not all(isinstance(w, (int, float)) and isinstance(p, str)
                                 for w, p in zip(items[::2], items[1::2])):
        raise ConfigError("data.prefix blend must be [weight1, prefix1, weight2, prefix2, ...]")
    weights = [float(w) for w in items[::2]]
    if any(w <= 0 for w in weights):
        raise ConfigError("data.prefix blend weights must be positive")
    return list(items[1::2]), weights
