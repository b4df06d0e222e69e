"""Faults while a run is written (issue 17): one writer per RUN_DIR, disk full and other OS errors at each write,
signals and exit codes. Each test failed before its fix: two trains on one --out mixed their checkpoints, a full
disk gave a SafetensorError / inline_container.cc / OSError traceback and left the partial .tmp_step_*, a run
stopped by a signal exited 0, a finished run was an error."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from safetensors import SafetensorError

from gptforge.cli import main
from gptforge.errors import UserError
from gptforge.train import checkpoint as ck
from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint
from gptforge.train.loop import train

from helpers import sigint_default, tiny_config, tree_digest

FULL = OSError(errno.ENOSPC, "No space left on device")
TINY = dict(max_iters=9, eval_interval=3, lr_decay_iters=40, dropout=0.0)


def cli_args(data, out, **overrides) -> list[str]:
    cfg = tiny_config(data, out, **{**TINY, **overrides}).flat()
    return [f"--{k}={v}" for k, v in cfg.items() if k not in ("sample_prompts", "vocab_size") and v is not None]


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # each line parses


def steps(run) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


# ---------------------------------------------------------------------------------------------- one writer

HOLD = """
import sys, time
from gptforge.fsutil import exclusive_lock
with exclusive_lock(sys.argv[1], "gptforge train"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(run, seconds=60) -> subprocess.Popen:
    """Another process holding RUN_DIR's lock, as a running `gptforge train` does."""
    run.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_train_on_the_same_out_stops_at_once_naming_the_holder(tmp_path, char_data):
    run = tmp_path / "run"
    train(tiny_config(char_data, run, **TINY))
    before = tree_digest(run)
    holder = hold_lock(run)
    try:
        t0 = time.monotonic()
        with pytest.raises(UserError) as info:
            train(tiny_config(char_data, run, **{**TINY, "max_iters": 12, "init_from": "resume"}))
        assert time.monotonic() - t0 < 30  # at once: it never waits for the holder
    finally:
        holder.kill()
        holder.wait()
    assert str(info.value) == (f"{run} is being written by gptforge train (pid {holder.pid}); one writer at a time: "
                               "wait for it to finish, or stop it")
    after = tree_digest(run)
    assert after.pop(".gptforge.lock") != before.pop(".gptforge.lock")  # (the holder's pid)
    assert after == before  # nothing written, nothing cleaned


def test_a_killed_writer_leaves_no_stale_lock(tmp_path, char_data):
    run = tmp_path / "run"
    holder = hold_lock(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert train(tiny_config(char_data, run, **TINY))["reason"] == "max_iters"
    assert (run / ".gptforge.lock").read_text() == ""  # released and emptied


def test_readers_never_wait_for_the_writer(tmp_path, char_data, capsys):
    from gptforge.analysis.evaluate import eval_command
    from gptforge.commands.inspection import inspect_command
    from gptforge.commands.sample import sample_command

    run = tmp_path / "run"
    train(tiny_config(char_data, run, **TINY))
    holder = hold_lock(run)
    try:
        assert len(sample_command(run, prompt="the ", max_new_tokens=5, device="cpu")) == 1
        eval_command(run, data=str(char_data), device="cpu", max_batches=2)
        inspect_command(str(run))
    finally:
        holder.kill()
        holder.wait()
    out = capsys.readouterr().out
    assert "val loss" in out and "step_00000009: complete, checksums verified" in out


@pytest.mark.slow  # two real `gptforge train` processes (~10 s)
def test_two_trains_started_together_on_one_out(tmp_path, char_data):
    """Before: mixed checkpoints of two seeds, empty step_* folders, a broken metrics.jsonl line."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "gptforge", "train",
                               *cli_args(char_data, run, seed=seed, max_iters=60, eval_interval=5)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for seed in (1, 2)]
    done = [(p.pid, p.wait(timeout=300), p.stderr.read()) for p in procs]
    winners = [d for d in done if d[1] == 0]
    losers = [d for d in done if d[1] != 0]
    assert len(winners) == 1 and len(losers) == 1, done
    assert losers[0][1] == 1 and losers[0][2] == (
        f"gptforge train: error: {run} is being written by gptforge train (pid {winners[0][0]}); one writer at a "
        "time: wait for it to finish, or stop it\n") or "already holds a run" in losers[0][2]
    seeds = {load_checkpoint(run / "checkpoints" / name)["state"]["config"]["seed"] for name in steps(run)
             if name.startswith("step_")}
    assert len(seeds) == 1 and all(ck.check_marker(run / "checkpoints" / n) is None for n in steps(run)
                                   if n.startswith("step_"))
    starts = [r for r in metrics(run) if r["event"] == "start"]  # (every line parses)
    assert len(starts) == 1 and [r["step"] for r in metrics(run) if r["event"] == "end"] == [60]


@pytest.mark.slow  # torchrun with 2 gloo processes (~15 s)
def test_under_torchrun_only_rank_0_locks_and_no_rank_waits(tmp_path, char_data):
    from test_train_dist import torchrun

    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        t0 = time.monotonic()
        proc = torchrun(char_data, run, wait=False)
        out, _ = proc.communicate(timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0 and time.monotonic() - t0 < 100
    assert out.count(f"is being written by gptforge train (pid {holder.pid})") == 2  # both ranks stop with it
    assert not (run / "checkpoints").exists() and not (run / "config.toml").exists()


# ---------------------------------------------------------------------------------------------- disk full

def fail_on_call(monkeypatch, owner, name, error, on_call=1):
    """`owner.name` raises `error` on its `on_call`-th call (the writes before it succeed)."""
    real, calls = getattr(owner, name), {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


def assert_one_line_and_intact(message, run, path, latest):
    assert "\n" not in message
    assert message.startswith(f"cannot write {path}: the disk is full (No space left on device)"), message
    assert "needed" in message and " free" in message
    if (run / "checkpoints").exists():
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no partial temporary
    if latest:
        assert f"{run / 'checkpoints' / latest} is intact" in message or f"(latest: {run / 'checkpoints' / latest})" \
            in message
        assert latest_checkpoint(run).name == latest and load_checkpoint(latest_checkpoint(run))  # verifies
    else:
        assert message.endswith("; no checkpoint had been written yet (free space, then run the command again)")


SAVE_WRITES = {  # (what, error): the second checkpoint's save fails at this write, as the library reports it
    "model.safetensors": (ck, "save_file", SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)")),
    "optimizer.pt": (ck.torch, "save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 "
                                                    "vs 534")),
    "state.json": (ck, "_fsync_file", FULL),  # (a full disk can first show when the data is flushed)
}


@pytest.mark.parametrize("where", list(SAVE_WRITES))
def test_disk_full_while_saving_is_one_line_and_keeps_the_checkpoints(tmp_path, char_data, monkeypatch, where):
    owner, name, error = SAVE_WRITES[where]
    if where == "optimizer.pt":  # torch's zip writer loses the errno: the free space tells
        monkeypatch.setattr(ck, "free_bytes", lambda path: 1000)
    run = tmp_path / "run"
    fail_on_call(monkeypatch, owner, name, error, on_call={"optimizer.pt": 3, "state.json": 8}.get(where, 2))
    with pytest.raises(UserError) as info:
        train(tiny_config(char_data, run, **TINY))
    assert_one_line_and_intact(str(info.value), run, run / "checkpoints" / "step_00000006", "step_00000003")
    assert "nothing was deleted; the run stops here (free space, then continue with --init_from=resume)" in \
        str(info.value)
    assert metrics(run)[-1] == {**metrics(run)[-1], "event": "end", "reason": "checkpoint_failed", "step": 6}
    monkeypatch.undo()
    assert train(tiny_config(char_data, run, **{**TINY, "init_from": "resume"}))["step"] == 9  # it continues


def test_a_library_error_that_is_not_a_write_failure_keeps_its_traceback(tmp_path, char_data, monkeypatch):
    fail_on_call(monkeypatch, ck.torch, "save", RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        train(tiny_config(char_data, tmp_path / "run", **TINY))
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_disk_full_at_start_is_one_line(tmp_path, char_data, monkeypatch, capsys):
    """Before: the config write ended in a traceback."""
    from gptforge.train import loop

    fail_on_call(monkeypatch, loop, "atomic_write_text", FULL)
    run = tmp_path / "run"
    assert main(["train", *cli_args(char_data, run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"gptforge train: error: cannot write {run / 'config.toml'}: "
                                                   "the disk is full (No space left on device): about ")
    assert err.endswith(" free; no checkpoint had been written yet (free space, then run the command again)\n")


def test_disk_full_so_that_the_lock_cannot_be_written(tmp_path, char_data, monkeypatch):
    fail_on_call(monkeypatch, os, "pwrite", FULL)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=rf"^cannot write {re.escape(str(run / '.gptforge.lock'))}: the disk is full "
                                        r"\(No space left on device\): about 256 bytes needed, .* free; nothing was "
                                        "written$"):
        train(tiny_config(char_data, run, **TINY))


class HalfWrites:
    """A file that writes half of the next line it is given, then reports the disk full."""

    def __init__(self, file, after: int):
        self.file, self.after = file, after

    def write(self, text):
        self.after -= 1
        if self.after < 0:
            self.file.write(text[: len(text) // 2])
            self.file.flush()
            raise FULL
        return self.file.write(text)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_disk_full_in_metrics_jsonl_is_one_line_and_the_resume_drops_the_partial_line(tmp_path, char_data,
                                                                                       monkeypatch):
    from gptforge.train import events

    real_init = events.MetricsLog.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.file = HalfWrites(self.file, after=9)

    monkeypatch.setattr(events.MetricsLog, "__init__", init)
    run = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train(tiny_config(char_data, run, **TINY))
    assert_one_line_and_intact(str(info.value), run, run / "metrics.jsonl", "step_00000003")
    assert not (run / "metrics.jsonl").read_text().endswith("\n")  # the half line is there
    monkeypatch.undo()
    train(tiny_config(char_data, run, **{**TINY, "init_from": "resume"}))
    assert [r["step"] for r in metrics(run) if r["event"] == "end"] == [9]  # every line parses


def test_disk_full_writing_samples(tmp_path, char_data, monkeypatch):
    from gptforge.train import samples

    fail_on_call(monkeypatch, samples, "atomic_write_text", FULL, on_call=2)
    run = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train(tiny_config(char_data, run, **TINY, sample_tokens=4, sample_prompts=["the "]))
    assert_one_line_and_intact(str(info.value), run, run / "samples" / "step_00000003.txt", None)


def test_a_read_only_place_is_one_line_without_sizes(tmp_path, char_data, monkeypatch):
    fail_on_call(monkeypatch, ck, "save_file", SafetensorError("Error while serializing: I/O error: Read-only file "
                                                               "system (os error 30)"), on_call=2)
    run = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train(tiny_config(char_data, run, **TINY))
    assert str(info.value).startswith(f"cannot write {run / 'checkpoints' / 'step_00000006'}: Read-only file system; "
                                      f"the previous checkpoint {run / 'checkpoints' / 'step_00000003'} is intact")


# ---------------------------------------------------------------------------------------------- signals, exit codes

def start_cli(data, out, **overrides) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "gptforge", "train", *cli_args(data, out, **overrides)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=sigint_default)


def wait_for_steps(proc, run, n=3):
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or sum(r["event"] == "log" for r in metrics(run)) < n:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stopped_by_a_signal_saves_then_exits_non_zero(tmp_path, char_data, sig, code):
    run = tmp_path / "run"
    proc = start_cli(char_data, run, max_iters=100_000, eval_interval=100_000)
    wait_for_steps(proc, run)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    saved = load_checkpoint(latest_checkpoint(run))["state"]["step"]
    assert f"done: signal {sig.name} at step {saved}" in out
    assert err == (f"gptforge train: interrupted (signal {sig.name}) after saving the checkpoint of step {saved}; "
                   "continue with --init_from=resume\n")


def test_a_second_ctrl_c_aborts_with_the_interrupted_line(tmp_path, char_data):
    run = tmp_path / "run"
    proc = start_cli(char_data, run, max_iters=100_000, eval_interval=100_000)
    wait_for_steps(proc, run)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.splitlines()[-1].startswith("gptforge train: interrupted")


def test_a_finished_run_has_nothing_to_do_and_exits_0(tmp_path, char_data, capsys):
    run = tmp_path / "run"
    train(tiny_config(char_data, run, **TINY))
    before = tree_digest(run)
    assert main(["train", *cli_args(char_data, run, init_from="resume")]) == 0
    assert "nothing to do: the checkpoint is at step 9 and max_iters is 9" in capsys.readouterr().out
    assert tree_digest(run) == before


KILLED_IN_RETENTION = textwrap.dedent("""
    import os, shutil, signal, sys
    from gptforge.train import checkpoint as ck
    real = shutil.rmtree
    def rmtree(path, *a, **k):  # retention: delete one file, then die
        if "del_step" in str(path):
            os.unlink(os.path.join(path, "model.safetensors"))
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *a, **k)
    ck.shutil.rmtree = rmtree
    from gptforge.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_kill_during_retention_leaves_a_temporary_that_the_next_start_removes(tmp_path, char_data, capsys):
    """Before: a half-deleted step_* (no model.safetensors) stayed in checkpoints/ forever."""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_RETENTION, "train",
                           *cli_args(char_data, run, keep_last=2)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftover = [n for n in steps(run) if n.startswith(".tmp_del_step_00000003")]
    assert leftover and "step_00000003" not in steps(run)  # the old checkpoint was never half a step_* directory
    assert main(["train", *cli_args(char_data, run, max_iters=12, keep_last=2, init_from="resume")]) == 0
    assert f"removed {run / 'checkpoints' / leftover[0]} (left by an interrupted save or retention)" in \
        capsys.readouterr().out
    assert not [n for n in steps(run) if n.startswith(".")] and {"step_00000009", "step_00000012"} <= set(steps(run))


def test_a_half_deleted_step_of_an_earlier_version_is_removed_at_the_next_start(tmp_path, char_data, capsys):
    run = tmp_path / "run"
    train(tiny_config(char_data, run, **{**TINY, "keep_last": 5}))
    old = run / "checkpoints" / "step_00000003"
    for name in ("COMPLETE", "model.safetensors"):  # what an interrupted rmtree of an earlier version left
        (old / name).unlink()
    train(tiny_config(char_data, run, **{**TINY, "keep_last": 5, "max_iters": 12, "init_from": "resume"}))
    assert f"removed {old} (left by an interrupted save or retention)" in capsys.readouterr().out
    assert not old.exists()


def test_when_the_full_disk_also_refuses_the_end_record_the_message_is_still_the_checkpoints(tmp_path, char_data,
                                                                                             monkeypatch):
    from gptforge.fsutil import WriteFailed
    from gptforge.train import events

    full = {"now": False}
    real_save, real_write = ck.save_file, events.MetricsLog.write

    def save_file(*args, **kwargs):
        if "step_00000006" in str(args[1]):
            full["now"] = True
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(*args, **kwargs)

    def write(self, record):
        if full["now"]:
            raise WriteFailed(self.path, FULL)
        return real_write(self, record)

    monkeypatch.setattr(ck, "save_file", save_file)
    monkeypatch.setattr(events.MetricsLog, "write", write)
    run = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train(tiny_config(char_data, run, **TINY))
    assert_one_line_and_intact(str(info.value), run, run / "checkpoints" / "step_00000006", "step_00000003")
