"""The run directory's one writer: `gptforge train` holds RUN_DIR/.gptforge.lock for the whole run (rank 0 under
torchrun; the OS releases it when the process ends however it ends, so a kill -9 never leaves a stale lock), a
second `train` on the same --out stops at once naming the holder's pid, and readers (sample, eval, inspect,
diagnose, plot) never take it. The holder removes what interrupted saves and retentions left, and a write into the
run that the machine refuses (disk full, quota, read-only) is told in one line."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from gptforge.errors import UserError
from gptforge.fsutil import LOCK_FILE, WriteFailed, exclusive_lock, write_failure_line
from gptforge.train import dist
from gptforge.train.checkpoint import latest_checkpoint, remove_leftovers
from gptforge.train.console import Console


@contextmanager
def sole_writer(run_dir: Path, console: Console) -> Iterator[None]:
    """Hold RUN_DIR's lock while inside (rank 0 takes it; every rank stops if it cannot, none waits)."""
    with ExitStack() as held:
        failure = None
        if dist.is_main():
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(exclusive_lock(run_dir, "gptforge train"))
            except UserError as e:
                failure = str(e)
            except OSError as e:  # e.g. the disk is full already: the lock file cannot take the holder's pid
                path = e.filename or run_dir / LOCK_FILE
                failure = f"{write_failure_line(WriteFailed(path, e, 256))}; nothing was written"
        failure = dist.broadcast_object(failure)
        if failure:
            raise UserError(failure)
        if dist.is_main():
            for line in remove_leftovers(run_dir):
                console.print(line)
        yield


def write_failed(e: WriteFailed, run_dir: Path) -> UserError:
    """One line for a write the machine refused: the path, the bytes needed and free, and what is still safe."""
    line, latest = write_failure_line(e), latest_checkpoint(run_dir)
    if latest is None:
        return UserError(f"{line}; no checkpoint had been written yet (free space, then run the command again)")
    return UserError(f"{line}; the checkpoints are intact (latest: {latest}); free space, then continue with "
                     "--init_from=resume")
