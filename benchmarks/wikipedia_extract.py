"""Wikipedia extraction: gptforge vs wikiextractor on the same real dump, same core count.

    python benchmarks/wikipedia_extract.py [--dump X.xml.bz2] [--processes N] [--runs R]

Without --dump, the real enwiki fragment in ../shared/data is repeated (pages only, one header)
to at least 50 MB of XML and bzip2-compressed into a temporary directory. wikiextractor 3.1.0 is
installed from PyPI into a throwaway venv (default /tmp/gptforge-bench-wikiextractor) and run as
a separate program; it is never imported (AGPL). Both write every article to disk as JSON lines.

Prints, per tool: best wall time of R alternating runs and pages/s, the ratio (best vs best, and
the median of each run's pair, steadier on a shared machine); leftover-markup
counts in each output; and agreement: for each article both produced, the share of
wikiextractor's distinct words found in ours, averaged.
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gptforge.data.sources import SourceOptions
from gptforge.data.sources.wikipedia import WikipediaSource

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "enwiki-sample-pages-articles.xml.bz2"
WIKIEXTRACTOR = "wikiextractor==3.1.0"
MARKUP = ["{{", "}}", "[[", "]]", "<ref", "thumb|", "File:", "Category:"]
TABLE_LINE = re.compile(r"^(?:\||\{\|)", re.M)
WORD = re.compile(r"\w+")


def build_dump(out_dir: Path, min_bytes: int) -> Path:
    xml = bz2.decompress(SAMPLE.read_bytes())
    first, end = xml.index(b"  <page>"), xml.rindex(b"</mediawiki>")
    pages = xml[first:end]
    copies = -(-(min_bytes - first) // len(pages))
    path = out_dir / f"enwiki-sample-x{copies}.xml.bz2"
    with bz2.open(path, "wb") as f:
        f.write(xml[:first])
        for _ in range(copies):
            f.write(pages)
        f.write(xml[end:])
    return path


def ensure_wikiextractor(venv: Path) -> Path:
    exe = venv / "bin" / "wikiextractor"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", WIKIEXTRACTOR], check=True)
    return exe


def run_gptforge(dump: Path, processes: int, out: Path) -> tuple[float, int]:
    source = WikipediaSource(dump, SourceOptions())
    source.workers = processes
    start = time.perf_counter()
    source.check()
    with open(out, "w", encoding="utf-8") as f:
        for doc in source.documents():
            title, _, text = doc.partition("\n\n")
            f.write(json.dumps({"title": title, "text": text}, ensure_ascii=False) + "\n")
    return time.perf_counter() - start, source.pages_read


def run_wikiextractor(exe: Path, dump: Path, processes: int, out_dir: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(exe), str(dump), "--processes", str(processes), "--html-safe", "", "--json", "-q",
                    "-o", str(out_dir)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def cpu_seconds(cmd: list[str]) -> float:
    """User + system CPU of a separate program and the children it waited for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def load(paths) -> dict[str, str]:
    """title -> text, first occurrence (the built dump repeats its articles)."""
    docs: dict[str, str] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                docs.setdefault(d["title"], d["text"])
    return docs


def leftovers(docs: dict[str, str]) -> dict[str, int]:
    counts = {m: sum(t.count(m) for t in docs.values()) for m in MARKUP}
    counts["lines | or {|"] = sum(len(TABLE_LINE.findall(t)) for t in docs.values())
    return counts


def agreement(ours: dict[str, str], theirs: dict[str, str]) -> tuple[float, int]:
    shares = []
    for title, text in theirs.items():
        words = set(WORD.findall(text.lower()))
        if not words or title not in ours:
            continue
        shares.append(len(words & set(WORD.findall(ours[title].lower()))) / len(words))
    return sum(shares) / max(len(shares), 1), len(shares)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dump", type=Path, help="a pages-articles .xml or .xml.bz2 (default: built from ../shared)")
    p.add_argument("--min-mb", type=float, default=50, help="XML size of the built dump")
    p.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--runs", type=int, default=3, help="alternating timed runs of each; the best counts")
    p.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "gptforge-bench-wikiextractor")
    p.add_argument("--extract-only", nargs=2, type=Path, metavar=("DUMP", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.extract_only:  # ours as a separate program, for the CPU-time figure
        run_gptforge(args.extract_only[0], 1, args.extract_only[1])
        return

    exe = ensure_wikiextractor(args.venv)
    with tempfile.TemporaryDirectory(prefix="wikibench-") as tmp:
        tmp = Path(tmp)
        dump = args.dump or build_dump(tmp, int(args.min_mb * 1e6))
        ours_out = tmp / "gptforge.jsonl"
        ours_times, theirs_times = [], []
        for run in range(args.runs):
            t, pages = run_gptforge(dump, args.processes, ours_out)
            ours_times.append(t)
            theirs_dir = tmp / f"wikiextractor{run}"
            theirs_times.append(run_wikiextractor(exe, dump, args.processes, theirs_dir))
            print(f"run {run + 1}: gptforge {t:.2f} s, wikiextractor {theirs_times[-1]:.2f} s, "
                  f"ratio {theirs_times[-1] / t:.2f}x", flush=True)
        # CPU seconds at one process each: a figure other work on a shared machine cannot skew
        # (at one process ours never starts workers, so every CPU second is counted)
        cpu_ours = cpu_seconds([sys.executable, __file__, "--extract-only", str(dump), str(tmp / "cpu.jsonl")])
        cpu_theirs = cpu_seconds([str(exe), str(dump), "--processes", "1", "--html-safe", "", "--json", "-q",
                                  "-o", str(tmp / "wikiextractor-cpu")])
        ours = load([ours_out])
        theirs = load(sorted(theirs_dir.rglob("wiki_*")))
        dump_mb = dump.stat().st_size / 1e6

    best_ours, best_theirs = min(ours_times), min(theirs_times)
    print(f"\ndump: {dump.name}, {dump_mb:.1f} MB on disk, {pages} pages; "
          f"--processes {args.processes}; {os.cpu_count()} cores; best of {args.runs}")
    print(f"gptforge      {best_ours:6.2f} s  {pages / best_ours:8.0f} pages/s")
    print(f"wikiextractor {best_theirs:6.2f} s  {pages / best_theirs:8.0f} pages/s")
    ratios = sorted(b / a for a, b in zip(ours_times, theirs_times))
    print(f"speed ratio (gptforge / wikiextractor): {best_theirs / best_ours:.2f}x best vs best, "
          f"{ratios[len(ratios) // 2]:.2f}x median of the paired runs (goal >= 1.5x)")
    print(f"CPU time at --processes 1: gptforge {cpu_ours:.2f} s, wikiextractor {cpu_theirs:.2f} s: "
          f"{cpu_theirs / cpu_ours:.2f}x less CPU per page")
    print(f"\narticles: gptforge {len(ours)}, wikiextractor {len(theirs)} (distinct titles)")
    lo, lt = leftovers(ours), leftovers(theirs)
    print(f"{'leftover markup':16s} {'gptforge':>9s} {'wikiextractor':>14s}")
    for key in lo:
        flag = "" if lo[key] <= lt[key] else "   <- more than wikiextractor"
        print(f"{key:16s} {lo[key]:9d} {lt[key]:14d}{flag}")
    share, n = agreement(ours, theirs)
    print(f"\nagreement: {share:.3f} of wikiextractor's words found in ours, mean over {n} articles (goal >= 0.95)")


if __name__ == "__main__":
    main()
