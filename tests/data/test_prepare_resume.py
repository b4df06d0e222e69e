"""An interrupted prepare keeps what it committed, and its rerun gives the dataset an uninterrupted run gives.

Each case prepares the same real text twice: once without interruption (the reference), once killed at some
point (-9 or Ctrl-C: in the middle of a file, between commits, while the part's val share is being settled,
after the final manifest but before the old files are removed) and then rerun with the same command. The
streams, shards (names, sizes, sha256), versions and per-source records must be the reference's.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gptforge.commands.inspection import verify_dataset
from gptforge.data.dataset import open_dataset
from gptforge.data.manifest import listed_shards, load_manifest
from gptforge.data.prepare import prepare
from gptforge.errors import UserError
from gptforge.fsutil import LOCK_FILE

from helpers import play_texts, sigint_default, tree_digest, write_parquet


def stream(data_dir, split) -> list[int]:
    m = load_manifest(data_dir)
    return [int(t) for p, _ in listed_shards(data_dir, m, split) for t in np.fromfile(p, dtype="<u2")[512:]]


def data_digest(data) -> dict:
    """The dataset's files byte for byte; the lock file holds whoever wrote last (a killed run's pid)."""
    return {k: v for k, v in tree_digest(data).items() if k != LOCK_FILE}


def corpus(tmp_path, n_files=6, docs_per_file=3, chars=2500):
    """n_files parquet files of real Shakespeare, a few documents each (all different)."""
    texts = play_texts(n_files * docs_per_file, chars)
    return [write_parquet(tmp_path / f"plays_{i:02d}.parquet", texts[i * docs_per_file : (i + 1) * docs_per_file])
            for i in range(n_files)]


SETTINGS = {"shard_tokens": 700, "commit_tokens": 1}


def stable(manifest: dict) -> dict:
    """The manifest without what depends on the clock."""
    clock = {"added", "seconds", "started"}

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in clock}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(manifest)


# kill points: code run in the child before prepare, which kills the process at one moment
KILL = {
    "after the 2nd commit": """
        from gptforge.data import part_writer
        real, n = part_writer.PartWriter.commit, [0]
        def commit(self):
            real(self)
            n[0] += 1
            if n[0] == 2:
                os.kill(os.getpid(), SIG)
        part_writer.PartWriter.commit = commit
    """,
    "in the middle of the 4th file": """
        from gptforge.data import part_writer
        real = part_writer.PartWriter._source_done
        def source_done(self, source, *args):
            if source.path.name == "plays_03.parquet":
                os.kill(os.getpid(), SIG)
            real(self, source, *args)
        part_writer.PartWriter._source_done = source_done
    """,
    "while the val share is settled": """
        from gptforge.data import part_writer, shard_streams
        real = shard_streams.split_off_tail
        def split_off_tail(*args):
            out = real(*args)
            os.kill(os.getpid(), SIG)
            return out
        part_writer.split_off_tail = split_off_tail
    """,
    "after the final manifest, before old files are removed": """
        from gptforge.data import part_writer
        real = part_writer.save_manifest
        def save_manifest(out, manifest):
            real(out, manifest)
            if "pending" not in manifest:
                os.kill(os.getpid(), SIG)
        part_writer.save_manifest = save_manifest
    """,
}


def run_killed(files, data, kill: str, sig=signal.SIGKILL, **kw) -> subprocess.CompletedProcess:
    script = "import os, signal\nSIG = %d\n" % int(sig) + textwrap.dedent(KILL[kill]) + textwrap.dedent(f"""
        from gptforge.data.prepare import prepare
        prepare({[str(f) for f in files]!r}, {str(data)!r}, **{dict(SETTINGS, **kw)!r})
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          preexec_fn=sigint_default)


SPLITS = {
    "hash + small-part minimum": {"val_fraction": 0.01},  # a small corpus: the minimum tops val up from the tail
    "tail": {"split": "tail", "val_fraction": 0.1},
}


@pytest.mark.parametrize("kill", list(KILL))
@pytest.mark.parametrize("split", list(SPLITS))
def test_killed_and_rerun_equals_uninterrupted(tmp_path, kill, split):
    files = corpus(tmp_path)
    reference = prepare([str(f) for f in files], tmp_path / "reference", **SETTINGS, **SPLITS[split])
    data = tmp_path / "data"
    killed = run_killed(files, data, kill, **SPLITS[split])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    m = load_manifest(data)
    assert verify_dataset(data, m) == []
    if kill.startswith("after the final manifest"):  # finished: the shards its tail came from are leftovers
        assert "pending" not in m and stable(m) == stable(reference)
        listed = {s["file"] for split in ("train", "val") for s in m["shards"][split]}
        assert {p.name for p in data.glob("*.bin")} > listed  # the originals of the moved tail, not yet removed
    else:
        assert m["versions"] == [] and m["pending"]["sources"]  # the finished files are kept
        with pytest.raises(UserError, match="holds no finished data yet: its first prepare run .* is unfinished"):
            open_dataset(data)
    prepare([str(f) for f in files], data, **SETTINGS, **SPLITS[split])
    assert stable(load_manifest(data)) == stable(reference)
    for split_name in ("train", "val"):
        assert stream(data, split_name) == stream(tmp_path / "reference", split_name)
    assert len(stream(data, "val")) > 0
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in (tmp_path / "reference").iterdir())


