"""The loss guard tells a spike from a level shift (RELIABILITY 10): a few high losses in a row are spikes, a loss
that stays high is a new level, kept whatever skip_spikes says, and the window follows it."""

from __future__ import annotations

import math
import random

from gptforge.train.guard import MAX_SPIKES_IN_A_ROW, MIN_WINDOW, LossGuard


def settled(values=None, seed=0) -> LossGuard:
    g = LossGuard(spike_sigma=6.0, max_nan_skips=5, after_step=0)
    rng = random.Random(seed)
    for step, loss in enumerate(values or [2.0 + rng.gauss(0, 0.01) for _ in range(30)]):
        assert g.check(step, loss) == "ok"
    return g


def test_a_lone_spike_is_a_spike_and_stays_out_of_the_window():
    g = settled()
    window = list(g.window)
    assert g.check(30, 5.0) == "spike"
    assert g.window == window and g.spikes == 1 and g.shifts == 0
    assert g.check(31, 2.0) == "ok"  # back to normal: the run of high losses is over
    assert g.high == [] and g.check(32, 5.0) == "spike"


def test_a_loss_that_stays_high_is_a_level_shift_and_the_window_follows_it():
    g = settled()
    old_mean = sum(g.window) / len(g.window)
    verdicts = [g.check(30 + i, 3.0 + 0.01 * i) for i in range(MAX_SPIKES_IN_A_ROW + 1)]
    assert verdicts == ["spike"] * MAX_SPIKES_IN_A_ROW + ["shift"]
    assert g.spikes == MAX_SPIKES_IN_A_ROW and g.shifts == 1 and g.last_mean == old_mean
    assert g.window == [3.0 + 0.01 * i for i in range(MAX_SPIKES_IN_A_ROW + 1)]
    assert math.isclose(g.level, sum(g.window) / len(g.window))
    # the new level is normal now: the window refills at it and calls nothing there a spike
    rng = random.Random(1)
    assert all(g.check(40 + i, 3.0 + rng.gauss(0, 0.01)) == "ok" for i in range(60))
    assert g.check(100, 9.0) == "spike"  # and a real spike above the new level is still seen


def test_never_more_than_a_few_spikes_in_a_row_however_long_the_loss_stays_high():
    g = settled()
    verdicts = [g.check(30 + i, 4.0) for i in range(100)]
    assert "shift" in verdicts
    longest = max(len(run) for run in "".join("s" if v == "spike" else "." for v in verdicts).split("."))
    assert longest <= MAX_SPIKES_IN_A_ROW
    assert verdicts.count("spike") == MAX_SPIKES_IN_A_ROW  # a constant new level: one shift, then normal


def test_restart_forgets_normal_until_the_window_fills_again():
    g = settled()
    g.restart()
    assert g.window == [] and g.high == []
    assert [g.check(30 + i, 6.0) for i in range(MIN_WINDOW)] == ["ok"] * MIN_WINDOW  # nothing to compare with
    assert g.check(40, 6.0) == "ok" and g.check(41, 30.0) == "spike"


def test_state_round_trips_mid_run_of_spikes_and_old_states_load():
    g = settled()
    g.check(30, 5.0), g.check(31, 5.1)
    h = LossGuard(spike_sigma=6.0, max_nan_skips=5, after_step=0)
    h.load_state_dict(g.state_dict())
    assert h.state_dict() == g.state_dict()
    assert [h.check(32 + i, 5.0) for i in range(2)] == [g.check(32 + i, 5.0) for i in range(2)] == ["spike", "shift"]
    old = {k: v for k, v in settled().state_dict().items() if k not in ("high", "shifts")}  # an earlier version's
    h.load_state_dict(old)
    assert h.high == [] and h.shifts == 0 and h.window == old["window"]
