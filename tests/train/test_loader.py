"""Loader: exact resume, epochs counted exactly, world-size-independent order, dataset growth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptforge.data.dataset import open_dataset
from gptforge.data.manifest import empty_manifest, load_manifest, save_manifest, shard_name
from gptforge.data.shards import write_shard
from gptforge.errors import UserError
from gptforge.train.loader import TrainLoader, ValBatches

T = 16  # block size used throughout


def make_dataset(directory, train_sizes=(801,), val_size=200, vocab=65000):
    """A DATA_DIR whose train token at stream position p is p % vocab, so x[:, 0] names the block."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = empty_manifest({"name": "test", "kind": "test", "vocab_size": vocab, "eot_id": 0, "hash": "x"},
                              {"rule": "tail", "val_fraction": 0.1}, 10**6)
    start = 0
    for i, n in enumerate(train_sizes):
        write_shard(directory / shard_name("train", i), (np.arange(start, start + n) % vocab).astype(np.uint16), vocab)
        manifest["shards"]["train"].append({"file": shard_name("train", i), "tokens": n})
        start += n
    write_shard(directory / shard_name("val", 0), (np.arange(val_size) % vocab).astype(np.uint16), vocab)
    manifest["shards"]["val"].append({"file": shard_name("val", 0), "tokens": val_size})
    manifest["versions"].append({"version": 1, "train_tokens": start, "val_tokens": val_size})
    save_manifest(directory, manifest)
    return directory


def grow(directory, n, vocab=65000):
    manifest = load_manifest(directory)
    start = sum(s["tokens"] for s in manifest["shards"]["train"])
    i = len(manifest["shards"]["train"])
    write_shard(directory / shard_name("train", i), (np.arange(start, start + n) % vocab).astype(np.uint16), vocab)
    manifest["shards"]["train"].append({"file": shard_name("train", i), "tokens": n})
    manifest["versions"].append({"version": len(manifest["versions"]) + 1, "train_tokens": start + n})
    save_manifest(directory, manifest)


