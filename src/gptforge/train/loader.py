"""Train and val batches from token shards, with an exact, resumable, world-size-independent order.

The train stream (all train shards, concatenated in manifest order) is cut into blocks of
block_size + 1 tokens at a stride of block_size, so every token is an input once per epoch. Each epoch
visits the blocks in a permutation seeded by (seed, epoch); a batch that runs past the end of an epoch
continues into the next one, so epochs are counted exactly. The GLOBAL sequence of micro-batches is fixed
by the seed alone: with N processes, rank r takes the global micro-batches m with m % N == r, so a
checkpoint written by N processes resumes on M from the same global position. Blocks are taken from the
order one after another whatever the size of the micro-batches, so an optimizer step of S sequences
trains on the same S blocks whether they come as 1 x S, 2 x S/2 or S x 1 micro-batches, on any number of
processes (batch_size="auto" and the out-of-memory retry of train/fit.py rely on this).

If the dataset grew since a checkpoint (new shards appended by `gptforge prepare`), the blocks not yet
seen in the current epoch and the new blocks are shuffled together for the rest of that epoch; later
epochs cover the whole larger dataset.
"""

from __future__ import annotations

import numpy as np
import torch

from gptforge.data.dataset import Dataset, TokenStream
from gptforge.errors import UserError


