"""Data-side faults tried many times with real processes and real signals: the prepare half of issue 17's figures.

    python benchmarks/prepare_faults.py [--tries 10] [--only race,kill9,sigterm,ctrl_c,under_fire,hostile,memory]

  race     two `prepare` appends to one DATA_DIR started together: one adds its documents, the other stops at once
           naming the first one's pid (or, when the first was already done, adds after it); the manifest then holds
           every document of every prepare that said it added, and every shard it lists exists
  kill9    kill -9 of a Wikipedia prepare once its worker pool is up: processes still alive 5 s later (before: 4 per
           kill, ~95 MB)
  sigterm  the same with SIGTERM
  ctrl_c   Ctrl-C to the process group of a Wikipedia prepare at a random moment 0.1-2 s after its launch (module
           loading, start-up, workers, reading; the whole prepare takes ~3 s unloaded): exit 130 with the
           "interrupted" line, no "terminate called" abort, no process left
           (before: 2 of 5 aborted early in decompression)
  under_fire  SIGINT to every child of a Wikipedia prepare every 2 ms for a random 0-3 s, then Ctrl-C to the group
           (the CI test of the children's lifetimes, repeated): exit 130 with the "interrupted" line alone on
           stderr, or exit 0 and nothing on stderr when it finished first; no process left (before: 1 in 20 also
           printed the resource tracker's "leaked semaphore" warnings)
  hostile  seconds to clean the hostile pages of the issue (a heading line of 2,000 / 4,000 / 6,000 spaces; 30,000
           unclosed `{{x` lines), once each (before: 10.5 s, 64 s, a hang; > 250 s)
  memory   peak RSS of `prepare` of one 30 MB single-line document (before: 1.6 GB) next to 30 MB of normal text
Prints one markdown row per scenario: tries and outcomes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from faults import REPO, TABLE_HEAD, TEXT, finish, gptforge, tried_row

sys.path.insert(0, str(REPO / "tests"))
from helpers import alive, ctrl_c_under_fire, descendants, many_pages_dump, sigint_default  # noqa: E402


def documents(text: str, n: int, start: int) -> str:
    """n documents of ~2,000 characters of real text, joined as a nanoGPT user's .txt export joins them."""
    return "<|endoftext|>".join(text[start + 2000 * i:start + 2000 * (i + 1)] for i in range(n))


def race(text, work, i) -> str:
    data = work / f"race{i}"
    base, a, b = (work / f"{name}{i}.txt" for name in ("base", "a", "b"))
    for path, n, start in ((base, 20, 0), (a, 40, 40_000), (b, 45, 120_000)):
        path.write_text(documents(text, n, start))
    finish(gptforge("prepare", base, "--out", data))
    procs = [gptforge("prepare", src, "--out", data) for src in (a, b)]
    done = [(p.pid, *finish(p)) for p in procs]
    added = {20} | {n for (_, code, _, _), n in zip(done, (40, 45)) if code == 0}
    refused = [err for _, code, _, err in done if code != 0]
    named = all("pid" in err for err in refused)
    manifest = json.loads((data / "manifest.json").read_text())
    held = sum(s["documents"] for s in manifest["sources"])
    listed = [entry["file"] for split in manifest["shards"].values() for entry in split]
    missing = [name for name in listed if not (data / name).is_file()]
    shutil.rmtree(data, ignore_errors=True)
    return f"{2 - len(refused)} added, {len(refused)} stopped naming the holder's pid: {named}; manifest holds " \
           f"every added document: {held == sum(added)}; listed shards missing: {len(missing)}"


def wiki_prepare(dump, out, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gptforge", "prepare", str(dump), "--out", str(out), "--workers",
                             "2", "--tokenizer", "char"], stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                            start_new_session=True, preexec_fn=sigint_default)


def left_alive(pids, within=5.0) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # ours: started by this benchmark
    return len(left)


