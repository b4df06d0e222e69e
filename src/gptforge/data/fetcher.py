"""One file over HTTP, as `gptforge download` fetches it: into `DIR/.NAME.part`, resumed with Range requests after a
dropped connection, retried with backoff on 5xx and connection errors (4xx are final), measured against the
announced size and checked against a known sha256 before it is renamed into place. Redirects are followed hop by
hop, at most MAX_REDIRECTS, and only to http and https URLs; the token goes only to Hugging Face and the mirror.
Standard library only; download.py plans the files and runs the workers.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import random
import shutil
import socket
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from gptforge.data.pinned import PinnedFile, git_blob_id, pinned_mismatch
from gptforge.errors import UserError
from gptforge.fsutil import fsync_dir

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
TOKEN_HOSTS = ("huggingface.co",)  # the token is sent only here and to the --mirror host
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


# --------------------------------------------------------------------------------------------- HTTP

class _Transient(Exception):
    """Worth retrying: 5xx, 429, a dropped or stalled connection."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Mismatch(Exception):
    """The bytes are not what the server announced: discard the partial file and fetch again once."""


class Stopped(Exception):
    """Another file failed or the user interrupted: leave the .part file for a later resume."""


class _HttpStatus(UserError):
    """A final HTTP answer (4xx other than 429): the message names the URL and the status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # redirects are followed by Http.open, hop by hop
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


class Http:
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


# --------------------------------------------------------------------------------------------- one file, with retries


class Fetcher:
    def __init__(self, http: Http, policy: RetryPolicy, progress, stop: threading.Event, record):
        self.http, self.policy, self.progress, self.stop, self.record = http, policy, progress, stop, record

    def _retrying(self, job: Job, step):
        """Run step() until it succeeds; a failure that made progress (a longer .part) resets the count."""
        failures, best, restarts = 0, -1, 0
        while True:
            if self.stop.is_set():
                raise Stopped()
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
        if job.pinned and (blob := git_blob_id(job.part)) != job.pinned.git_blob:
            raise _Mismatch(f"git blob id {blob} is not the pinned {job.pinned.git_blob}")
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
                    raise Stopped()
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
