"""Files and the machine: atomic writes (a reader sees the old file or the complete new one, never a half),
one writer per folder, OS errors while writing told in one line, sha256 of files, and the number of usable cores."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from gptforge.errors import UserError
from gptforge.fmt import byte_size

LOCK_FILE = ".gptforge.lock"


def sha256_file(*paths: str | os.PathLike, offset: int = 0) -> str:
    """Hex sha256 of the bytes of one file, or of several files read one after the other (each from `offset`)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            f.seek(offset)
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def file_hashes(path: str | os.PathLike, blob: bool = True) -> tuple[str, str | None]:
    """(sha256, git blob id or None without `blob`) of a file, in one read."""
    sha = hashlib.sha256()
    git = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode()) if blob else None
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
            if git is not None:
                git.update(block)
    return sha.hexdigest(), git.hexdigest() if git is not None else None


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def is_temporary(name: str) -> bool:
    """Names our writers use while a file is incomplete; every reader skips them."""
    return name.startswith(".") or name.endswith(".tmp")


@contextmanager
def building_dir(out: str | os.PathLike):
    """Build a directory under a temporary name beside `out`; it appears as `out` only once complete.

    `out` must be absent or empty. On any error the partial directory is removed and `out` is untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
            else:
                fsync_dir(path)
        fsync_dir(tmp)
        if out.exists():
            out.rmdir()  # empty: a non-empty one makes this fail rather than be replaced
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def exclusive_lock(directory: str | os.PathLike, holder: str):
    """Hold DIRECTORY/.gptforge.lock exclusively while writing into DIRECTORY: one writer per folder.

    An flock belongs to the open file, so the OS releases it when the process ends however it ends: a kill -9
    never leaves a stale lock. A second writer stops at once with the holder's name and pid (kept in the file
    while held, emptied on release so a finished folder is byte-for-byte what it was). Readers never take it.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking rather than no writing
        yield
        return
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # (open applies the umask)
    except OSError as e:
        raise UserError(f"cannot create the lock file {path}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another gptforge process"
            raise UserError(f"{directory} is being written by {other}; one writer at a time: wait for it to finish, "
                            "or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} (pid {os.getpid()})\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


class WriteFailed(Exception):
    """An OS error (disk full, quota, read-only, I/O) while writing `path` (about `needed` bytes, when known); the
    caller says what it means."""

    def __init__(self, path: str | os.PathLike, error: OSError, needed: int | None = None):
        super().__init__(f"{path}: {error.strerror or error}")
        self.path, self.error, self.needed = Path(path), error, needed

    @property
    def disk_full(self) -> bool:
        return self.error.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def writing(path: str | os.PathLike, needed: int | None = None):
    """Turn an OSError raised inside into WriteFailed naming `path` (and the bytes it needed, when known)."""
    try:
        yield
    except OSError as e:
        raise WriteFailed(path, e, needed) from e


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent); None if unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def write_failure_line(failure: WriteFailed, needed: int | None = None) -> str:
    """'cannot write PATH: the disk is full (...): about N needed, M free' (sizes only where they help). `needed`:
    a better estimate than the failure's own."""
    needed = failure.needed if needed is None else needed
    if not failure.disk_full:
        return f"cannot write {failure.path}: {failure.error.strerror or failure.error}"
    free = free_bytes(failure.path)
    sizes = []
    if needed is not None:
        sizes.append(f"about {byte_size(needed)} needed")
    if free is not None:
        sizes.append(f"{byte_size(free)} free")
    return f"cannot write {failure.path}: the disk is full ({failure.error.strerror})" + (
        f": {', '.join(sizes)}" if sizes else "")
