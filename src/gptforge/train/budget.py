"""How long a run trains: the rule that both the trainer and `gptforge plan` use, so they cannot drift."""

from __future__ import annotations

import math

from gptforge.config import Config
from gptforge.errors import UserError


def plan_iters(cfg: Config, params: int) -> int:
    """max_iters, else max_tokens, else tokens_per_param x parameters (Chinchilla's 20 by default)."""
    tc = cfg.train
    if tc.max_iters > 0:
        return tc.max_iters
    tokens = tc.max_tokens if tc.max_tokens > 0 else tc.tokens_per_param * params
    if tokens <= 0:
        raise UserError("no training budget: set max_iters, max_tokens or tokens_per_param to a positive value")
    return max(1, math.ceil(tokens / cfg.tokens_per_iter))
