"""Helpers that end with the process that started them, however it ends.

- worker_pool: processes that exit when their parent dies. A killed parent (kill -9, SIGTERM) used to
  leave its workers, the forkserver and the resource tracker running (~95 MB per kill): the workers wait
  on a queue whose write end they hold themselves, and the others wait for the workers. Each worker now
  watches a pipe whose only write end is the parent's: when the parent is gone, the pipe says EOF and
  the worker exits; the forkserver and the resource tracker follow by themselves. Workers ignore SIGINT:
  Ctrl-C reaches the whole process group, and the parent decides what an interrupt means. They are born
  with SIGINT blocked (the forkserver is started with it blocked, and its children inherit the mask), so a
  Ctrl-C while the forkserver or a worker is still starting cannot kill it: one that did broke the pool,
  and shutting a broken pool down with tasks queued could hang for good (seen as a flaky test under load).
- parallel_bz2: indexed_bzip2 runs C++ threads. A Python thread still inside its read() when the
  interpreter finalizes is ended from inside C++, which aborts the process ("terminate called without
  an active exception", after prepare had printed "interrupted"). At exit, readers are closed once the
  read in progress has returned.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator


@contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool (forkserver: forking a process that runs threads is unsafe) whose workers die with us."""
    context = get_context("forkserver")
    _start_forkserver()
    lifeline, held = context.Pipe(duplex=False)  # workers read; only this process holds the write end
    pool = _Pool(max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(lifeline,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        lifeline.close()
        held.close()


class _Pool(ProcessPoolExecutor):
    def submit(self, *args, **kwargs):
        # a submit may start a worker: a KeyboardInterrupt halfway would leave one the pool does not know, which
        # outlives the pool's shutdown and then fails loudly when the parent is gone
        with _sigint_deferred():
            return super().submit(*args, **kwargs)


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a SIGINT that arrives inside until the end (Python runs signal handlers on the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and callable(previous):
            previous(signal.SIGINT, pending[0])
        elif pending and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def _start_forkserver() -> None:
    """Start the forkserver (if it is not running) with SIGINT blocked: it and every worker it forks inherit the
    mask, so a SIGINT reaching them before they ignore it stays pending instead of raising KeyboardInterrupt."""
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()  # first: it blocks SIGINT while it starts, then unblocks it (ours too)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _start_worker(lifeline) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (discards a SIGINT pending since the worker was born)
    threading.Thread(target=_exit_with_parent, args=(lifeline,), name="lifeline", daemon=True).start()


def _exit_with_parent(lifeline) -> None:
    try:
        lifeline.poll(None)  # nothing is ever sent: this returns when the parent's end closes
    except OSError:
        pass
    os._exit(1)


_reading = threading.Lock()  # held while a reader is opened, read or closed, so exit can wait for it
_open_readers: set = set()
_exiting = False


def parallel_bz2(path: Path, threads: int, read_bytes: int) -> Iterator[bytes]:
    """Decompressed chunks of a bzip2 file, decompressed on `threads` threads by indexed_bzip2.

    Errors come from indexed_bzip2 as they are (RuntimeError, ValueError, OSError, EOFError).
    """
    import indexed_bzip2

    with _reading:
        if _exiting:
            return
        reader = indexed_bzip2.open(str(path), parallelization=threads)
        _open_readers.add(reader)
    try:
        while True:
            with _reading:
                if _exiting:
                    return
                chunk = reader.read(read_bytes)
            if not chunk:
                return
            yield chunk
    finally:
        with _reading:
            if reader in _open_readers:
                _open_readers.discard(reader)
                reader.close()  # joins its threads


@atexit.register
def _close_readers() -> None:
    global _exiting
    with _reading:  # waits for a read in progress (a quarter megabyte: milliseconds)
        _exiting = True
        for reader in _open_readers:
            reader.close()
        _open_readers.clear()
