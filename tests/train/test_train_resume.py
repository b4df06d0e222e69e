"""Exact resume (RELIABILITY 1, 12, 14): a run split by a fresh process or by SIGTERM equals an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint
from gptforge.train.loop import train

from helpers import make_char_data, records, tiny_config, tiny_text

# the schedule must not depend on where a run stops, so decay is pinned to a fixed length
BASE = dict(lr_decay_iters=40, max_iters=12)


def final_params(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))["model"]


def train_cli(data, out, **overrides):
    """`gptforge train` in a fresh process."""
    args = [f"--{k}={v}" for k, v in overrides.items()]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "gptforge", "train", f"--data={data}", f"--out={out}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def cli_overrides(**kw):
    cfg = tiny_config("x", "y", **{**BASE, **kw}).flat()
    return {k: v for k, v in cfg.items() if k not in ("data", "out", "sample_prompts", "vocab_size")}


def assert_same_run(continuous, resumed, steps):
    a, b = records(continuous), records(resumed)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for s in a:
        assert a[s]["loss"] == b[s]["loss"], f"loss differs at step {s}"
        assert a[s]["lr"] == b[s]["lr"], f"lr differs at step {s}"
        assert a[s]["tokens"] == b[s]["tokens"] and a[s]["epoch"] == b[s]["epoch"]
    pa, pb = final_params(continuous), final_params(resumed)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


@pytest.mark.parametrize("where", ["mid-epoch", "epoch boundary"])
def test_resume_in_fresh_process_is_bitwise_identical(tmp_path, char_data, where):
    if where == "mid-epoch":
        data, half = char_data, 5
    else:
        # 56 train blocks of 16 tokens at 8 blocks per step: step 7 ends epoch 0 exactly
        data, half = make_char_data(tmp_path / "small", tiny_text(n_lines=41, seed=0)), 7
        from gptforge.data.dataset import open_dataset
        assert (open_dataset(data).train_tokens - 1) // 16 == 56
    steps = 2 * half
    train(tiny_config(data, tmp_path / "continuous", **{**BASE, "max_iters": steps}))
    train(tiny_config(data, tmp_path / "resumed", **{**BASE, "max_iters": half}))
    state = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))["state"]
    assert state["step"] == half
    if where == "epoch boundary":
        assert state["epoch"] == 1.0
    proc = train_cli(data, tmp_path / "resumed", **cli_overrides(max_iters=steps, init_from="resume"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"resuming from {tmp_path / 'resumed' / 'checkpoints' / f'step_{half:08d}'}" in out
    assert_same_run(tmp_path / "continuous", tmp_path / "resumed", steps)


def test_sigterm_finishes_the_step_saves_and_resumes_exactly(tmp_path, char_data):
    out = tmp_path / "killed"
    proc = train_cli(char_data, out, **cli_overrides(max_iters=2000, lr_decay_iters=2000, eval_interval=1000))
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until a few steps are logged
        if (out / "metrics.jsonl").exists() and len(records(out)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr  # stopped by SIGTERM, after its checkpoint
    assert "SIGTERM received: finishing this step, then saving a checkpoint" in stdout
    stopped = load_checkpoint(latest_checkpoint(out))["state"]["step"]
    assert 3 <= stopped < 2000
    assert records(out, "end")[stopped]["reason"] == "signal SIGTERM"
    assert max(records(out)) == stopped  # the step in flight finished and was logged before the save
    target = stopped + 3
    schedule = {**BASE, "max_iters": target, "lr_decay_iters": 2000, "eval_interval": 1000}
    train(tiny_config(char_data, out, **schedule, init_from="resume"))  # (a fresh process is tested above)
    train(tiny_config(char_data, tmp_path / "continuous", **schedule))
    assert_same_run(tmp_path / "continuous", out, target)


def test_learning_rate_may_change_on_resume_and_continue_the_same_schedule(tmp_path, char_data):
    from gptforge.train.optim import lr_multiplier

    run = tmp_path / "run"
    train(tiny_config(char_data, run, **{**BASE, "max_iters": 4}))
    cfg = tiny_config(char_data, run, **{**BASE, "max_iters": 8, "init_from": "resume", "learning_rate": 1e-3,
                                         "min_lr": 1e-4, "lr_schedule_on_resume": "continue"})
    train(cfg)
    logged = records(run)
    for step in range(5, 9):  # logged after step-1's update, with that step's lr
        assert logged[step]["lr"] == pytest.approx(1e-3 * lr_multiplier(step - 1, cfg.optim, 8), rel=1e-12)
    first = tiny_config(char_data, run, **{**BASE, "max_iters": 4}).optim
    for step in range(1, 5):
        assert logged[step]["lr"] == pytest.approx(3e-3 * lr_multiplier(step - 1, first, 4), rel=1e-12)


def test_a_new_learning_rate_on_resume_begins_a_segment_that_resumes_exactly(tmp_path, char_data, capsys):
    """The issue's case: resumed with a lower LR, the run got the old cosine's value; now a segment warms up from
    the LR the old schedule had to the new peak, then decays to the new min_lr, and is itself resumed exactly."""
    from gptforge.train.optim import Segment, lr_at

    first = {**BASE, "lr_decay_iters": 60, "max_iters": 20}
    lower = {**first, "init_from": "resume", "learning_rate": 1e-3, "min_lr": 1e-4}
    for name in ("continuous", "resumed"):
        train(tiny_config(char_data, tmp_path / name, **first))
    capsys.readouterr()
    train(tiny_config(char_data, tmp_path / "continuous", **{**lower, "max_iters": 60}))
    out = capsys.readouterr().out
    train(tiny_config(char_data, tmp_path / "resumed", **{**lower, "max_iters": 40}))
    # diagnose reads the segment from the start record: where the LR stands at step 40 of the segment's cosine
    from gptforge.analysis.diagnose.report import diagnose_command

    sched = diagnose_command(tmp_path / "resumed").facts.schedule
    seg40 = [Segment.from_dict(d) for d in load_checkpoint(latest_checkpoint(tmp_path / "resumed"))["state"][
        "lr_segments"]]
    assert sched.now == pytest.approx(lr_at(40, tiny_config(char_data, "x", **{**lower, "max_iters": 40}).optim, 40,
                                            seg40), rel=1e-9)
    train(tiny_config(char_data, tmp_path / "resumed", **{**lower, "max_iters": 60}))
    assert_same_run(tmp_path / "continuous", tmp_path / "resumed", 60)

    old = tiny_config(char_data, "x", **first).optim
    then = lr_at(20, old, 20)  # where the old cosine was at the resume
    assert 1e-3 < then < 3e-3
    state = load_checkpoint(latest_checkpoint(tmp_path / "continuous"))["state"]
    assert state["lr_segments"] == [dict(start=20, from_lr=then, warmup=2, learning_rate=1e-3, min_lr=1e-4)]
    lr = {s: r["lr"] for s, r in records(tmp_path / "continuous").items()}  # logged at s: the lr of step s - 1
    assert [lr[s] for s in range(1, 21)] == [lr_at(s, old, 20) for s in range(20)]  # the first launch, unchanged
    assert lr[21] == then and lr[22] == pytest.approx((then + 1e-3) / 2) and lr[23] == pytest.approx(1e-3)
    after = [lr[s] for s in range(23, 61)]
    assert all(a > b for a, b in zip(after, after[1:])) and lr[60] == pytest.approx(1e-4, rel=0.05)
    new = tiny_config(char_data, "x", **{**lower, "max_iters": 60}).optim
    segment = [Segment.from_dict(state["lr_segments"][0])]
    assert [lr[s] for s in range(21, 61)] == pytest.approx([lr_at(s, new, 60, segment) for s in range(20, 60)],
                                                            rel=1e-12)
    assert (f"learning rate {then:.3g} now (step 20), {lr[60]:.3g} at the end (step 59); a new schedule segment "
            f"from step 20: 2 steps from {then:.3g} to the new peak 0.001, then cosine to 0.0001") in out
    assert "the loss guard's window restarts (the learning rate changed)" in out
