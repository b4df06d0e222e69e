"""`gptforge download`: dataset shards fetched in parallel, resumed, retried and verified.

The plan (a named dataset, a URL template with {index}, or a pinned file) becomes one job per file; workers on
daemon threads fetch them (fetcher.py: `DIR/.NAME.part`, resumed, retried, measured and checked, then renamed
into place), so Ctrl-C returns at once, even while a connection is stalled.
`DIR/.gptforge-download.json` records where each file came from, so two datasets whose files share names
(FineWeb and FineWeb-Edu samples both use 000_00000.parquet) never overwrite each other silently.
A pinned file (`gptforge download hellaswag`) is checked against its size, sha256 and git blob id known in
advance, whatever the server says, and goes to the cache (`$GPTFORGE_CACHE`, else ~/.cache/gptforge) by default.
Standard library only.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from gptforge.data.fetcher import STOP_WAIT, TOKEN_ENV, Fetcher, Http, Job, RetryPolicy, Stopped
from gptforge.data.pinned import PINNED, cache_dir
from gptforge.data.provenance import Record
from gptforge.errors import UserError, raise_first
from gptforge.progress import StatusLine

_HF = "https://huggingface.co/datasets"


@dataclass(frozen=True)
class Dataset:
    """A named dataset: files `template.format(index=i)` for i in 0..train_files-1, plus its validation file."""

    template: str
    train_files: int
    val_index: int | None
    about: str


DATASETS = {
    # nanochat's pretraining data (karpathy/nanochat nanochat/dataset.py: MAX_SHARD = 1822, the last shard,
    # shard_01822.parquet, is the validation split): ~250M characters per shard, ~100 MB of parquet.
    "fineweb-edu-100b-shuffle": Dataset(
        f"{_HF}/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_{{index:05d}}.parquet", 1822, 1822,
        "FineWeb-Edu 100B, pre-shuffled (nanochat): 1,822 train shards of ~250M characters, shard 1822 = validation"),
    # HuggingFaceFW/fineweb sample/10BT holds 000_00000 .. 014_00000.parquet (~2.15 GB each, 014 ~0.55 GB).
    # Neither sample names a validation file; the last one is held out so the validation set stays the same
    # however many train files a user adds later.
    "fineweb-sample-10BT": Dataset(
        f"{_HF}/HuggingFaceFW/fineweb/resolve/main/sample/10BT/{{index:03d}}_00000.parquet", 14, 14,
        "FineWeb 10B-token sample: 14 train files of ~2.15 GB, file 014 (~0.55 GB) = validation"),
    # HuggingFaceFW/fineweb-edu sample/10BT holds 000_00000 .. 013_00000.parquet (~28.5 GB in all).
    "fineweb-edu-sample-10BT": Dataset(
        f"{_HF}/HuggingFaceFW/fineweb-edu/resolve/main/sample/10BT/{{index:03d}}_00000.parquet", 13, 13,
        "FineWeb-Edu 10B-token sample: 13 train files of ~2.2 GB, file 013 = validation"),
    # nanochat's pretraining data since it left FineWeb-Edu (karpathy/nanochat nanochat/dataset.py: MAX_SHARD = 6542,
    # the last shard, shard_06542.parquet, is the validation split): NVIDIA's ClimbMix, pre-shuffled.
    "climbmix-400b-shuffle": Dataset(
        f"{_HF}/karpathy/climbmix-400b-shuffle/resolve/main/shard_{{index:05d}}.parquet", 6542, 6542,
        "ClimbMix 400B, pre-shuffled (nanochat): 6,542 train shards, shard 6542 = validation"),
}



@dataclass
class Summary:
    fetched: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    val_file: Path | None = None

    def done_line(self, out: Path) -> str:
        rate = self.bytes / 1e6 / max(self.seconds, 1e-9)
        val = f"; validation file {self.val_file}" if self.val_file else ""
        return (f"done: {len(self.fetched)} fetched, {len(self.skipped)} already complete; {self.bytes / 1e6:,.1f} MB "
                f"in {self.seconds:.1f} s ({rate:,.1f} MB/s) in {out}{val}")


# --------------------------------------------------------------------------------------------- the plan

def apply_mirror(url: str, mirror: str | None) -> str:
    """Replace scheme and host of `url` by the mirror's (a mirror path, if any, is put in front)."""
    if not mirror:
        return url
    m, u = urlsplit(mirror), urlsplit(url)
    if m.scheme not in ("http", "https") or not m.netloc or m.query or m.fragment:
        raise UserError(f"--mirror {mirror}: expected a base URL such as https://hf-mirror.com")
    return urlunsplit((m.scheme, m.netloc, m.path.rstrip("/") + u.path, u.query, ""))