def test_ctrl_c_keeps_the_commits_and_leaves_no_partial_files(tmp_path):
    files = corpus(tmp_path)
    data = tmp_path / "data"
    killed = run_killed(files, data, "in the middle of the 4th file", sig=signal.SIGINT)
    assert killed.returncode == -signal.SIGINT and "KeyboardInterrupt" in killed.stderr
    m = load_manifest(data)
    assert [s["path"] for s in m["pending"]["sources"]] == [str(f) for f in files[:3]]
    listed = {s["file"] for split in ("train", "val") for s in m["pending"]["shards"][split]}
    on_disk = {p.name for p in data.iterdir() if p.name.endswith(".bin") or p.name.endswith(".tmp")}
    assert on_disk == listed  # the 4th file's shards and temporaries were removed on the way out


def test_a_rerun_says_how_many_files_were_done_and_a_no_op_rerun_changes_nothing(tmp_path, capsys):
    files = corpus(tmp_path)
    data = tmp_path / "data"
    assert run_killed(files, data, "after the 2nd commit").returncode == -signal.SIGKILL
    capsys.readouterr()
    prepare([str(f) for f in files], data, **SETTINGS)
    out = capsys.readouterr().out
    assert "continuing the unfinished prepare of part 'plays': 2 of 6 files already done" in out
    assert "added 6 source(s) (2 committed by an earlier, interrupted run): 18 documents" in out
    before = tree_digest(data)
    prepare([str(f) for f in files], data, **SETTINGS)
    assert "nothing to add" in capsys.readouterr().out
    assert tree_digest(data) == before


def test_readers_see_only_finished_parts_while_a_run_is_unfinished(tmp_path, capsys):
    files = corpus(tmp_path)
    data = tmp_path / "data"
    prepare([str(files[0])], data, **SETTINGS)
    first = open_dataset(data)
    train, val = first.train.read(0, first.train_tokens).tolist(), first.val.read(0, first.val_tokens).tolist()
    assert run_killed(files[1:], data, "after the 2nd commit").returncode == -signal.SIGKILL
    ds = open_dataset(data)
    assert ds.unfinished == {"part": "plays", "files": 2} and ds.version == 1
    from gptforge.commands.inspection import inspect_command

    assert inspect_command(str(data)) == 0
    shown = capsys.readouterr().out
    assert "unfinished prepare run of part 'plays'" in shown and "2 files committed, not yet read by training" in shown
    assert ds.train.read(0, ds.train_tokens).tolist() == train and ds.val.read(0, ds.val_tokens).tolist() == val


def test_the_unfinished_run_is_continued_only_as_it_was_started(tmp_path):
    files = corpus(tmp_path)
    data = tmp_path / "data"
    assert run_killed(files, data, "after the 2nd commit").returncode == -signal.SIGKILL
    before = data_digest(data)
    with pytest.raises(UserError, match=r"unfinished prepare run \(2 files done\) made with min_chars 0 \(now 10\)"):
        prepare([str(f) for f in files], data, **SETTINGS, min_chars=10)
    with pytest.raises(UserError, match=r"unfinished prepare run of part 'plays' \(2 files done\): finish it first"):
        prepare([str(f) for f in files], data, **SETTINGS, part="other")
    assert data_digest(data) == before
    # naming just the finished files closes the part as it is
    m = prepare([str(f) for f in files[:2]], data, **SETTINGS)
    assert "pending" not in m and [v["sources"] for v in m["versions"]] == [[str(f) for f in files[:2]]]


def test_several_small_files_are_committed_together(tmp_path):
    files = corpus(tmp_path)  # about 3,000 tokens per file
    data = tmp_path / "data"
    assert run_killed(files, data, "in the middle of the 4th file", commit_tokens=4000).returncode == -signal.SIGKILL
    m = load_manifest(data)
    assert [s["path"] for s in m["pending"]["sources"]] == [str(f) for f in files[:2]]  # 2 files reach 4,000


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_covers_the_whole_run():
    from gptforge.progress import LOG_EVERY, Progress

    screen = Terminal()
    progress = Progress(files_total=8, files_done=5, total_bytes=3_000_000, stream=screen, every=0.0)
    progress.start_file(1_000_000)
    progress.update(tokens=250_000, chars=1_000_000)  # the first file of this run
    progress.file_done()
    progress.start_file(2_000_000)
    progress.update(tokens=250_000, chars=1_000_000)  # half of the next one, at 1 char a byte
    line = screen.getvalue().rsplit("\r\x1b[K", 1)[-1]
    assert line.startswith("file 7/8, 0.5M tokens (") and "MB/s in" in line
    assert "66.7% of this run's input" in line and "ETA" in line
    quiet = io.StringIO()
    progress = Progress(files_total=2, files_done=0, total_bytes=10, stream=quiet)
    progress.start_file(10)
    progress.update(tokens=5, chars=10)
    progress.file_done()
    progress.commit()  # off a terminal: quiet until LOG_EVERY seconds have passed (a short run's log stays clean)
    assert quiet.getvalue() == ""
    progress.last_logged -= LOG_EVERY
    progress.commit()  # then one permanent line, no status line
    assert quiet.getvalue().startswith("committed 1/2 files: 0.0M tokens") and "\r" not in quiet.getvalue()