def _n_blocks(n_tokens: int, block_size: int) -> int:
    return max(0, (n_tokens - 1) // block_size)


class TrainLoader:
    """Batches of `batch_size` blocks; `state_dict()` after a batch resumes exactly after that batch."""

    def __init__(
        self, dataset: Dataset, batch_size: int, block_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.dataset, self.batch_size, self.block_size, self.seed = dataset, batch_size, block_size, seed
        self.rank, self.world_size = rank, world_size
        self.n_blocks = _n_blocks(dataset.train_tokens, block_size)
        if self.n_blocks == 0:
            raise UserError(
                f"{dataset.path}: the train split has {dataset.train_tokens} tokens, fewer than block_size + 1 "
                f"({block_size + 1}); lower block_size or add data"
            )
        self.epoch = 0
        self.pos = 0  # blocks of the current epoch's order already used
        self.micro_batches = 0  # global micro-batches consumed, by all ranks together
        self.epoch_start_blocks = self.n_blocks  # blocks in the dataset when the current epoch began
        self.growth: list[list[int]] = []  # [n_blocks_after, pos_when_grown] within the current epoch
        self.grew: dict | None = None  # set by load_state_dict when the dataset is larger than the checkpoint's
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        n0 = self.epoch_start_blocks
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n0)
        prev = n0
        for k, (n_new, pos) in enumerate(self.growth):
            rest = np.concatenate([order[pos:], np.arange(prev, n_new)])
            order = np.concatenate(
                [order[:pos], np.random.default_rng([self.seed, self.epoch, k + 1]).permutation(rest)]
            )
            prev = n_new
        return order

    @property
    def epoch_float(self) -> float:
        return self.epoch + self.pos / len(self._order)

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.batch_size * self.block_size

    def _take_blocks(self, count: int) -> np.ndarray:
        taken = []
        while count:
            if self.pos == len(self._order):  # epoch boundary: the next epoch covers the whole dataset
                self.epoch, self.pos, self.growth = self.epoch + 1, 0, []
                self.epoch_start_blocks = self.n_blocks
                self._order = self._epoch_order()
            piece = self._order[self.pos : self.pos + count]
            taken.append(piece)
            self.pos += len(piece)
            count -= len(piece)
        return np.concatenate(taken)

    def next_batch(self, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next micro-batch: (x, y) int64 CPU tensors of shape [size (batch_size), block_size]."""
        size = size or self.batch_size
        mine = None
        for r in range(self.world_size):  # advance past the other ranks' micro-batches
            blocks = self._take_blocks(size)
            if r == self.rank:
                mine = blocks
        self.micro_batches += self.world_size
        T = self.block_size
        data = np.stack([self.dataset.train.read(int(b) * T, T + 1) for b in mine])
        data = torch.from_numpy(data)
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step_batches(self, count: int, size: int | None = None) -> "StepBatches":
        """This rank's next `count` micro-batches of `size` sequences, each read when iterated."""
        return StepBatches(self, count, size or self.batch_size)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch, "pos": self.pos, "micro_batches": self.micro_batches, "seed": self.seed,
            "batch_size": self.batch_size, "block_size": self.block_size, "growth": [list(g) for g in self.growth],
            "epoch_start_blocks": self.epoch_start_blocks, "n_blocks": self.n_blocks,
            "train_tokens": self.dataset.train_tokens, "version": self.dataset.version,
            "train_shards": list(self.dataset.train.names),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["block_size"] != self.block_size:
            raise UserError(
                f"the checkpoint's loader used block_size {state['block_size']}, this run {self.block_size}"
            )
        problem = shards_mismatch(state, self.dataset)
        if problem:
            raise UserError(f"{self.dataset.path}: {problem}; resume with the original --data")
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self.micro_batches = state["micro_batches"]
        self.growth = [list(g) for g in state["growth"]]
        self.epoch_start_blocks = state["epoch_start_blocks"]
        self.grew = None
        if self.n_blocks > state["n_blocks"]:
            self.growth.append([self.n_blocks, self.pos])
            self.grew = {"old_train_tokens": state["train_tokens"], "new_train_tokens": self.dataset.train_tokens,
                         "version": self.dataset.version}
        self._order = self._epoch_order()


def shards_mismatch(state: dict, dataset: Dataset) -> str | None:
    """Why a loader state cannot continue on `dataset` by its shard names and sizes (what checkpoints without the
    dataset's content identity go by), or None."""
    old_shards, new_shards = list(state["train_shards"]), list(dataset.train.names)
    if new_shards[: len(old_shards)] == old_shards and state["train_tokens"] <= dataset.train_tokens:
        return None
    return (f"the train data is not the one the checkpoint was trained on or an extension of it (checkpoint: "
            f"{state['train_tokens']} tokens in {len(old_shards)} shards, now {dataset.train_tokens} in "
            f"{len(new_shards)})")


class StepBatches:
    """The micro-batches of one optimizer step, read from the loader one at a time as they are iterated,
    so the training step reads the next while the device computes the current (train/step.py)."""

    def __init__(self, loader: TrainLoader, count: int, size: int):
        self.loader, self.count, self.size = loader, count, size

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for _ in range(self.count):
            yield self.loader.next_batch(self.size)


class ValBatches:
    """The same batches at every eval: blocks spread evenly over the val split (or the train split, for
    the train loss the loop reports, without disturbing the training order; or `stream`, one dataset part's
    val tokens)."""

    def __init__(self, dataset: Dataset, batch_size: int, block_size: int, n_batches: int | None,
                 rank: int = 0, world_size: int = 1, split: str = "val", stream: TokenStream | None = None):
        self.stream = stream if stream is not None else dataset.val if split == "val" else dataset.train
        n_blocks = _n_blocks(len(self.stream), block_size)
        if n_blocks == 0:
            raise UserError(
                f"{dataset.path}: the {split} split has {len(self.stream)} tokens, fewer than block_size + 1 "
                f"({block_size + 1}); use a larger --val-fraction in prepare or a smaller block_size"
            )
        wanted = n_blocks if n_batches is None else min(n_blocks, n_batches * batch_size)
        blocks = np.unique(np.linspace(0, n_blocks - 1, wanted).round().astype(np.int64))
        self.batches = [blocks[i : i + batch_size] for i in range(0, len(blocks), batch_size)]
        self.dataset, self.block_size = dataset, block_size
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(self.batches)

    def _batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        data = torch.from_numpy(np.stack([self.stream.read(int(b) * T, T + 1) for b in self.batches[i]]))
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def __iter__(self):
        for i in range(self.rank, len(self.batches), self.world_size):
            yield self._batch(i)

    def lockstep(self):
        """(x, y, counted) with the same number of items on every rank: this rank's batches, then repeats
        of batch 0 that must not be counted. Sharded models (FSDP) gather weights inside every forward,
        so all ranks must run the same number of forwards or the last ones wait forever."""
        rounds = -(-len(self.batches) // self.world_size)
        for k in range(rounds):
            i = self.rank + k * self.world_size
            if i < len(self.batches):
                yield (*self._batch(i), True)
            else:
                yield (*self._batch(0), False)
