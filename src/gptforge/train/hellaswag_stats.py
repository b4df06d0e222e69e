"""HellaSwag's scoring arithmetic, free of torch: 4 endings, chance, and a score's standard error. The scorer
(hellaswag.py) uses them, and so do `plot` and `diagnose`, which must not load torch just to draw a chance line."""

from __future__ import annotations

import math

ENDINGS = 4
CHANCE = 1 / ENDINGS


def stderr(p: float, n: int) -> float:
    """The binomial standard error of a share `p` of `n` items."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
