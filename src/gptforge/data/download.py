"""`gptforge download`: dataset shards fetched in parallel, resumed, retried and verified.

Each file is written to `DIR/.NAME.part` (a name every reader skips) and renamed to `DIR/NAME` only once its
size matches what the server announced and its sha256 matches where one is known (Hugging Face gives the
sha256 of LFS files in X-Linked-Etag); a body sent without Content-Length is measured against the size a
HEAD request announces. A dropped connection resumes with an HTTP Range request; 5xx and connection errors
are retried with exponential backoff; 404 and other client errors are final at once. Redirects are followed
hop by hop, at most MAX_REDIRECTS, and only to http and https URLs (a `Location: file:///...` is refused).
Transfers run on daemon threads: Ctrl-C returns at once, even while a connection is stalled.
`DIR/.gptforge-download.json` records where each file came from, so two datasets whose files share names
(FineWeb and FineWeb-Edu samples both use 000_00000.parquet) never overwrite each other silently.
A pinned file (`gptforge download hellaswag`) is checked against its size, sha256 and git blob id known in
advance, whatever the server says, and goes to the cache (`$GPTFORGE_CACHE`, else ~/.cache/gptforge) by default.
Standard library only.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import queue
import random
import shutil
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from gptforge.data.pinned import PINNED, PinnedFile, cache_dir, git_blob_id, pinned_mismatch
from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_json, fsync_dir
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

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
TOKEN_HOSTS = ("huggingface.co",)  # the token is sent only here and to the --mirror host
RECORD = ".gptforge-download.json"
MAX_REDIRECTS = 5  # Hugging Face needs one or two (a renamed repo, then its CDN)
SCHEMES = ("http", "https")  # for the first URL and every redirect
STOP_WAIT = 0.5  # seconds Ctrl-C waits for transfers to stop between chunks before returning anyway


@dataclass
class RetryPolicy:
    attempts: int = 6  # consecutive failures without progress before giving up on a file
    base_delay: float = 1.0  # seconds; doubled after each failure, with jitter
    max_delay: float = 60.0
    timeout: float = 60.0  # socket timeout of one read
    chunk: int = 1 << 20


@dataclass(frozen=True)
class Job:
    url: str  # what is fetched (after --mirror)
    source: str  # the dataset's own URL: identity of the file in the record
    path: Path
    role: str  # "train", "val" or "file" (a pinned file)
    pinned: PinnedFile | None = None

    @property
    def part(self) -> Path:
        return self.path.with_name(f".{self.path.name}.part")


@dataclass
class Summary:
    fetched: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    val_file: Path | None = None


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


# --------------------------------------------------------------------------------------------- HTTP

class _Transient(Exception):
    """Worth retrying: 5xx, 429, a dropped or stalled connection."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Mismatch(Exception):
    """The bytes are not what the server announced: discard the partial file and fetch again once."""


class _Stopped(Exception):
    """Another file failed or the user interrupted: leave the .part file for a later resume."""


class _HttpStatus(UserError):
    """A final HTTP answer (4xx other than 429): the message names the URL and the status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # redirects are followed by _Http.open, hop by hop
        return None


def _http_only_opener() -> urllib.request.OpenerDirector:
    """An opener that speaks HTTP(S) and nothing else: no file:, ftp: or data: handler to be redirected to."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor(), _NoRedirect(),
                    urllib.request.UnknownHandler()):  # (this one refuses every other scheme)
        opener.add_handler(handler)
    return opener


def _status_error(url: str, code: int, reason: str, headers) -> Exception:
    if code == 429 or code >= 500:
        retry_after = headers.get("Retry-After") if headers else None
        return _Transient(
            f"HTTP {code} {reason}".rstrip(), float(retry_after) if (retry_after or "").isdigit() else None
        )
    hint = ""
    if code in (401, 403):
        hint = f" (a gated dataset? set {TOKEN_ENV[0]} to an access token that may read it)"
    elif code == 404:
        hint = " (no such file: check the dataset name, the shard range and --mirror)"
    return _HttpStatus(f"{url}: HTTP {code} {reason}".rstrip() + hint, code)


