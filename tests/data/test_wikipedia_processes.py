"""A Wikipedia prepare killed or interrupted leaves no process behind and always ends cleanly.

Real subprocesses and real signals. Before: every kill -9 or SIGTERM left 4 processes (the forkserver,
its 2 workers and the resource tracker, ~95 MB); a Ctrl-C during decompression aborted 2 times in 5 with
"terminate called without an active exception" after printing "interrupted".
"""

from __future__ import annotations

import bz2
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gptforge.data.sources.wikipedia as wikipedia

from helpers import alive, ctrl_c_under_fire, descendants, many_pages_dump, sigint_default

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")


def big_dump(path: Path, pages: int) -> Path:
    """A plain-XML dump of `pages` articles (~1.5 KB of XML each): many batches for the workers."""
    path.write_bytes(many_pages_dump(pages))
    return path


def start_prepare(dump: Path, out: Path, log: Path) -> subprocess.Popen:
    # stderr to a file: orphaned workers would keep a pipe open and a read of it would hang
    return subprocess.Popen(
        [sys.executable, "-m", "gptforge", "prepare", str(dump), "--out", str(out), "--workers", "2",
         "--tokenizer", "char"],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True, preexec_fn=sigint_default,
    )


def wait_for_workers(proc: subprocess.Popen, timeout: float = 60) -> set[int]:
    """The process tree once the pool is up: forkserver, resource tracker and workers."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        seen |= descendants(proc.pid)
        if len(seen) >= 4:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"the worker pool never started (saw {len(seen)} child processes, rc {proc.poll()})")


def assert_all_gone(pids: set[int], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:80] for p in pids if alive(p)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # (ours: started by this test)
    assert not left, f"still running {within} s after the parent ended: {left}"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_prepare_leaves_no_process_behind(tmp_path, sig):
    dump = big_dump(tmp_path / "wiki.xml", 12_000)
    proc = start_prepare(dump, tmp_path / "data", tmp_path / "log")
    tree = wait_for_workers(proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == -sig
    assert_all_gone(tree | descendants(proc.pid))
    assert not (tmp_path / "data").exists() or not (tmp_path / "data" / "manifest.json").exists()


def test_ctrl_c_to_the_process_group_ends_with_interrupted_and_no_process_left(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group: workers must leave the decision to prepare."""
    dump = big_dump(tmp_path / "wiki.xml", 12_000)
    proc = start_prepare(dump, tmp_path / "data", tmp_path / "log")
    tree = wait_for_workers(proc)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert (tmp_path / "log").read_text().strip() == "gptforge prepare: interrupted"
    assert_all_gone(tree)
    assert not (tmp_path / "data").exists()  # a fresh dataset interrupted leaves nothing


EXIT_DURING_READ = """
import sys, threading, time
from pathlib import Path
from gptforge.data.sources import wikipedia

def read_all():
    for _ in wikipedia._parallel_bz2(Path(sys.argv[1]), 2):
        pass

threading.Thread(target=read_all, daemon=True).start()
time.sleep(float(sys.argv[2]))
print("exiting", flush=True)
sys.exit(130)
"""


@pytest.mark.skipif(wikipedia.indexed_bzip2 is None, reason="indexed_bzip2 is not installed")
def test_exit_while_a_thread_decompresses_does_not_abort(tmp_path):
    """What Ctrl-C during decompression does inside prepare (whose reading runs on a daemon thread),
    made deterministic: it aborted every time before (exit 134, "terminate called ...")."""
    dump = tmp_path / "wiki.xml.bz2"
    dump.write_bytes(bz2.compress(many_pages_dump(6000), compresslevel=1))
    for delay in ("0.2", "0.5"):
        done = subprocess.run([sys.executable, "-c", EXIT_DURING_READ, str(dump), delay], capture_output=True,
                              text=True, timeout=60)
        assert (done.returncode, done.stdout, done.stderr) == (130, "exiting\n", "")


POOL_MASKS = """
import os, sys
from pathlib import Path
from multiprocessing import forkserver
from gptforge.data.sources.lifetimes import worker_pool

def mask(pid="self"):
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("SigBlk:"))
    return int(line.split()[1], 16)

if __name__ == "__main__":
    with worker_pool(2) as pool:
        workers = [pool.submit(mask).result() for _ in range(4)]
        print(mask(forkserver._forkserver._forkserver_pid), *workers)
"""


def test_the_forkserver_and_its_workers_are_born_with_sigint_blocked(tmp_path):
    """The cause of the flaky Ctrl-C test: a SIGINT reaching the forkserver or a worker while it still started
    (before it ignores SIGINT) killed it with a KeyboardInterrupt traceback in the log; a dead worker broke the
    pool, and shutting it down could hang for good. Born with SIGINT blocked, they cannot be killed by it."""
    script = tmp_path / "masks.py"
    script.write_text(POOL_MASKS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          preexec_fn=sigint_default)
    assert done.returncode == 0, done.stderr
    masks = [int(x) for x in done.stdout.split()]  # the forkserver's, then the workers'
    assert len(masks) == 5 and all(mask & 1 << (signal.SIGINT - 1) for mask in masks), masks


def test_a_sigint_during_submit_waits_until_the_worker_is_known():
    """A KeyboardInterrupt inside pool.submit (which starts workers) left a worker the pool did not know: it
    outlived the shutdown and printed a traceback once the parent was gone. The SIGINT now takes effect when
    submit returns."""
    from gptforge.data.sources.lifetimes import _sigint_deferred

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with _sigint_deferred():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal")
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_children_cannot_be_killed_by_sigint_at_any_moment_of_their_lives(tmp_path):
    """SIGINT sent to every child of prepare every few milliseconds from the moment the first one exists (the
    resource tracker, the forkserver and the workers, both passes of a character-level prepare: each starts
    under fire), then Ctrl-C to the whole group. Before: a child still starting died with a KeyboardInterrupt
    traceback in the log, and a dead worker could hang the pool's shutdown for good."""
    proc = start_prepare(big_dump(tmp_path / "wiki.xml", 30_000), tmp_path / "data", tmp_path / "log")
    # (on a fast machine it may be done before the Ctrl-C: the children all survived)
    finished, code, tree = ctrl_c_under_fire(proc, seconds=1.5, timeout=30)
    log = (tmp_path / "log").read_text().strip()
    assert (code, log) == ((0, "") if finished else (130, "gptforge prepare: interrupted")), log[-3000:]
    assert len(tree) >= 4  # the tracker, the forkserver and at least 2 workers were under fire
    assert_all_gone(tree)
