"""Two small guards of the training loop: bad losses (non-finite, spikes) and stop signals.

A non-finite loss skips the optimizer step (parameters and optimizer state untouched) and is counted;
the loop stops after `max_nan_skips` in a row. A spike is a finite loss many standard deviations above
the recent window (checked only after warmup, once the window has filled a little); it is reported and,
when the user asks, skipped. Both keep their state in the checkpoint so a resumed run decides the same.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading

WINDOW = 50  # recent accepted losses that define "normal"
MIN_WINDOW = 10


class LossGuard:
    def __init__(self, spike_sigma: float, max_nan_skips: int, after_step: int):
        self.spike_sigma, self.max_nan_skips, self.after_step = spike_sigma, max_nan_skips, after_step
        self.window: list[float] = []
        self.nan_skips = 0
        self.consecutive = 0
        self.spikes = 0
        self.last_mean = self.last_std = 0.0

    def check(self, step: int, loss: float) -> str:
        """'nan' (skip the step), 'spike' (report; skip if configured) or 'ok'."""
        if not math.isfinite(loss):
            return self.non_finite(step)
        self.consecutive = 0
        if self.spike_sigma > 0 and step >= self.after_step and len(self.window) >= MIN_WINDOW:
            n = len(self.window)
            mean = sum(self.window) / n
            std = math.sqrt(sum((v - mean) ** 2 for v in self.window) / (n - 1))
            if loss > mean + self.spike_sigma * max(std, 1e-3 * abs(mean)):
                self.last_mean, self.last_std = mean, std
                self.spikes += 1
                return "spike"  # kept out of the window so one spike does not widen "normal"
        self.window = (self.window + [loss])[-WINDOW:]
        return "ok"

    def non_finite(self, step: int) -> str:
        self.nan_skips += 1
        self.consecutive += 1
        return "nan"

    def state_dict(self) -> dict:
        return {"window": list(self.window), "nan_skips": self.nan_skips, "consecutive": self.consecutive,
                "spikes": self.spikes}

    def load_state_dict(self, state: dict) -> None:
        self.window = [float(v) for v in state["window"]]
        self.nan_skips, self.consecutive, self.spikes = state["nan_skips"], state["consecutive"], state["spikes"]


class StopFlag:
    """SIGTERM / SIGINT ask the loop to finish the current step, save, and exit; a second Ctrl-C aborts.

    Under torchrun every rank gets the signal, not necessarily during the same step: the loop all-reduces
    `requested` so all ranks stop after the same step. Only the rank that announces (rank 0) prints.
    A SIGINT can reach a torchrun worker twice (from a scheduler that signals every process of the job,
    then forwarded by torchrun), so there a second one does not abort: torchrun itself kills workers
    that take too long."""

    def __init__(self, announce: bool = True, second_sigint_aborts: bool = True):
        self.requested = False
        self.signal_name = ""
        self.announce = announce
        self.second_sigint_aborts = second_sigint_aborts

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT and self.second_sigint_aborts:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if self.announce:
            print(f"\n{self.signal_name} received: finishing this step, then saving a checkpoint "
                  "(Ctrl-C again to abort without saving)", flush=True)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # handlers only work there
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
