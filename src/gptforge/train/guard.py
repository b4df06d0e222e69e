"""Two small guards of the training loop: bad losses (non-finite, spikes, level shifts) and stop signals.

A non-finite loss skips the optimizer step (parameters and optimizer state untouched) and is counted;
the loop stops after `max_nan_skips` in a row. A spike is a finite loss many standard deviations above
the recent window (checked only after warmup, once the window has filled a little); it is reported and,
when the user asks, skipped. A loss that stays that high is no spike but a new level (data of another
kind, another learning rate): after MAX_SPIKES_IN_A_ROW spikes in a row the next one is kept whatever
`skip_spikes` says, called a level shift, and the window restarts from the high losses, so the guard
follows the new level instead of skipping every step from then on. The loop also restarts the window
when a resume changes the data or the learning rate (`restart`). The guard keeps its state in the
checkpoint so a resumed run decides the same.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading

WINDOW = 50  # recent accepted losses that define "normal"
MIN_WINDOW = 10
MAX_SPIKES_IN_A_ROW = 3  # spikes reported (and skipped, if asked) in a row before the level counts as moved


class LossGuard:
    def __init__(self, spike_sigma: float, max_nan_skips: int, after_step: int):
        self.spike_sigma, self.max_nan_skips, self.after_step = spike_sigma, max_nan_skips, after_step
        self.window: list[float] = []
        self.high: list[float] = []  # the losses of the spikes in a row so far
        self.nan_skips = 0
        self.consecutive = 0
        self.spikes = 0
        self.shifts = 0
        self.last_mean = self.last_std = 0.0

    def check(self, step: int, loss: float) -> str:
        """'nan' (skip the step), 'spike' (report; skip if configured), 'shift' (the level moved: keep the step)
        or 'ok'."""
        if not math.isfinite(loss):
            return self.non_finite(step)
        if self.spike_sigma > 0 and step >= self.after_step and len(self.window) >= MIN_WINDOW:
            n = len(self.window)
            mean = sum(self.window) / n
            std = math.sqrt(sum((v - mean) ** 2 for v in self.window) / (n - 1))
            if loss > mean + self.spike_sigma * max(std, 1e-3 * abs(mean)):
                self.last_mean, self.last_std = mean, std
                self.high.append(loss)
                if len(self.high) <= MAX_SPIKES_IN_A_ROW:
                    self.spikes += 1
                    return "spike"  # kept out of the window so one spike does not widen "normal"
                self.shifts += 1
                self.window, self.high = self.high, []  # "normal" is the new level from here
                return "shift"
        self.high = []
        self.window = (self.window + [loss])[-WINDOW:]
        return "ok"

    @property
    def level(self) -> float:
        """The mean of the window: after a shift, of the high losses that moved it."""
        return sum(self.window) / len(self.window) if self.window else math.nan

    def restart(self) -> None:
        """Forget what "normal" was (the data or the learning rate changed): no spike is called until the
        window has filled again."""
        self.window, self.high = [], []

    def stepped(self) -> None:
        """The step was not skipped as non-finite (the caller knows once it has seen the gradient norm too):
        the run of non-finite skips is over."""
        self.consecutive = 0

    def non_finite(self, step: int) -> str:
        self.nan_skips += 1
        self.consecutive += 1
        return "nan"

    def state_dict(self) -> dict:
        return {"window": list(self.window), "nan_skips": self.nan_skips, "consecutive": self.consecutive,
                "spikes": self.spikes, "high": list(self.high), "shifts": self.shifts}

    def load_state_dict(self, state: dict) -> None:
        self.window = [float(v) for v in state["window"]]
        self.nan_skips, self.consecutive, self.spikes = state["nan_skips"], state["consecutive"], state["spikes"]
        # (checkpoints written before level shifts lack these)
        self.high, self.shifts = [float(v) for v in state.get("high", [])], int(state.get("shifts", 0))


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