class _Http:
    def __init__(self, policy: RetryPolicy, mirror: str | None, token: str | None):
        self.policy = policy
        self.token = token
        self.token_hosts = set(TOKEN_HOSTS) | ({urlsplit(mirror).netloc.lower()} if mirror else set())
        self.opener = _http_only_opener()

    def _auth(self, url: str) -> bool:
        parts = urlsplit(url)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        return bool(self.token) and parts.netloc.lower() in self.token_hosts and (parts.scheme == "https" or loopback)

    def open(self, method: str, url: str, headers: dict | None = None):
        """Follow redirects; returns (response, hops) where hops are the headers of each redirect answer."""
        hops, current = [], url
        for _ in range(MAX_REDIRECTS + 1):
            req = urllib.request.Request(
                current, method=method, headers={"User-Agent": "gptforge-download", **(headers or {})}
            )
            if self._auth(current):  # never sent along a redirect to another host (e.g. a CDN)
                req.add_unredirected_header("Authorization", f"Bearer {self.token}")
            try:
                return self.opener.open(req, timeout=self.policy.timeout), hops
            except urllib.error.HTTPError as e:
                location = e.headers.get("Location") if e.code in (301, 302, 303, 307, 308) else None
                headers_seen = e.headers
                if e.code == 416:  # the caller reads Content-Range: the .part may already be whole
                    return e, hops
                e.close()
                if location:
                    hops.append(headers_seen)
                    if method == "HEAD" and headers_seen.get("X-Linked-Size"):
                        return None, hops  # Hugging Face: the first hop holds size and sha256; CDNs often refuse HEAD
                    current = urljoin(current, location)
                    target = urlsplit(current)
                    if target.scheme not in SCHEMES or not target.netloc:
                        raise UserError(f"{url}: the server redirects to {current[:200]}; only http and https "
                                        "redirects are followed") from None
                    continue
                raise _status_error(url, e.code, e.reason or "", headers_seen) from None
            except ssl.SSLCertVerificationError as e:
                raise UserError(f"{url}: TLS certificate not trusted ({e.verify_message})") from None
            except urllib.error.URLError as e:
                raise _Transient(f"cannot connect ({getattr(e.reason, 'strerror', None) or e.reason})") from None
            except (http.client.HTTPException, OSError) as e:
                raise _Transient(f"connection failed ({type(e).__name__}: {e})") from None
        raise UserError(f"{url}: more than {MAX_REDIRECTS} redirects (the last to {current[:200]})")


def _meta(hops, response) -> tuple[int | None, str | None]:
    """Size and sha256 announced by the server (Hugging Face: X-Linked-Size / X-Linked-Etag on the redirect)."""
    size, sha = None, None
    for h in list(hops) + ([response.headers] if response is not None else []):
        linked = h.get("X-Linked-Size")
        if linked and linked.isdigit() and size is None:
            size = int(linked)
        for key in ("X-Linked-Etag", "ETag"):
            tag = (h.get(key) or "").removeprefix("W/").strip('"').lower()
            # a 64-hex ETag is a content sha256 only on Hugging Face-style answers (they carry X-Repo-Commit)
            trusted = key == "X-Linked-Etag" or h.get("X-Repo-Commit")
            if sha is None and trusted and len(tag) == 64 and all(c in "0123456789abcdef" for c in tag):
                sha = tag
    return size, sha


