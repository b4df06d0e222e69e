"""The one terminal progress line: redrawn in place on a terminal, silent in logs and tests.

Train (a bar with an ETA), prepare (docs/s, tokens/s) and download (MB/s) all draw through StatusLine, so a
log line printed while a status is shown erases it first and the next update redraws it below.
"""

from __future__ import annotations

import sys
import threading
import time

from gptforge.fmt import clock

ERASE = "\r\033[K"


class StatusLine:
    """A line that `show` redraws (at most every `every` seconds) and `say` prints permanent lines above."""

    def __init__(self, stream=None, enabled: bool = True, every: float = 0.25):
        self.stream = stream or sys.stderr
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every
        self.shown = False
        self.last = 0.0
        self.lock = threading.Lock()  # download workers report from several threads

    def show(self, text: str, force: bool = False) -> None:
        if not self.live:
            return
        with self.lock:
            now = time.monotonic()
            if not force and now - self.last < self.every:
                return
            self.last = now
            self.stream.write(ERASE + text)
            self.stream.flush()
            self.shown = True

    def say(self, text: str) -> None:
        with self.lock:
            self.stream.write((ERASE if self.shown else "") + text + "\n")
            self.stream.flush()
            self.shown = False

    def clear(self) -> None:
        with self.lock:
            if self.shown:
                self.stream.write(ERASE)
                self.stream.flush()
                self.shown = False


def bar(done: float, width: int = 30) -> str:
    filled = int(min(max(done, 0.0), 1.0) * width)
    return f"[{'#' * filled}{'.' * (width - filled)}]"


def eta(elapsed: float, share_done: float) -> str:
    return f"ETA {clock(elapsed * (1 - share_done) / share_done)}" if share_done > 0 else "ETA ?"


class Progress:
    """prepare's line: documents/s, tokens/s and an ETA from the share of input bytes consumed."""

    def __init__(self, total_bytes: int, stream=None, every: float = 0.5):
        self.line = StatusLine(stream, every=every)
        self.total_bytes = max(total_bytes, 1)
        self.done_bytes = 0
        self.docs = self.tokens = self.chars = 0
        self.started = time.time()

    @property
    def enabled(self) -> bool:
        return self.line.live

    def update(self, docs: int, tokens: int, chars: int) -> None:
        self.docs += docs
        self.tokens += tokens
        self.chars += chars
        if self.line.live:
            self.line.show(self._text())

    def source_done(self, size_bytes: int) -> None:
        self.done_bytes += size_bytes

    def _text(self) -> str:
        elapsed = max(time.time() - self.started, 1e-9)
        share = min(self.done_bytes / self.total_bytes, 1.0)
        return (f"{self.docs:,} docs ({self.docs / elapsed:,.0f}/s), {self.tokens / 1e6:,.1f}M tokens "
                f"({self.tokens / elapsed / 1e6:.2f}M/s), {share:5.1%} of input, {eta(elapsed, share)}")

    def finish(self) -> None:
        self.line.clear()
