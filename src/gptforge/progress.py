"""A one-line progress display for long jobs: shown on a terminal only, silent in logs and tests."""

from __future__ import annotations

import sys
import time


def _fmt_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Documents/s, tokens/s and an ETA from the share of input bytes consumed."""

    def __init__(self, total_bytes: int, stream=None, every: float = 0.5):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total_bytes = max(total_bytes, 1)
        self.done_bytes = 0
        self.docs = self.tokens = self.chars = 0
        self.started = self.last = time.time()
        self.every = every

    def update(self, docs: int, tokens: int, chars: int) -> None:
        self.docs += docs
        self.tokens += tokens
        self.chars += chars
        now = time.time()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            self._draw(now)

    def source_done(self, size_bytes: int) -> None:
        self.done_bytes += size_bytes

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        share = min(self.done_bytes / self.total_bytes, 1.0)
        eta = f"ETA {_fmt_seconds(elapsed * (1 - share) / share)}" if share > 0 else "ETA ?"
        line = (f"\r{self.docs:,} docs ({self.docs / elapsed:,.0f}/s), {self.tokens / 1e6:,.1f}M tokens "
                f"({self.tokens / elapsed / 1e6:.2f}M/s), {share:5.1%} of input, {eta}  ")
        self.stream.write(line)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
