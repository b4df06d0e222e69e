"""The token shard format (llm.c / modded-nanogpt compatible): atomic writer, validating reader.

A shard is a 1024-byte header of 256 little-endian int32 ([0] magic 20240520, [1] version,
[2] token count; version 1 = uint16 tokens, version 2 = uint32 tokens) followed by the tokens.
nanoGPT's headerless train.bin / val.bin (raw uint16) are read too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gptforge.errors import UserError
from gptforge.fsutil import fsync_dir

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
NANOGPT_NAMES = ("train.bin", "val.bin")


def version_for_vocab(vocab_size: int) -> int:
    return 1 if vocab_size <= 65536 else 2


class ShardWriter:
    """Streams tokens into `path` under a temporary name; `close()` makes it appear complete."""

    def __init__(self, path: str | os.PathLike, vocab_size: int):
        self.path = Path(path)
        self.version = version_for_vocab(vocab_size)
        self.dtype = DTYPES[self.version]
        self.tmp_path = self.path.with_name(f".{self.path.name}.tmp")
        self.n_tokens = 0
        self._file = open(self.tmp_path, "wb")
        self._file.write(b"\0" * HEADER_BYTES)  # the real header is written once the count is known

    def write(self, tokens: np.ndarray) -> None:
        self._file.write(memoryview(np.ascontiguousarray(tokens, dtype=self.dtype)))  # no extra bytes copy
        self.n_tokens += len(tokens)

    def close(self) -> Path:
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[0], header[1], header[2] = MAGIC, self.version, self.n_tokens
        self._file.seek(0)
        self._file.write(header.tobytes())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.tmp_path.unlink(missing_ok=True)


def write_shard(path: str | os.PathLike, tokens: np.ndarray, vocab_size: int) -> Path:
    writer = ShardWriter(path, vocab_size)
    try:
        writer.write(tokens)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def read_header(path: Path) -> tuple[int, int] | None:
    """(version, n_tokens) of a headered shard, or None for a headerless nanoGPT file."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) >= 4 and int(np.frombuffer(raw[:4], dtype="<i4")[0]) == MAGIC:
        if len(raw) < HEADER_BYTES:
            raise UserError(f"shard {path}: truncated header ({len(raw)} of {HEADER_BYTES} bytes)")
        header = np.frombuffer(raw, dtype="<i4")
        return int(header[1]), int(header[2])
    return None


def open_shard(path: str | os.PathLike, vocab_size: int | None = None, check_ids: bool = False) -> np.ndarray:
    """Memory-map a shard's tokens after checking its header and size; optionally every token id."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"shard {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"shard {path} is empty (0 bytes)")
    header = read_header(path)
    if header is None:
        if path.name not in NANOGPT_NAMES:
            raise UserError(
                f"shard {path}: bad magic number (expected {MAGIC}); headerless files are read only "
                "as nanoGPT's train.bin / val.bin"
            )
        if size % 2:
            raise UserError(f"shard {path}: a nanoGPT .bin must hold uint16 tokens, but its size ({size}) is odd")
        tokens = np.memmap(path, dtype="<u2", mode="r")
    else:
        version, n_tokens = header
        if version not in DTYPES:
            raise UserError(f"shard {path}: unknown version {version} (expected 1 = uint16 or 2 = uint32)")
        if n_tokens <= 0:
            raise UserError(f"shard {path} is empty: its header says {n_tokens} tokens")
        expected = HEADER_BYTES + n_tokens * DTYPES[version].itemsize
        if size != expected:
            raise UserError(
                f"shard {path}: size is {size} bytes but the header's {n_tokens} tokens need {expected} "
                "(truncated or corrupt)"
            )
        tokens = np.memmap(path, dtype=DTYPES[version], mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
    if check_ids and vocab_size is not None:
        check_token_ids(path, tokens, vocab_size)
    return tokens


def check_token_ids(path: Path, tokens: np.ndarray, vocab_size: int, chunk: int = 1 << 24, base: int = 0) -> None:
    """Raise naming the first id >= vocab_size; `base` is where `tokens` starts among the file's tokens."""
    for start in range(0, len(tokens), chunk):
        top = int(tokens[start : start + chunk].max())
        if top >= vocab_size:
            where = start + int(np.argmax(tokens[start : start + chunk] >= vocab_size))
            raise UserError(
                f"shard {path}: token id {int(tokens[where])} at position {base + where} is not below the vocab size "
                f"{vocab_size}"
            )
