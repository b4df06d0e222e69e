"""prepare under faults: two writers, a full disk, pathological documents, token ids beyond the vocabulary."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from gptforge.data.dataset import open_dataset
from gptforge.data.manifest import load_manifest
from gptforge.data.prepare import prepare
from gptforge.errors import UserError

from helpers import play_texts, tree_digest, write_parquet


def _child(script: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_second_writer_stops_at_once_naming_the_first_ones_pid(tmp_path):
    """Two appends at once used to both report 'dataset version 2' while the manifest kept only one run's sources."""
    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "p1.parquet", play_texts(2, 2000)))], data)
    a_src = write_parquet(tmp_path / "a.parquet", play_texts(4, 2000)[2:])
    b_src = write_parquet(tmp_path / "b.parquet", play_texts(6, 2000)[4:])
    inside, go = tmp_path / "inside", tmp_path / "go"
    # the first writer stops in the middle of writing its shards until the test says go
    first = _child(f"""
        import pathlib, time
        from gptforge.data import shard_streams
        from gptforge.data.prepare import prepare
        real = shard_streams.ShardSequence.write
        def write(self, tokens):
            pathlib.Path({str(inside)!r}).touch()
            while not pathlib.Path({str(go)!r}).exists():
                time.sleep(0.01)
            real(self, tokens)
        shard_streams.ShardSequence.write = write
        prepare([{str(a_src)!r}], {str(data)!r})
    """)
    try:
        deadline = time.time() + 60
        while not inside.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.01)
        assert inside.exists(), first.stderr.read() if first.poll() is not None else "first writer never started"
        second = subprocess.run([sys.executable, "-m", "gptforge", "prepare", str(b_src), "--out", str(data)],
                                capture_output=True, text=True, timeout=120)
    finally:
        go.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"gptforge prepare: error: {data} is being written by gptforge prepare (pid {first.pid}); "
        "one writer at a time: wait for it to finish, or stop it"
    ]
    m = load_manifest(data)
    assert [s["path"] for s in m["sources"]] == [str(tmp_path / "p1.parquet"), str(a_src)]
    assert [v["version"] for v in m["versions"]] == [1, 2]
    # the lock died with its holder: the second writer now gets in
    prepare([str(b_src)], data)
    assert [v["version"] for v in load_manifest(data)["versions"]] == [1, 2, 3]


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    data = tmp_path / "data"
    src = write_parquet(tmp_path / "a.parquet", play_texts(2, 2000))
    holder = _child(f"""
        import time
        from gptforge.fsutil import exclusive_lock
        import pathlib
        pathlib.Path({str(data)!r}).mkdir()
        with exclusive_lock({str(data)!r}, "gptforge prepare"):
            print("locked", flush=True)
            time.sleep(600)
    """)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=rf"is being written by gptforge prepare \(pid {holder.pid}\)"):
        prepare([str(src)], data)
    holder.kill()
    holder.wait()
    prepare([str(src)], data)  # kill -9 released the lock with the process
    assert load_manifest(data)["totals"]["documents"] == 2


def test_readers_do_not_wait_for_a_writer(tmp_path):
    from gptforge.fsutil import exclusive_lock

    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "a.parquet", play_texts(2, 2000)))], data)
    with exclusive_lock(data, "gptforge prepare"):
        assert open_dataset(data).train_tokens > 0


def _fill_disk_after(monkeypatch, n_writes: int):
    """Make the n-th shard write fail as a full disk does."""
    from gptforge.data import shards

    real, calls = shards.ShardWriter.write, [0]

    def write(self, tokens):
        calls[0] += 1
        if calls[0] >= n_writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, tokens)

    monkeypatch.setattr(shards.ShardWriter, "write", write)


def test_disk_full_is_one_line_with_the_path_and_sizes_and_keeps_earlier_data(tmp_path, monkeypatch):
    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "p1.parquet", play_texts(2, 3000)))], data)
    before = tree_digest(data)
    more = [write_parquet(tmp_path / f"p{i}.parquet", play_texts(6, 3000)[i : i + 2]) for i in (2, 4)]
    _fill_disk_after(monkeypatch, 3)
    with pytest.raises(UserError) as caught:
        prepare([str(p) for p in more], data, commit_tokens=1)
    message = str(caught.value)
    assert "\n" not in message
    assert f"cannot write {data}/" in message and "the disk is full (No space left on device)" in message
    assert "needed" in message and "free" in message
    assert "earlier data is intact" in message and "rerun the same command" in message
    # nothing half-written is left, the manifest still describes valid shards
    assert [p.name for p in data.iterdir() if p.name.endswith(".tmp")] == []
    assert tree_digest(data).keys() >= before.keys()
    from gptforge.commands.inspection import verify_dataset

    assert verify_dataset(data, load_manifest(data)) == []
    monkeypatch.undo()
    prepare([str(p) for p in more], data, commit_tokens=1)
    assert load_manifest(data)["totals"]["documents"] == 6