def blocks_of(x: torch.Tensor) -> list[int]:
    return [int(v) // T for v in x[:, 0]]


def test_batches_are_shifted_blocks_across_shard_boundaries(tmp_path):
    ds = open_dataset(make_dataset(tmp_path / "d", train_sizes=(100, 250, 451)))  # 801 tokens, 3 shards
    assert ds.train_tokens == 801 and ds.val_tokens == 200 and ds.version == 1 and ds.vocab_size == 65000
    loader = TrainLoader(ds, batch_size=5, block_size=T, seed=1)
    x, y = loader.next_batch()
    assert x.shape == (5, T) and x.dtype == torch.int64
    for row_x, row_y in zip(x, y):
        start = int(row_x[0])
        assert start % T == 0
        assert row_x.tolist() == list(range(start, start + T))
        assert row_y.tolist() == list(range(start + 1, start + T + 1))


def test_every_block_once_per_epoch_and_epochs_counted_exactly(tmp_path):
    ds = open_dataset(make_dataset(tmp_path / "d"))  # (801 - 1) // 16 = 50 blocks
    loader = TrainLoader(ds, batch_size=5, block_size=T, seed=3)
    assert loader.n_blocks == 50
    seen = []
    for _ in range(10):
        seen += blocks_of(loader.next_batch()[0])
    assert sorted(seen) == list(range(50))
    assert loader.epoch_float == 1.0
    # a batch straddling the epoch boundary: 50 = 7 * 7 + 1, the 8th batch takes 1 old + 6 new-epoch blocks
    loader = TrainLoader(ds, batch_size=7, block_size=T, seed=3)
    first_epoch = [b for _ in range(7) for b in blocks_of(loader.next_batch()[0])]
    straddle = blocks_of(loader.next_batch()[0])
    assert sorted(first_epoch + straddle[:1]) == list(range(50))
    assert loader.epoch == 1 and loader.epoch_float == pytest.approx(1 + 6 / 50)
    second_order = np.random.default_rng([3, 1]).permutation(50)
    assert straddle[1:] == second_order[:6].tolist()  # the next epoch is a fresh seeded permutation


@pytest.mark.parametrize("batches_before", [3, 10, 14])  # mid-epoch, exactly at the boundary, after it
def test_state_dict_resumes_exactly(tmp_path, batches_before):
    ds = open_dataset(make_dataset(tmp_path / "d"))
    a = TrainLoader(ds, batch_size=5, block_size=T, seed=11)
    for _ in range(batches_before):
        a.next_batch()
    state = a.state_dict()
    b = TrainLoader(open_dataset(tmp_path / "d"), batch_size=5, block_size=T, seed=999)  # seed comes from the state
    b.load_state_dict(state)
    assert b.grew is None
    for _ in range(12):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.epoch_float == b.epoch_float


def test_global_order_does_not_depend_on_world_size(tmp_path):
    ds = open_dataset(make_dataset(tmp_path / "d"))
    single = TrainLoader(ds, batch_size=4, block_size=T, seed=5)
    global_batches = [single.next_batch()[0] for _ in range(8)]
    ranks = [TrainLoader(ds, batch_size=4, block_size=T, seed=5, rank=r, world_size=2) for r in range(2)]
    for m in range(0, 8, 2):
        assert torch.equal(ranks[0].next_batch()[0], global_batches[m])
        assert torch.equal(ranks[1].next_batch()[0], global_batches[m + 1])
    # a checkpoint written at world size 2 resumes in one process at the same global position
    resumed = TrainLoader(ds, batch_size=4, block_size=T, seed=5)
    resumed.load_state_dict(ranks[0].state_dict())
    assert resumed.micro_batches == 8
    for _ in range(4):
        assert torch.equal(resumed.next_batch()[0], single.next_batch()[0])


def test_grown_dataset_is_taken_in_and_every_block_still_seen_once(tmp_path):
    d = make_dataset(tmp_path / "d")  # 50 blocks
    a = TrainLoader(open_dataset(d), batch_size=5, block_size=T, seed=2)
    seen = [b for _ in range(4) for b in blocks_of(a.next_batch()[0])]  # 20 of 50 blocks
    state = a.state_dict()
    grow(d, 320)  # 1121 tokens -> 70 blocks
    ds = open_dataset(d)
    assert ds.version == 2 and ds.train_tokens == 1121
    b = TrainLoader(ds, batch_size=5, block_size=T, seed=2)
    b.load_state_dict(state)
    assert b.grew == {"old_train_tokens": 801, "new_train_tokens": 1121, "version": 2}
    rest = [blk for _ in range(10) for blk in blocks_of(b.next_batch()[0])]  # 50 remaining blocks of epoch 0
    assert sorted(seen + rest) == list(range(70))
    assert b.epoch_float == 1.0
    # the growth point is part of the state: resuming again mid-way gives the same continuation
    c = TrainLoader(ds, batch_size=5, block_size=T, seed=2)
    c.load_state_dict(b.state_dict())
    assert c.grew is None
    for _ in range(5):
        assert torch.equal(b.next_batch()[0], c.next_batch()[0])


def test_different_or_shrunk_data_is_refused(tmp_path):
    big = open_dataset(make_dataset(tmp_path / "big", train_sizes=(801,)))
    small = open_dataset(make_dataset(tmp_path / "small", train_sizes=(401,)))
    a = TrainLoader(big, batch_size=5, block_size=T, seed=1)
    a.next_batch()
    b = TrainLoader(small, batch_size=5, block_size=T, seed=1)
    with pytest.raises(UserError, match="not the one the checkpoint was trained on"):
        b.load_state_dict(a.state_dict())
    c = TrainLoader(big, batch_size=5, block_size=8, seed=1)
    with pytest.raises(UserError, match="block_size 16"):
        c.load_state_dict(a.state_dict())


def test_val_batches_are_fixed_and_spread(tmp_path):
    ds = open_dataset(make_dataset(tmp_path / "d", val_size=401))  # 25 val blocks
    val = ValBatches(ds, batch_size=4, block_size=T, n_batches=3)
    first = [x.clone() for x, _ in val]
    second = [x.clone() for x, _ in val]
    assert len(first) == 3 and all(torch.equal(p, q) for p, q in zip(first, second))
    starts = sorted(int(v) for x in first for v in x[:, 0])
    assert starts[0] == 0 and starts[-1] == 24 * T  # spread over the whole split, not its first blocks
    everything = ValBatches(ds, batch_size=4, block_size=T, n_batches=None)
    assert sum(len(x) for x, _ in everything) == 25 and len(everything) == 7


def test_val_batches_split_by_rank_in_lockstep(tmp_path):
    """5 batches on 2 ranks: 3 and 2 of them, each once; rank 1 runs one uncounted extra so both run 3
    forwards (a sharded model gathers weights in every forward, so the counts must match)."""
    ds = open_dataset(make_dataset(tmp_path / "d", val_size=401))
    whole = [x for x, _ in ValBatches(ds, batch_size=4, block_size=T, n_batches=5)]
    ranks = [list(ValBatches(ds, batch_size=4, block_size=T, n_batches=5, rank=r, world_size=2).lockstep())
             for r in (0, 1)]
    assert [len(r) for r in ranks] == [3, 3]
    assert [c for *_, c in ranks[0]] == [True, True, True] and [c for *_, c in ranks[1]] == [True, True, False]
    counted = {0: [0, 2, 4], 1: [1, 3]}
    for r in (0, 1):
        got = [x for x, _, c in ranks[r] if c]
        assert all(torch.equal(x, whole[i]) for x, i in zip(got, counted[r]))
    assert torch.equal(ranks[1][2][0], whole[0])  # the filler is a real batch, never counted
    alone = list(ValBatches(ds, batch_size=4, block_size=T, n_batches=5).lockstep())
    assert len(alone) == 5 and all(c for *_, c in alone)


def test_too_small_splits_are_clear_errors(tmp_path):
    ds = open_dataset(make_dataset(tmp_path / "d", train_sizes=(10,), val_size=10))
    with pytest.raises(UserError, match="train split has 10 tokens, fewer than block_size"):
        TrainLoader(ds, batch_size=2, block_size=T, seed=0)
    with pytest.raises(UserError, match="val split has 10 tokens"):
        ValBatches(ds, batch_size=2, block_size=T, n_batches=1)


def test_open_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a manifest.json"):
        open_dataset(tmp_path / "empty")
    d = make_dataset(tmp_path / "d")
    manifest = load_manifest(d)
    manifest["shards"]["train"][0]["tokens"] = 5
    save_manifest(d, manifest)
    with pytest.raises(UserError, match="train_000000.bin holds 801 tokens but .* lists 5"):
        open_dataset(d)


def test_nanogpt_folder_reads_headerless_bins(tmp_path):
    d = tmp_path / "nano"
    d.mkdir()
    np.arange(1000, dtype=np.uint16).tofile(d / "train.bin")
    np.arange(300, dtype=np.uint16).tofile(d / "val.bin")
    ds = open_dataset(d)
    assert (ds.kind, ds.vocab_size, ds.eot_id, ds.train_tokens, ds.val_tokens) == ("nanogpt", 50257, 50256, 1000, 300)
    x, y = TrainLoader(ds, batch_size=2, block_size=T, seed=0).next_batch()
    assert torch.equal(y[:, :-1], x[:, 1:])