def _expand(template: str, index: int) -> str:
    try:
        return template.format(index=index)
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(
            f"URL template {template}: cannot fill in the shard index ({e}); use {{index}} or {{index:05d}}"
        ) from None


def plan(name: str, out: str | os.PathLike, shards: int | None, start: int = 0,
         mirror: str | None = None) -> list[Job]:
    """The files to fetch, in order: train files start..start+shards-1, then the validation file if any."""
    if name in PINNED:
        if shards is not None or start:
            raise UserError(f"{name} is a single file: drop --shards and --start")
        pinned = PINNED[name]
        return [Job(apply_mirror(pinned.url, mirror), pinned.url, Path(out) / pinned.filename, "file", pinned)]
    if shards is None:
        raise UserError(f"{name}: say how many shards to fetch with --shards N")
    if shards < 1 or start < 0:
        raise UserError(f"--shards must be at least 1 and --start at least 0 (got --shards {shards} --start {start})")
    dataset = DATASETS.get(name)
    if dataset is None and "{index" not in name:
        raise UserError(f"unknown dataset {name!r}: known are {', '.join(DATASETS)}; "
                        f"or give a URL template with {{index}}, e.g. https://host/path/shard_{{index:05d}}.parquet")
    template = dataset.template if dataset else name
    if urlsplit(template).scheme not in ("http", "https") or not urlsplit(template).netloc:
        raise UserError(f"URL template {template}: must start with http:// or https:// and name a host")
    if dataset and start + shards > dataset.train_files:
        raise UserError(f"{name} has {dataset.train_files} train shards (0..{dataset.train_files - 1}); "
                        f"--start {start} --shards {shards} asks for up to {start + shards - 1}")
    indices = [(i, "train") for i in range(start, start + shards)]
    if dataset and dataset.val_index is not None:
        indices.append((dataset.val_index, "val"))
    out = Path(out)
    jobs, names = [], {}
    for index, role in indices:
        source = _expand(template, index)
        filename = unquote(urlsplit(source).path.rsplit("/", 1)[-1])
        if not filename or filename.startswith(".") or any(c in filename for c in "/\\\0"):  # stay inside --out
            raise UserError(f"URL {source}: its path does not end in a usable file name")
        if filename in names:
            raise UserError(f"URL template {template}: shards {names[filename]} and {index} both map to the file name "
                            f"{filename!r}; put {{index}} in the last part of the path")
        names[filename] = index
        jobs.append(Job(apply_mirror(source, mirror), source, out / filename, role))
    return jobs


class _JobRecord(Record):
    def check(self, job: Job) -> None:
        self.check_source(job.path, job.source, job.path.exists() or job.part.exists())

    def add(self, job: Job, size: int, sha256: str | None) -> None:
        entry = {"source": job.source, "size": size, "role": job.role}
        old = self.get(job.path.name)
        sha256 = sha256 or (old.get("sha256") if old.get("size") == size else None)
        if sha256:
            entry["sha256"] = sha256
        self.put(job.path.name, entry)


# --------------------------------------------------------------------------------------------- progress

