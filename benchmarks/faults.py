"""Training faults tried many times with real processes and real signals: the closing figures of issue 17.

    python benchmarks/faults.py [--tries 10] [--only race,kill,sigterm,sigint,corrupt,full] [--full-dir DIR]

Each scenario runs `gptforge train` (a tiny char-level model on tinyshakespeare, or on generated text when
../shared/data is absent) in fresh processes, `--tries` times, and counts the outcomes it checks:
  race     two trains on one --out started together: one runs, the other stops at once naming its pid; the
           checkpoints are all of one seed; every metrics.jsonl line parses
  kill     kill -9 at a random moment of a run that saves and prunes every step (keep_last 2): the newest
           checkpoint verifies, the resume starts without skipping one and removes what the kill left
  sigterm  SIGTERM mid-run: exit 143, the stop step's checkpoint saved
  sigint   Ctrl-C (SIGINT) mid-run: exit 130 and the "interrupted" line, the stop step's checkpoint saved
  corrupt  one random byte of the newest checkpoint's files flipped: resume, sample and export use the one
           before, each saying which it skipped
  full     train into --full-dir, a small file system (e.g. `mount -t tmpfs -o size=600k tmpfs DIR`): one line
           naming the path with the bytes needed and free, exit 1, no temporary left, the earlier checkpoint
           verifies (skipped without --full-dir)
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
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--dropout=0.0",
        "--eval_iters=2", "--sample_tokens=0", "--lr_decay_iters=1000", "--device=cpu"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def gptforge(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gptforge", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **popen)


def train(data, out, *extra, **popen) -> subprocess.Popen:
    return gptforge("train", f"--data={data}", f"--out={out}", *TINY, *extra, **popen)


def finish(proc, timeout=300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


TABLE_HEAD = "| scenario | tries | outcomes |\n|---|---|---|"


def tried_row(name: str, tries: int, scenario) -> str:
    """One markdown row: how many of the tries `scenario(i)` ended each way, the most common first."""
    counts = Counter(scenario(i) for i in range(tries))
    return f"| {name} | {tries} | " + "; ".join(f"{n} x {o}" for o, n in counts.most_common()) + " |"


def lines_parse(run: Path) -> bool:
    try:
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return True
    except (OSError, ValueError):
        return False


def wait_for_logs(proc, run, n) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count('"event": "log"') >= n:
            return
        time.sleep(0.02)


def race(data, work, i) -> str:
    from gptforge.train.checkpoint import load_checkpoint

    run = work / f"race{i}"
    procs = [train(data, run, f"--seed={s}", "--max_iters=80", "--eval_interval=10") for s in (1, 2)]
    done = sorted(((p.pid, *finish(p)) for p in procs), key=lambda d: d[1])
    codes = [d[1] for d in done]
    seeds, broken = set(), 0
    for path in (run / "checkpoints").glob("step_*"):
        try:
            seeds.add(load_checkpoint(path)["state"]["config"]["seed"])
        except Exception:  # noqa: BLE001 - counted: what two writers leave
            broken += 1
    named = codes == [0, 1] and (f"(pid {done[0][0]})" in done[1][3] or "already holds a run" in done[1][3])
    return f"exits {codes}, the second naming the first's pid: {named}; seeds in the checkpoints: {len(seeds)}; " \
           f"broken step_* dirs: {broken}; metrics.jsonl parses: {lines_parse(run)}"


def kill(data, work, i) -> str:
    from gptforge.train.checkpoint import newest_valid

    run = work / f"kill{i}"
    proc = train(data, run, "--max_iters=100000", "--eval_interval=1", "--keep_last=2")
    wait_for_logs(proc, run, 3)
    time.sleep(random.uniform(0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name.split("_0")[0] for p in (run / "checkpoints").iterdir() if p.name.startswith("."))
    _, _, skipped = newest_valid(run)
    code, out, err = finish(train(data, run, "--max_iters=100000", "--max_seconds=1", "--eval_interval=1",
                                  "--keep_last=2", "--init_from=resume"))
    cleaned = not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    return f"left {'+'.join(left) or 'nothing'}; newest verifies: {not skipped}; resume exit {code}; " \
           f"leftovers removed: {cleaned}"


def signalled(sig) -> callable:
    def scenario(data, work, i) -> str:
        from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint

        run = work / f"{sig.name}{i}"
        proc = train(data, run, "--max_iters=100000", "--eval_interval=100000")
        wait_for_logs(proc, run, 3)
        time.sleep(random.uniform(0, 0.3))
        proc.send_signal(sig)
        code, out, err = finish(proc)
        step = load_checkpoint(latest_checkpoint(run))["state"]["step"]
        return f"exit {code}; checkpoint at the stop step: {f'done: signal {sig.name} at step {step}' in out}; " \
               f"interrupted line: {err.startswith('gptforge train: interrupted')}"
    return scenario


def corrupt(data, work, i) -> str:
    from gptforge.train.checkpoint import FILES

    run = work / f"corrupt{i}"
    finish(train(data, run, "--max_iters=20", "--eval_interval=10", "--keep_last=3"))
    victim = run / "checkpoints" / "step_00000020" / random.choice(FILES)
    raw = bytearray(victim.read_bytes())
    raw[random.randrange(len(raw))] ^= 1 << random.randrange(8)
    victim.write_bytes(bytes(raw))
    outcomes = []
    for cmd in (["sample", run, "--max-new-tokens=5"], ["export", run, "--format=hf", f"--out={work / f'hf{i}'}"]):
        code, out, err = finish(gptforge(*cmd))
        outcomes.append(code == 0 and "skipped checkpoint" in err and "using step_00000010" in err)
    code, out, err = finish(train(data, run, "--max_iters=25", "--eval_interval=10", "--init_from=resume"))
    outcomes.append(code == 0 and "resuming from" in out and "step_00000010" in out)
    return f"{victim.name}: sample, export, resume fell back and said so: {outcomes}"


def full(data, work, i, full_dir: Path) -> str:
    run = full_dir / f"full{i}"
    shutil.rmtree(run, ignore_errors=True)
    code, out, err = finish(train(data, run, "--max_iters=100", "--eval_interval=2", "--keep_last=2"))
    line = err.strip().splitlines()
    temporaries = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")] \
        if (run / "checkpoints").exists() else []
    verifies = "intact" in err
    shutil.rmtree(run, ignore_errors=True)
    if i == 0:
        print(f"(full, try 0: {err.strip()})", file=sys.stderr)
    return f"exit {code}; one line: {len(line) == 1}; needed and free: {'needed' in err and ' free' in err}; " \
           f"temporaries left: {len(temporaries)}; earlier checkpoint intact: {verifies}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--only", default="race,kill,sigterm,sigint,corrupt,full")
    parser.add_argument("--full-dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gptforge_faults_"))
    source = work / "input.txt"
    if TEXT.is_file():
        source.write_text(TEXT.read_text()[:300_000])
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from helpers import tiny_text
        source.write_text(tiny_text(8000))
    finish(gptforge("prepare", source, "--out", work / "data", "--tokenizer", "char"))
    scenarios = {"race": race, "kill": kill, "sigterm": signalled(signal.SIGTERM),
                 "sigint": signalled(signal.SIGINT), "corrupt": corrupt}
    if args.full_dir:
        scenarios["full"] = lambda d, w, i: full(d, w, i, args.full_dir)
    print(TABLE_HEAD)
    for name in args.only.split(","):
        if name in scenarios:
            print(tried_row(name, args.tries, lambda i: scenarios[name](work / "data", work, i)), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