def killed(sig) -> callable:
    def scenario(dump, work, i) -> str:
        proc = wiki_prepare(dump, work / f"{sig.name}{i}", work / f"{sig.name}{i}.log")
        tree, deadline = set(), time.monotonic() + 60
        while len(tree) < 4 and time.monotonic() < deadline and proc.poll() is None:
            tree |= descendants(proc.pid)
            time.sleep(0.02)
        time.sleep(random.uniform(0, 0.5))
        tree |= descendants(proc.pid)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        return f"processes left 5 s later: {left_alive(tree)}"
    return scenario


def ctrl_c(dump, work, i) -> str:
    log = work / f"ctrlc{i}.log"
    proc = wiki_prepare(dump, work / f"ctrlc{i}", log)
    tree, deadline = set(), time.monotonic() + random.uniform(0.1, 2.0)
    while time.monotonic() < deadline and proc.poll() is None:
        tree |= descendants(proc.pid)
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = "hung"
        proc.kill()
    err = log.read_text()
    return f"exit {code}; the interrupted line alone: {err.strip() == 'gptforge prepare: interrupted'}; " \
           f"'terminate called': {'terminate called' in err}; processes left: {left_alive(tree)}"


def under_fire(dump, work, i) -> str:
    log = work / f"fire{i}.log"
    finished, code, tree = ctrl_c_under_fire(wiki_prepare(dump, work / f"fire{i}", log), random.uniform(0, 3), 60)
    err = log.read_text().strip()
    clean = err == ("" if finished else "gptforge prepare: interrupted")
    return f"{'finished, ' if finished else ''}exit {code}; stderr as expected: {clean}; " \
           f"'leaked semaphore': {'leaked semaphore' in err}; processes left: {left_alive(tree)}"


def hostile() -> str:
    from gptforge.data.sources.wikitext import clean

    pages = {f"heading of {n:,} spaces": "= " + " " * n + "\n" + "text " * 100 for n in (2000, 4000, 6000)}
    pages["30,000 unclosed {{x lines"] = "{{x\n" * 30_000
    times = []
    for name, page in pages.items():
        start = time.perf_counter()
        clean(page)
        times.append(f"{name}: {time.perf_counter() - start:.3f} s")
    return "; ".join(times)


def peak_rss_mb(*args) -> float:
    code = f"import resource, runpy, sys; sys.argv = {['gptforge', *map(str, args)]!r}\n" \
           "try:\n    runpy.run_module('gptforge', run_name='__main__')\nexcept SystemExit:\n    pass\n" \
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 1024


def memory(text, work) -> str:
    line, normal = work / "one_line.txt", work / "normal.txt"
    line.write_text("x" * 30_000_000)
    normal.write_text((text * (30_000_000 // len(text) + 1))[:30_000_000])
    return f"30 MB single line: {peak_rss_mb('prepare', line, '--out', work / 'm1'):.0f} MB peak RSS; 30 MB of " \
           f"normal text: {peak_rss_mb('prepare', normal, '--out', work / 'm2'):.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--only", default="race,kill9,sigterm,ctrl_c,under_fire,hostile,memory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gptforge_prepare_faults_"))
    text = TEXT.read_text() if TEXT.is_file() else "To be, or not to be: that is the question. " * 20_000
    dump = work / "wiki.xml"
    dump.write_bytes(many_pages_dump(12_000))  # many batches for the workers, as the tests use
    big = work / "big.xml"
    big.write_bytes(many_pages_dump(30_000))  # (as the children's-lifetimes test uses)
    scenarios = {"race": lambda i: race(text, work, i), "kill9": lambda i: killed(signal.SIGKILL)(dump, work, i),
                 "sigterm": lambda i: killed(signal.SIGTERM)(dump, work, i), "ctrl_c": lambda i: ctrl_c(dump, work, i),
                 "under_fire": lambda i: under_fire(big, work, i)}
    once = {"hostile": hostile, "memory": lambda: memory(text, work)}
    print(TABLE_HEAD)
    for name in args.only.split(","):
        if name in scenarios:
            print(tried_row(name, args.tries, scenarios[name]), flush=True)
        elif name in once:
            print(f"| {name} | 1 | {once[name]()} |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