class _Progress:
    """One live line with MB/s on a terminal; elsewhere only notices and the final summary."""

    def __init__(self, files: int, stream=None):
        self.line = StatusLine(stream or sys.stderr)
        self.files, self.done, self.bytes = files, 0, 0
        self.start = time.monotonic()
        self.lock = threading.Lock()

    def _text(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return f"  {self.done}/{self.files} files  {self.bytes / 1e6:,.1f} MB  {self.bytes / 1e6 / elapsed:,.1f} MB/s"

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes += n
        self.line.show(self._text())

    def file_done(self) -> None:
        with self.lock:
            self.done += 1
        self.add(0)

    def say(self, message: str) -> None:
        self.line.say(message)

    def close(self) -> None:
        self.line.clear()


# --------------------------------------------------------------------------------------------- the command

def download(name: str, out, shards: int | None, workers: int = 4, mirror: str | None = None, start: int = 0, *,
             policy: RetryPolicy | None = None, out_stream=None, progress_stream=None) -> Summary:
    """Fetch train shards start..start+shards-1 of NAME (a named dataset, a URL template or an hf:// glob) into OUT,
    or the pinned file NAME into OUT (default: its folder in the cache)."""
    if shards is None and not name.startswith("hf://") and name not in PINNED:
        raise UserError(f"--shards is required for {name} (only hf:// URLs default to every matching file)")
    if out is None and name not in PINNED:
        raise UserError(f"{name}: say where the files go with --out DIR")
    if name.startswith("hf://") or (name in DATASETS and not mirror):
        # the Hub's own client (HF_ENDPOINT, the token file, hf-xet), gptforge's checks on top; a named dataset
        # with --mirror stays on the plain HTTP client below, which any static mirror of the files can serve
        from gptforge.data import hub

        jobs = None if name.startswith("hf://") else plan(name, out, shards, start)
        return hub.download(name, out, shards, workers, start, mirror, jobs=jobs, summary=Summary(),
                            about=DATASETS[name].about if jobs else None, out_stream=out_stream,
                            progress_stream=progress_stream)
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    policy = policy or RetryPolicy()
    print_out = out_stream or sys.stdout
    out = Path(out) if out is not None else cache_dir() / PINNED[name].folder
    jobs = plan(name, out, shards, start, mirror)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the directory ({e.strerror})") from None
    val = next((j.path for j in jobs if j.role == "val"), None)
    train = [j.path.name for j in jobs if j.role == "train"]
    span = f"{train[0]} .. {train[-1]}" if len(train) > 1 else "".join(train)
    what = f"{len(train)} train file(s) {span}" if train else jobs[0].path.name
    print(f"download {name}: {what}" + (f" + validation {val.name}" if val else "")
          + f" -> {out.resolve()} ({min(workers, len(jobs))} workers)", file=print_out, flush=True)
    about = DATASETS[name].about if name in DATASETS else PINNED[name].about if name in PINNED else None
    if about:
        print(f"  {about}", file=print_out, flush=True)

    token = next((os.environ[k] for k in TOKEN_ENV if os.environ.get(k)), None)
    progress = _Progress(len(jobs), progress_stream)
    stop = threading.Event()  # Ctrl-C: transfers stop between chunks, their .part files stay
    failed = threading.Event()  # a file failed: start no new file, let the running ones finish
    fetcher = Fetcher(Http(policy, mirror, token), policy, progress, stop, _JobRecord(out))
    summary = Summary(val_file=val)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for index, job in enumerate(jobs):
        todo.put((index, job))
    errors: dict[int, BaseException] = {}  # by job index: the first in the plan's order is reported

    def worker() -> None:
        while not (failed.is_set() or stop.is_set()):
            try:
                index, job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                outcome, n = fetcher.fetch(job)
            except BaseException as e:
                errors[index] = e
                failed.set()  # before this worker takes the next job
                return
            progress.file_done()
            with progress.lock:
                (summary.fetched if outcome == "fetched" else summary.skipped).append(job.path)
                summary.bytes += n

    # daemon threads: a transfer stalled in a read must not keep the process alive after Ctrl-C
    threads = [threading.Thread(target=worker, name=f"download-{i}", daemon=True)
               for i in range(min(workers, len(jobs)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():  # a short timeout keeps Ctrl-C responsive in the main thread
                t.join(0.5)
    except KeyboardInterrupt:
        stop.set()
        progress.close()
        deadline = time.monotonic() + STOP_WAIT  # transfers that are moving stop between chunks
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        raise
    errors_in_order = [errors[i] for i in sorted(errors)]
    progress.close()
    summary.seconds = time.monotonic() - progress.start
    raise_first([e for e in errors_in_order if not isinstance(e, Stopped)])
    print(summary.done_line(out), file=print_out, flush=True)
    return summary
