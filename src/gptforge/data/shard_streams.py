"""Writing one split's token stream (train or val) as a sequence of fixed-size shards.

Used by prepare within a single run: shards become visible under their final names as they fill,
but the dataset only counts them once the manifest lists them, so an interrupted run leaves
orphans that the next run overwrites, never a dataset that reads wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptforge.data.manifest import shard_name
from gptforge.data.shards import ShardWriter, open_shard, write_shard


@dataclass
class WrittenShard:
    file: str
    tokens: int


@dataclass
class ShardSequence:
    """Appends tokens to `{split}_NNNNNN.bin` files of at most `shard_tokens` tokens each."""

    out: Path
    split: str
    first_index: int
    shard_tokens: int
    vocab_size: int
    shards: list[WrittenShard] = field(default_factory=list)
    total: int = 0
    _writer: ShardWriter | None = None

    def write(self, tokens: np.ndarray) -> None:
        start = 0
        while start < len(tokens):
            if self._writer is None:
                name = shard_name(self.split, self.first_index + len(self.shards))
                self._writer = ShardWriter(self.out / name, self.vocab_size)
            room = self.shard_tokens - self._writer.n_tokens
            piece = tokens[start : start + room]
            self._writer.write(piece)
            start += len(piece)
            self.total += len(piece)
            if self._writer.n_tokens >= self.shard_tokens:
                self._close_current()

    def _close_current(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            self.shards.append(WrittenShard(writer.path.name, writer.n_tokens))

    def close(self) -> None:
        if self._writer is not None and self._writer.n_tokens == 0:
            self._writer.abort()  # never leave an empty shard: readers reject them
            self._writer = None
        self._close_current()

    def abort(self) -> None:
        """Remove everything this sequence wrote (the run failed; the manifest never saw these)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for shard in self.shards:
            (self.out / shard.file).unlink(missing_ok=True)
        self.shards.clear()

    def ranges(self) -> list[tuple[int, int, str]]:
        """(start, end, file) of each shard in this run's stream coordinates."""
        spans, pos = [], 0
        for shard in self.shards:
            spans.append((pos, pos + shard.tokens, shard.file))
            pos += shard.tokens
        return spans


def move_tail(train: ShardSequence, val: ShardSequence, n_tokens: int) -> int:
    """Move the last `n_tokens` of the (closed) train sequence onto the end of the (open) val sequence.

    Implements `--split tail` and the minimum validation size for small corpora: the train stream
    keeps its prefix, the val stream gains the tail, in order. Returns the tokens moved.
    """
    n_tokens = min(n_tokens, train.total)
    if n_tokens <= 0:
        return 0
    cut = train.total - n_tokens
    kept: list[WrittenShard] = []
    for start, end, file in train.ranges():
        path = train.out / file
        if end <= cut:
            kept.append(WrittenShard(file, end - start))
            continue
        tokens = open_shard(path)
        local_cut = max(cut - start, 0)
        val.write(np.asarray(tokens[local_cut:]))
        if local_cut > 0:
            head = np.array(tokens[:local_cut])
            del tokens  # release the memmap before the file is replaced
            write_shard(path, head, train.vocab_size)
            kept.append(WrittenShard(file, local_cut))
        else:
            del tokens
            path.unlink()
    train.shards = kept
    train.total = cut
    return n_tokens
