"""Writing one split's token stream (train or val) as a sequence of fixed-size shards.

prepare commits as it goes: `take()` closes the open shard and hands over every shard closed since the last
take, which prepare then lists in the manifest. A shard is visible under its final name once closed, but the
dataset counts it only once the manifest lists it, so an interrupted run leaves orphans that the next run
removes, never a dataset that reads wrong. Each shard's sha256 (of its token bytes) and largest token id are
computed while it is written, for the manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptforge.data.manifest import shard_name
from gptforge.data.shards import ShardWriter, open_shard
from gptforge.fsutil import writing

COPY_TOKENS = 1 << 24  # tokens copied at once when a shard is split: bounded memory at any shard size


@dataclass
class WrittenShard:
    file: str
    tokens: int
    max_id: int
    sha256: str

    def entry(self) -> dict:
        return {"file": self.file, "tokens": self.tokens, "max_id": self.max_id, "sha256": self.sha256}

    @classmethod
    def from_entry(cls, entry: dict) -> "WrittenShard":
        return cls(entry["file"], int(entry["tokens"]), int(entry.get("max_id", -1)), entry.get("sha256", ""))


@dataclass
class ShardSequence:
    """Appends tokens to `{split}_NNNNNN.bin` files of at most `shard_tokens` tokens each, from `next_index` on."""

    out: Path
    split: str
    next_index: int
    shard_tokens: int
    vocab_size: int
    shards: list[WrittenShard] = field(default_factory=list)  # closed, not yet taken
    total: int = 0  # tokens written by this sequence
    _writer: ShardWriter | None = None
    _hash: object = None  # hashlib.sha256 of the open shard's token bytes
    _max: int = -1

    def write(self, tokens: np.ndarray) -> None:
        start = 0
        while start < len(tokens):
            if self._writer is None:
                path = self.out / shard_name(self.split, self.next_index)
                with writing(path):
                    self._writer = ShardWriter(path, self.vocab_size)
                self.next_index += 1
                self._hash, self._max = hashlib.sha256(), -1
            room = self.shard_tokens - self._writer.n_tokens
            body = np.ascontiguousarray(tokens[start : start + room], dtype=self._writer.dtype)
            self._hash.update(memoryview(body))
            if len(body):
                self._max = max(self._max, int(body.max()))
            with writing(self._writer.path):
                self._writer.write(body)
            start += len(body)
            self.total += len(body)
            if self._writer.n_tokens >= self.shard_tokens:
                self._close_current()

    def _close_current(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if writer.n_tokens == 0:
            writer.abort()  # never leave an empty shard: readers reject them
            return
        with writing(writer.path):
            writer.close()
        self.shards.append(WrittenShard(writer.path.name, writer.n_tokens, self._max, self._hash.hexdigest()))

    def take(self) -> list[WrittenShard]:
        """Close the open shard and hand over every shard closed since the last take (for the manifest)."""
        self._close_current()
        taken, self.shards = self.shards, []
        return taken

    def abort(self) -> None:
        """Remove what this sequence wrote since the last take (the manifest never saw it)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for shard in self.shards:
            (self.out / shard.file).unlink(missing_ok=True)
        self.shards.clear()


def copy_tokens(tokens: np.ndarray, into: ShardSequence) -> None:
    """Append a (memory-mapped) token array to a sequence a bounded piece at a time."""
    for start in range(0, len(tokens), COPY_TOKENS):
        into.write(np.asarray(tokens[start : start + COPY_TOKENS]))


def split_off_tail(out: Path, shards: list[WrittenShard], n_tokens: int, head: ShardSequence,
                   tail: ShardSequence) -> tuple[list[WrittenShard], list[str]]:
    """Move the last `n_tokens` of the stream `shards` into `tail`; the shard that holds the cut is copied,
    up to the cut, into `head`, so no listed file changes (a crash before the manifest commit loses nothing).

    Implements `--split tail` and the minimum validation size of a part. Returns the train shards that
    remain (kept ones, then the new head shards) and the files that are no longer needed once committed.
    """
    cut = sum(s.tokens for s in shards) - min(n_tokens, sum(s.tokens for s in shards))
    kept, replaced, pos = [], [], 0
    for shard in shards:
        start, pos = pos, pos + shard.tokens
        if pos <= cut:
            kept.append(shard)
            continue
        tokens = open_shard(out / shard.file)
        local_cut = max(cut - start, 0)
        copy_tokens(tokens[:local_cut], head)
        copy_tokens(tokens[local_cut:], tail)
        del tokens
        replaced.append(shard.file)
    return kept + head.take(), replaced
