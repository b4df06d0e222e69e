"""Compressed sources: .gz, .bz2 and .zst files read as a stream of their decompressed bytes.

The compression is named by the file's last suffix; what is inside by the name before it
(x.jsonl.zst) or, when that says nothing (x.bz2), by the first decompressed bytes. Corrupt or cut
data is one UserError naming the file and how far it got: gzip and bzip2 say so themselves; a zstd
frame cut short decompresses to nothing without complaint, so frames are followed here.
"""

from __future__ import annotations

import bz2
import gzip
import io
import zlib
from pathlib import Path
from typing import BinaryIO

from gptforge.errors import UserError

COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2", ".zst": "zstd", ".zstd": "zstd"}
READ_BYTES = 1 << 20


def compression_of(path: Path) -> str | None:
    return COMPRESSIONS.get(path.suffix.lower())


def inner_name(path: Path) -> str:
    """The file's name without its compression suffix, in lower case: 'a.jsonl.gz' -> 'a.jsonl'."""
    name = path.name.lower()
    return name[: -len(path.suffix)] if compression_of(path) else name


def open_stream(path: Path) -> BinaryIO:
    """The file's bytes, decompressed as its name says (a plain file as it is)."""
    kind = compression_of(path)
    raw = open(path, "rb")
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    if kind == "zstd":
        return io.BufferedReader(_ZstdFrames(raw), buffer_size=READ_BYTES)
    return raw


def head(path: Path, size: int = 1 << 16) -> bytes:
    """The first `size` decompressed bytes (fewer if the file is shorter); a UserError if they cannot be read."""
    with open_stream(path) as f:
        try:
            return f.read(size)
        except DECOMPRESSION_ERRORS as e:
            raise damaged(path, e, 0) from None


def damaged(path: Path, error: BaseException, done: int) -> UserError:
    """The one-line error for data that stops decompressing after `done` bytes."""
    kind = compression_of(path) or "file"
    where = f" after {done:,} bytes of text" if done else ""
    if isinstance(error, EOFError):
        what = f"the {kind} data is cut short{where} (the file is incomplete)"
    else:
        what = f"the {kind} data is corrupt{where} ({error})" if compression_of(path) else f"cannot be read ({error})"
    return UserError(f"source {path}: {what}; nothing from it was added")


class _ZstdFrames(io.RawIOBase):
    """Decompresses zstd frames back to back; a frame cut short is an EOFError, as gzip and bz2 raise.

    Input goes in by FEED_BYTES (zstd expands a block of zeros 32,000-fold: this bounds the memory).
    """

    FEED_BYTES = 4096

    def __init__(self, raw: BinaryIO):
        import zstandard

        self._new = zstandard.ZstdDecompressor().decompressobj
        self._raw, self._frame, self._in_frame = raw, self._new(), False
        self._input, self._fed = memoryview(b""), 0  # compressed bytes read, and how many were decompressed
        self._out, self._taken = b"", 0  # decompressed bytes, and how many were handed out

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._taken == len(self._out):
            if self._fed == len(self._input):
                self._input, self._fed = memoryview(self._raw.read(READ_BYTES)), 0
                if not self._input:
                    if self._in_frame:
                        raise EOFError("zstd frame cut short")
                    return 0
            piece = self._input[self._fed:self._fed + self.FEED_BYTES]
            self._fed += len(piece)
            self._out, self._taken = self._decompress(bytes(piece)), 0
        n = min(len(buffer), len(self._out) - self._taken)
        buffer[:n] = self._out[self._taken:self._taken + n]
        self._taken += n
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self._frame.decompress(data))
            self._in_frame = True
            if not self._frame.eof:
                break
            data, self._frame, self._in_frame = self._frame.unused_data, self._new(), False
        return b"".join(out)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _zstd_error() -> type:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a dependency
        return OSError
    return zstandard.ZstdError


DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, _zstd_error())