def test_disk_full_on_a_fresh_dataset_removes_what_it_made(tmp_path, monkeypatch):
    _fill_disk_after(monkeypatch, 1)
    with pytest.raises(UserError, match="the disk is full"):
        prepare([str(write_parquet(tmp_path / "a.parquet", play_texts(2, 3000)))], tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_a_long_whitespace_run_used_to_crash_the_tokenizer(tmp_path):
    """tiktoken's regex gives up ('Max stack size exceeded for backtracking') on ~1M spaces in one piece."""
    doc = "Before the gap." + " " * 1_200_000 + "After the gap.\n" + play_texts(1, 3000)[0]
    write_parquet(tmp_path / "a.parquet", [doc, "a second document"])
    m = prepare([str(tmp_path / "a.parquet")], tmp_path / "data", val_fraction=0.0)
    assert m["totals"]["documents"] == 2
    assert m["sources"][0]["cut_long_runs"] == 2  # the run is cut where no exact cut exists, and counted


# The child's own peak: VmHWM belongs to the memory of the program it runs. (ru_maxrss would not do: it keeps
# the high-water mark of the process before exec, i.e. of the forked pytest process.)
PEAK_MB = ("peak_mb = lambda: int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
           " // 1024")
needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc/self/status (Linux)")


@needs_proc
@pytest.mark.slow
def test_a_30_mb_single_word_document_stays_in_bounded_memory(tmp_path):
    """A 30 MB run without spaces took 1.6 GB of RAM in one tiktoken call; in pieces it stays small."""
    (tmp_path / "one.txt").write_text("x" * 30_000_000)
    script = f"""
        from gptforge.data.prepare import prepare
        prepare([{str(tmp_path / "one.txt")!r}], {str(tmp_path / "data")!r}, val_fraction=0.0, workers=2)
        {PEAK_MB}
        print(peak_mb())
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stdout.strip().splitlines()[-1])
    assert peak_mb < 600, f"peak RSS {peak_mb} MB"


@needs_proc
def test_pieces_of_a_huge_word_stay_small_and_the_memory_is_bounded(tmp_path):
    """The same as the slow test above at 3 MB, measured as the peak RSS of a child process."""
    (tmp_path / "one.txt").write_text("x" * 3_000_000)
    script = f"""
        {PEAK_MB}
        from gptforge.data.tokenizers import gpt2_tokenizer
        gpt2_tokenizer()
        base = peak_mb()
        from gptforge.data.prepare import prepare
        prepare([{str(tmp_path / "one.txt")!r}], {str(tmp_path / "data")!r}, val_fraction=0.0, workers=1)
        print(base, peak_mb())
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    base, peak = map(int, done.stdout.splitlines()[-1].split())
    assert peak - base < 80, f"prepare of a 3 MB word grew the RSS by {peak - base} MB"  # one call: ~150 MB


def _nanogpt_folder(path, train_ids, val_ids, vocab):
    path.mkdir()
    np.asarray(train_ids, dtype=np.uint16).tofile(path / "train.bin")
    np.asarray(val_ids, dtype=np.uint16).tofile(path / "val.bin")
    chars = [chr(ord("a") + i) for i in range(vocab)]
    meta = {"vocab_size": vocab, "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    (path / "meta.pkl").write_bytes(pickle.dumps(meta))
    return path


def test_nanogpt_folder_with_ids_beyond_its_vocabulary_is_refused_when_opened(tmp_path):
    folder = _nanogpt_folder(tmp_path / "nano", list(range(20)) * 50 + [25], list(range(20)) * 5, vocab=20)
    with pytest.raises(UserError, match=r"nano/train.bin: token id 25 at position 1000 is not below the vocab"):
        open_dataset(folder)
    good = _nanogpt_folder(tmp_path / "good", list(range(20)) * 50, list(range(20)) * 5, vocab=20)
    assert open_dataset(good).train_tokens == 1000
    # the scan's result is kept by size and modification time: a changed file is scanned again
    data = np.fromfile(good / "train.bin", dtype=np.uint16)
    data[7] = 31
    data.tofile(good / "train.bin")
    os.utime(good / "train.bin", ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(UserError, match=r"good/train.bin: token id 31 at position 7"):
        open_dataset(good)


def test_a_tampered_shard_is_named_when_read_not_an_index_error_in_training(tmp_path):
    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "a.parquet", play_texts(3, 3000)))], data, val_fraction=0.0)
    shard = data / "train_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[1024 + 2 * 100 : 1024 + 2 * 101] = np.array([60000], dtype="<u2").tobytes()  # id 60000 >= 50257
    shard.write_bytes(bytes(raw))
    ds = open_dataset(data)
    ds.train.read(0, 50)  # before the bad token: fine
    with pytest.raises(UserError, match=r"train_000000.bin: token id 60000 at position 100 is not below the vocab"):
        ds.train.read(64, 64)


def test_a_manifest_listing_ids_beyond_the_vocabulary_is_refused_when_opened(tmp_path):
    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "a.parquet", play_texts(3, 3000)))], data, val_fraction=0.0)
    from gptforge.data.manifest import save_manifest

    m = load_manifest(data)
    m["tokenizer"]["vocab_size"] = 1000  # as if the shards came from another tokenizer
    save_manifest(data, m)
    with pytest.raises(UserError, match=r"train_000000.bin holds token ids up to \d+, not below the vocab size 1000"):
        open_dataset(data)


def test_inspect_finds_a_shard_changed_after_prepare_by_its_sha256(tmp_path, capsys):
    from gptforge.commands.inspection import inspect_command

    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "a.parquet", play_texts(3, 3000)))], data, val_fraction=0.0)
    shard = data / "train_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[1026:1028], raw[1028:1030] = raw[1028:1030], raw[1026:1028]  # two tokens swapped: every id still valid
    shard.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="1 problem"):
        inspect_command(str(data))
    assert "train_000000.bin: its tokens' sha256 differs from the manifest's" in capsys.readouterr().out