def _content_range_total(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    try:
        span, total = value.split(" ", 1)[1].split("/")
        return (None if span == "*" else int(span.split("-")[0])), (None if total == "*" else int(total))
    except (AttributeError, IndexError, ValueError):
        return None, None


# --------------------------------------------------------------------------------------------- one file


class _Fetcher:
    def __init__(self, http: _Http, policy: RetryPolicy, progress: "_Progress", stop: threading.Event,
                 record: "_Record"):
        self.http, self.policy, self.progress, self.stop, self.record = http, policy, progress, stop, record

    def _retrying(self, job: Job, step):
        """Run step() until it succeeds; a failure that made progress (a longer .part) resets the count."""
        failures, best, restarts = 0, -1, 0
        while True:
            if self.stop.is_set():
                raise _Stopped()
            try:
                return step()
            except _Transient as e:
                have = job.part.stat().st_size if job.part.exists() else 0
                failures = 1 if have > best else failures + 1
                best = max(best, have)
                if failures >= self.policy.attempts:
                    kept = f"; {job.part.name} ({have:,} bytes) is kept and resumes on the next run" if have else ""
                    raise UserError(f"{job.url}: {e} (gave up after {failures} attempts{kept})") from None
                delay = min(self.policy.max_delay, e.retry_after if e.retry_after is not None else
                            self.policy.base_delay * 2 ** (failures - 1) * (1 + random.random() / 4))
                self.progress.say(f"retrying {job.url} in {delay:.1f}s ({failures}/{self.policy.attempts}): {e}")
                self.stop.wait(delay)
            except _Mismatch as e:
                job.part.unlink(missing_ok=True)
                restarts += 1
                if restarts > 1:
                    raise UserError(f"{job.url}: {e} (fetched twice, wrong both times; nothing kept)") from None
                self.progress.say(f"{job.url}: {e}; fetching it again from the start")

    def probe(self, job: Job) -> tuple[int | None, str | None]:
        """(size, sha256) the server announces for the file, without fetching it."""
        return self._retrying(job, lambda: self._probe_once(job))

    def _probe_once(self, job: Job) -> tuple[int | None, str | None]:
        try:
            response, hops = self.http.open("HEAD", job.url)
        except _HttpStatus as e:
            if e.code not in (403, 405, 501):
                raise
            # no HEAD here (presigned CDN links, some servers): a one-byte range tells the size as well
            response, hops = self.http.open("GET", job.url, {"Range": "bytes=0-0"})
        size, sha = _meta(hops, response)
        if response is not None:
            if response.status == 206:
                size = _content_range_total(response.headers.get("Content-Range"))[1] or size
            elif size is None and (response.headers.get("Content-Length") or "").isdigit():
                size = int(response.headers["Content-Length"])
            response.close()
        return size, sha

    def fetch(self, job: Job) -> tuple[str, int]:
        """('fetched' | 'skipped', bytes received) for one file."""
        self.record.check(job)
        expected = (job.pinned.size, job.pinned.sha256) if job.pinned else (None, None)
        if job.pinned and job.path.exists():  # checked here, no request needed
            wrong = pinned_mismatch(job.path, job.pinned)
            if wrong is None:
                self.record.add(job, job.pinned.size, job.pinned.sha256)
                return "skipped", 0
            self.progress.say(f"{job.path}: {wrong}; fetching it again")
        elif job.path.exists():
            expected = self.probe(job)
            have = job.path.stat().st_size
            if expected[0] is None or expected[0] == have:
                self.record.add(job, have, None)
                return "skipped", 0
            self.progress.say(f"{job.path}: {have:,} bytes on disk but the server has {expected[0]:,}; "
                              "fetching it again")
        received = [0]
        self._retrying(job, lambda: self._transfer(job, expected, received))
        return "fetched", received[0]

    def _transfer(self, job: Job, expected, received: list) -> None:
        offset = job.part.stat().st_size if job.part.exists() else 0
        if expected[0] is not None and offset > expected[0]:
            job.part.unlink()
            offset = 0
        response, hops = self.http.open("GET", job.url, {"Range": f"bytes={offset}-"} if offset else None)
        linked_size, sha = _meta(hops, response)
        sha = expected[1] if job.pinned else sha or expected[1]
        body = response.status != 416
        try:
            if not body:  # nothing after our offset: the .part may already be whole
                total = _content_range_total(response.headers.get("Content-Range"))[1]
                if total is None or total != offset:
                    raise _Mismatch(f"the server refused the range from byte {offset:,} (HTTP 416)")
                size = total
            elif response.status == 206:
                first, size = _content_range_total(response.headers.get("Content-Range"))
                if first != offset:
                    raise _Mismatch(f"asked for bytes from {offset:,}, the server sent a range from {first}")
            else:
                if offset:
                    self.progress.say(f"{job.url}: the server ignored the range request; restarting from byte 0")
                offset = 0
                length = response.headers.get("Content-Length")
                size = int(length) if length and length.isdigit() else None
            for announced in (expected[0], linked_size):
                if announced is not None and size is not None and announced != size:
                    raise _Mismatch(f"wrong size: the server announced {announced:,} bytes but serves {size:,}")
            size = size if size is not None else (expected[0] if expected[0] is not None else linked_size)
            if size is None:  # a body without Content-Length ends the same way whether whole or cut
                try:
                    probed = self._probe_once(job)
                except _HttpStatus:  # no answer to HEAD either: nothing to measure the body against
                    probed = (None, None)
                size, sha = probed[0], sha or probed[1]
            self._check_space(job, size, offset)
            digest = self._write(job, response if body else None, offset, received, size)
        finally:
            response.close()
        got = job.part.stat().st_size
        if size is not None and got < size:  # http.client ends a short body quietly: a dropped connection
            raise _Transient(f"connection dropped after {got:,} of {size:,} bytes")
        if size is not None and got != size:
            raise _Mismatch(f"wrong size: got {got:,} bytes, the server announced {size:,}")
        if size is None and not sha:
            self.progress.say(f"{job.url}: the server announces neither size nor checksum; the {got:,} bytes "
                              "received are taken as the whole file")
        if sha and digest.hexdigest() != sha:
            said = "the pin says" if job.pinned else "the server announced"
            raise _Mismatch(f"sha256 mismatch: {said} {sha}, the bytes hash to {digest.hexdigest()}")
        if job.pinned and git_blob_id(job.part) != job.pinned.git_blob:
            raise _Mismatch(f"git blob id {git_blob_id(job.part)} is not the pinned {job.pinned.git_blob}")
        os.replace(job.part, job.path)
        fsync_dir(job.path.parent)
        self.record.add(job, got, digest.hexdigest())

    def _check_space(self, job: Job, size: int | None, offset: int) -> None:
        if size is None:
            return
        free = shutil.disk_usage(job.path.parent).free
        if size - offset > free:
            raise UserError(f"{job.url}: disk full: {job.path.name} needs {(size - offset) / 1e6:,.1f} MB more, "
                            f"{free / 1e6:,.1f} MB free in {job.path.parent}")

    def _write(self, job: Job, response, offset: int, received: list, size: int | None):
        digest = hashlib.sha256()
        try:
            f = open(job.part, "r+b" if offset else "wb")
        except OSError as e:
            raise UserError(f"cannot write {job.part}: {e.strerror}") from None
        with f:
            while f.tell() < offset:  # hash what a previous attempt kept, so the sha256 covers the whole file
                block = f.read(min(self.policy.chunk, offset - f.tell()))
                if not block:
                    break
                digest.update(block)
            f.seek(offset)
            f.truncate()
            done = offset
            while response is not None:
                if self.stop.is_set():
                    raise _Stopped()
                try:
                    block = response.read1(self.policy.chunk)  # what has arrived, for live progress
                except (http.client.HTTPException, OSError) as e:
                    cause = "stalled" if isinstance(e, (socket.timeout, TimeoutError)) else "dropped"
                    raise _Transient(f"connection {cause} after {done:,} bytes ({type(e).__name__})") from None
                if not block:
                    break
                if size is not None and done + len(block) > size:  # an endless body stops here
                    raise _Mismatch(f"wrong size: the server sends more than the {size:,} bytes it announced")
                try:
                    f.write(block)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise UserError(f"{job.url}: disk full while writing {job.part} ({done:,} bytes written; "
                                        "free space and run again to resume)") from None
                    raise UserError(f"{job.url}: cannot write {job.part}: {e.strerror}") from None
                digest.update(block)
                done += len(block)
                received[0] += len(block)
                self.progress.add(len(block))
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                reason = "disk full" if e.errno == errno.ENOSPC else e.strerror
                raise UserError(f"{job.url}: {reason} while writing {job.part}") from None
        return digest


class _Record:
    """DIR/.gptforge-download.json: the source URL, size and sha256 of every file this command put in DIR."""

    def __init__(self, out: Path):
        self.path = out / RECORD
        self.lock = threading.Lock()
        try:
            self.files = json.loads(self.path.read_text()).get("files", {})
        except (OSError, ValueError, AttributeError):
            self.files = {}

    def check(self, job: Job) -> None:
        known = self.files.get(job.path.name)
        if known and known.get("source") != job.source and (job.path.exists() or job.part.exists()):
            raise UserError(f"{job.path} was downloaded from {known.get('source')}, not {job.source}: "
                            "use another --out directory for this dataset")

    def add(self, job: Job, size: int, sha256: str | None) -> None:
        with self.lock:
            entry = {"source": job.source, "size": size, "role": job.role}
            old = self.files.get(job.path.name, {})
            sha256 = sha256 or (old.get("sha256") if old.get("size") == size else None)
            if sha256:
                entry["sha256"] = sha256
            if old != entry:
                self.files[job.path.name] = entry
                atomic_write_json(self.path, {"files": self.files})


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
    if name.startswith("hf://") or (name in DATASETS and not mirror):
        # the Hub's own client (HF_ENDPOINT, the token file, hf-xet), gptforge's checks on top; a named dataset
        # with --mirror stays on the plain HTTP client below, which any static mirror of the files can serve
        from gptforge.data import hub

        if out is None:
            raise UserError(f"{name}: say where the files go with --out DIR")
        jobs = None if name.startswith("hf://") else plan(name, out, shards, start)
        return hub.download(name, out, shards, workers, start, mirror, jobs=jobs, summary=Summary(),
                            about=DATASETS[name].about if jobs else None, out_stream=out_stream,
                            progress_stream=progress_stream)
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    policy = policy or RetryPolicy()
    print_out = out_stream or sys.stdout
    if out is None and name not in PINNED:
        raise UserError(f"{name}: say where the files go with --out DIR")
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
    fetcher = _Fetcher(_Http(policy, mirror, token), policy, progress, stop, _Record(out))
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
    failures = [e for e in errors_in_order if not isinstance(e, _Stopped)]
    if failures:
        first = failures[0]
        if not isinstance(first, UserError):
            raise first  # a bug: keep its traceback
        more = f" (and {len(failures) - 1} more file(s) failed)" if len(failures) > 1 else ""
        raise UserError(f"{first}{more}")
    rate = summary.bytes / 1e6 / max(summary.seconds, 1e-9)
    print(f"done: {len(summary.fetched)} fetched, {len(summary.skipped)} already complete; "
          f"{summary.bytes / 1e6:,.1f} MB in {summary.seconds:.1f} s ({rate:,.1f} MB/s) in {out}"
          + (f"; validation file {val}" if val else ""), file=print_out, flush=True)
    return summary


def recorded_role(path: str | os.PathLike, sha256: str | None = None) -> str | None:
    """The role ("train" or "val") this command recorded for the file at `path`, if it is still the file it
    downloaded (same size, and same sha256 where both are known); None for any other file. prepare reads it
    so a named dataset's validation file becomes val."""
    path = Path(path)
    try:
        entry = json.loads((path.parent / RECORD).read_text()).get("files", {}).get(path.name)
        size = path.stat().st_size
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict) or entry.get("size") != size:
        return None
    if sha256 and entry.get("sha256") and entry["sha256"] != sha256:
        return None
    return entry.get("role")
