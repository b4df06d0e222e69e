"""The one terminal progress line: redrawn in place on a terminal, silent in logs and tests.

Train (a bar with an ETA), prepare (tokens/s, MB/s in, an ETA) and download (MB/s) all draw through StatusLine, so a
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


LOG_EVERY = 30.0  # seconds between prepare's commit lines in a log


class Progress:
    """prepare's line over the whole run: files done / total, tokens, MB/s of input, share done and ETA.

    The share counts the input bytes of finished files plus an estimate for the file being read (its
    characters so far over the characters per byte of the files finished before it), so the ETA moves
    within a large file too. Off a terminal, `commit` prints a permanent line instead.
    """

    def __init__(self, files_total: int, files_done: int, total_bytes: int, stream=None, every: float = 0.5):
        self.line = StatusLine(stream, every=every)
        self.files_total, self.files_done = files_total, files_done
        self.total_bytes = max(total_bytes, 1)
        self.done_bytes = 0  # input bytes of the files finished in this run
        self.file_bytes = self.file_chars = 0
        self.tokens = 0
        self.done_chars = 0  # characters of the files finished in this run
        self.started = self.last_logged = time.time()

    def start_file(self, size_bytes: int) -> None:
        self.file_bytes, self.file_chars = size_bytes, 0

    def update(self, tokens: int, chars: int) -> None:
        self.tokens += tokens
        self.file_chars += chars
        if self.line.live:
            self.line.show(self._text())

    def file_done(self) -> None:
        self.done_bytes += self.file_bytes
        self.done_chars += self.file_chars
        self.files_done += 1
        self.file_bytes = self.file_chars = 0

    def input_bytes(self) -> float:
        chars_per_byte = self.done_chars / self.done_bytes if self.done_bytes else 1.0
        in_file = min(self.file_chars / max(chars_per_byte, 1e-9), 0.99 * self.file_bytes)
        return self.done_bytes + in_file

    def _text(self) -> str:
        return f"file {min(self.files_done + 1, self.files_total)}/{self.files_total}, {self._rates()}"

    def _rates(self) -> str:
        elapsed = max(time.time() - self.started, 1e-9)
        consumed = self.input_bytes()
        share = min(consumed / self.total_bytes, 1.0)
        return (f"{self.tokens / 1e6:,.1f}M tokens ({self.tokens / elapsed / 1e6:.2f}M/s), "
                f"{consumed / elapsed / 1e6:,.1f} MB/s in, {share:5.1%} of this run's input, {eta(elapsed, share)}")

    def commit(self) -> None:
        """A commit made this run's files so far durable: say so in a log (a terminal has the live line), at most
        every LOG_EVERY seconds, so a long run's log shows its progress and a short one stays quiet."""
        if not self.line.live and time.time() - self.last_logged >= LOG_EVERY:
            self.last_logged = time.time()
            self.line.say(f"committed {self.files_done}/{self.files_total} files: " + self._rates())

    def finish(self) -> None:
        self.line.clear()
