"""The token shard format: atomic writer, validating reader.

A shard is a 1024-byte header of 256 little-endian int32 ([0] magic, [1] version, [2] token count; the
rest zero) followed by the tokens. The (magic, version) pair names the token type, as llm.c's
dev/data/data_common.py writes them:
- 20240520, 1: uint16 tokens (vocab <= 65,536): llm.c's and modded-nanogpt's GPT-2 shards;
- 20240801, 7: uint32 tokens (larger vocabularies): llm.c's "llama-3" shards;
- 20240520, 2: uint32 tokens as gptforge wrote them before it used llm.c's uint32 header (read, never written).
nanoGPT's headerless train.bin / val.bin (raw uint16) are read too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gptforge.errors import UserError
from gptforge.fsutil import fsync_dir

MAGIC = 20240520  # llm.c's GPT-2 (uint16) shards
MAGIC_U32 = 20240801  # llm.c's uint32 ("llama-3") shards
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
UINT16, UINT32, LEGACY_UINT32 = (MAGIC, 1), (MAGIC_U32, 7), (MAGIC, 2)
DTYPES = {UINT16: np.dtype("<u2"), UINT32: np.dtype("<u4"), LEGACY_UINT32: np.dtype("<u4")}
FORMAT_NAMES = {UINT16: "uint16 (llm.c GPT-2 format)", UINT32: "uint32 (llm.c llama-3 format)",
                LEGACY_UINT32: "uint32 (older gptforge format, version 2)"}
NANOGPT_NAMES = ("train.bin", "val.bin")
MAX_TOKENS = 2**31 - 1


def format_for_vocab(vocab_size: int) -> tuple[int, int]:
    """The (magic, version) a new shard gets: uint16 tokens when every id fits, else llm.c's uint32 header."""
    return UINT16 if vocab_size <= 65536 else UINT32


class ShardWriter:
    """Streams tokens into `path` under a temporary name; `close()` makes it appear complete."""

    def __init__(self, path: str | os.PathLike, vocab_size: int):
        self.path = Path(path)
        self.format = format_for_vocab(vocab_size)
        self.dtype = DTYPES[self.format]
        self.tmp_path = self.path.with_name(f".{self.path.name}.tmp")
        self.n_tokens = 0
        self._file = open(self.tmp_path, "wb")
        self._file.write(b"\0" * HEADER_BYTES)  # the real header is written once the count is known

    def write(self, tokens: np.ndarray) -> None:
        if self.n_tokens + len(tokens) > MAX_TOKENS:  # the header counts tokens in an int32
            raise UserError(f"shard {self.path}: more than {MAX_TOKENS:,} tokens do not fit one shard's header")
        self._file.write(memoryview(np.ascontiguousarray(tokens, dtype=self.dtype)))  # no extra bytes copy
        self.n_tokens += len(tokens)

    def close(self) -> Path:
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[0], header[1], header[2] = *self.format, self.n_tokens
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


def read_header(path: Path) -> tuple[tuple[int, int], int] | None:
    """((magic, version), n_tokens) of a headered shard, or None for a headerless nanoGPT file."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) >= 4 and int(np.frombuffer(raw[:4], dtype="<i4")[0]) in (MAGIC, MAGIC_U32):
        if len(raw) < HEADER_BYTES:
            raise UserError(f"shard {path}: truncated header ({len(raw)} of {HEADER_BYTES} bytes)")
        header = np.frombuffer(raw, dtype="<i4")
        return (int(header[0]), int(header[1])), int(header[2])
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
                f"shard {path}: bad magic number (expected {MAGIC} or {MAGIC_U32}); headerless files are read "
                "only as nanoGPT's train.bin / val.bin"
            )
        if size % 2:
            raise UserError(f"shard {path}: a nanoGPT .bin must hold uint16 tokens, but its size ({size}) is odd")
        tokens = np.memmap(path, dtype="<u2", mode="r")
    else:
        fmt, n_tokens = header
        if fmt not in DTYPES:
            known = ", ".join(f"{v} (magic {m})" for m, v in DTYPES)
            raise UserError(f"shard {path}: unknown version {fmt[1]} for magic {fmt[0]} (known: {known})")
        if n_tokens <= 0:
            raise UserError(f"shard {path} is empty: its header says {n_tokens} tokens")
        expected = HEADER_BYTES + n_tokens * DTYPES[fmt].itemsize
        if size != expected:
            raise UserError(
                f"shard {path}: size is {size} bytes but the header's {n_tokens} tokens need {expected} "
                "(truncated or corrupt)"
            )
        tokens = np.memmap(path, dtype=DTYPES[fmt], mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
    if check_ids and vocab_size is not None:
        check_token_ids(path, tokens, vocab_size)
    return tokens


def shard_format(path: str | os.PathLike) -> str:
    """What a shard holds, in words (for `inspect`); the file is not validated here."""
    header = read_header(Path(path))
    if header is None:
        return "uint16 (nanoGPT, no header)"
    return FORMAT_NAMES.get(header[0], f"unknown (magic {header[0][0]}, version {header[0][1]})")


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
