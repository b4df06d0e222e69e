"""The console: nanoGPT-shaped log lines, and a progress bar with an ETA on a terminal.

Lines keep nanoGPT's shape so users' habits and grep scripts still work:
    iter N: loss X, time Yms, mfu Z%, T tok/s, lr L
    step N: train loss X, val loss Y, val ppl P
    step N: train loss X, val loss Y, val ppl P (fineweb A | wikipedia B)     (a dataset of several parts)
"""

from __future__ import annotations

import math
import sys

from gptforge.fmt import clock, ppl
from gptforge.progress import StatusLine, bar


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction * 100:.2f}%"


def iter_line(step: int, loss: float, dt_ms: float, mfu_fraction: float | None, tok_per_s: float, lr: float) -> str:
    return (f"iter {step}: loss {loss:.4f}, time {dt_ms:.2f}ms, mfu {_pct(mfu_fraction)}, {tok_per_s:,.0f} tok/s, "
            f"lr {lr:.3e}")


def eval_line(step: int, train_loss: float, val_loss: float, seconds: float, extra: str = "",
              val_parts: dict[str, float] | None = None) -> str:
    several = val_parts if val_parts and len(val_parts) > 1 else {}  # (one part: the val loss itself)
    parts = " | ".join(f"{name} {loss:.4f}" for name, loss in several.items())
    return (f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, val ppl {ppl(perplexity(val_loss))}"
            f"{' (' + parts + ')' if parts else ''}{', ' + extra if extra else ''} (eval {seconds:.2f}s, not counted "
            "in iteration time)")


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


class Console:
    """Prints log lines (rank 0 only); on a terminal also keeps a progress bar with an ETA below them."""

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.status = StatusLine(stream or sys.stdout, enabled=enabled, every=0.0)

    @property
    def bar(self) -> bool:
        return self.status.live

    def print(self, text: str) -> None:
        if self.enabled:
            self.status.say(text)

    def progress(self, step: int, total: int, seconds_per_step: float | None) -> None:
        if not self.status.live or total <= 0:
            return
        done = min(1.0, step / total)
        eta = clock((total - step) * seconds_per_step) if seconds_per_step else "?"
        self.status.show(f"{bar(done)} {done * 100:5.1f}% {step}/{total} ETA {eta}")

    def close(self) -> None:
        if self.status.shown:
            self.status.say("")
