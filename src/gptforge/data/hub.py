"""Dataset files from the Hugging Face Hub through `huggingface_hub`, verified by gptforge before they appear.

`gptforge download hf://datasets/OWNER/REPO[@REVISION]/GLOB` and the named datasets come here, so what users
have set up for the Hub applies: the token of `hf auth login` or HF_TOKEN, an HF_ENDPOINT mirror, hf-xet when
installed. The revision is resolved to one commit first, so every file comes from the same snapshot. Each file
is fetched into DIR/.gptforge-hub/ (a name readers skip), its size and hash checked against the Hub's listing
(the sha256 of LFS files, the git blob id of small ones), and only then renamed into DIR. The provenance file
download.py keeps (DIR/.gptforge-download.json) gets, besides its own keys, the repo, commit and path of each file.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from gptforge.data.provenance import Record
from gptforge.errors import UserError, raise_first
from gptforge.fsutil import file_hashes, fsync_dir
from gptforge.progress import StatusLine

PREFIX = "hf://datasets/"
STAGING = ".gptforge-hub"
PATHS_PER_CALL = 200  # paths-info requests are batched


@dataclass
class RetryPolicy:
    attempts: int = 5  # tries of one file (or listing) before giving up
    base_delay: float = 2.0  # seconds, doubled after each failure
    max_delay: float = 60.0


@dataclass(frozen=True)
class HubFile:
    repo: str
    commit: str
    path: str  # inside the repo
    name: str  # inside DIR (its key in the provenance file)
    dest: Path
    role: str  # "train" or "val"
    source: str  # the canonical https URL: the file's identity in the provenance file
    size: int
    sha256: str | None  # LFS files
    git_oid: str  # git blob id (sha1 of "blob SIZE\0" + bytes): what the Hub lists for small files


# ------------------------------------------------------------------------------------------------ requests

def parse_url(url: str) -> tuple[str, str, str]:
    """hf://datasets/OWNER/REPO[@REVISION][/GLOB] -> (repo, revision, glob); a revision with '/' is %-encoded."""
    rest = url[len(PREFIX):] if url.startswith(PREFIX) else None
    parts = (rest or "").split("/", 2)
    if rest is None or len(parts) < 2 or not parts[0] or not parts[1]:
        raise UserError(f"{url}: expected hf://datasets/OWNER/REPO[@REVISION]/GLOB, "
                        "e.g. hf://datasets/karpathy/climbmix-400b-shuffle/shard_0000*.parquet")
    name, _, revision = parts[1].partition("@")
    if "@" in parts[1] and not revision:
        raise UserError(f"{url}: empty revision after '@'")
    return f"{parts[0]}/{name}", unquote(revision) or "main", parts[2] if len(parts) > 2 else "**"


def glob_regex(pattern: str) -> re.Pattern:
    """A repo path glob: `*` and `?` stay within one folder, `**` crosses folders, [abc] is a set."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            out.append("[" + pattern[i + 1:end].replace("!", "^", 1) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _literal_folder(pattern: str) -> str:
    """The folder of a glob before its first wildcard: listed recursively, and cut from local names."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return head.rsplit("/", 1)[0] if "/" in head else ""


def canonical_url(repo: str, revision: str, path: str) -> str:
    return f"https://huggingface.co/datasets/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


def split_canonical_url(url: str) -> tuple[str, str, str] | None:
    """(repo, revision, path) of a huggingface.co dataset resolve URL, else None."""
    parts = urlsplit(url)
    m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", parts.path)
    if parts.netloc != "huggingface.co" or not m:
        return None
    return m.group(1), unquote(m.group(2)), unquote(m.group(3))


# ------------------------------------------------------------------------------------------------ the Hub

def _transient_errors() -> tuple[type[BaseException], ...]:
    """Connection-level failures of whichever HTTP library this huggingface_hub uses (requests or httpx)."""
    found: list[type[BaseException]] = [OSError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            found.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _explain(error: BaseException, what: str) -> UserError | None:
    """A final Hub answer as one line, or None when the error is worth retrying."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    login = "log in with `hf auth login` or set HF_TOKEN"
    if isinstance(error, LocalEntryNotFoundError):  # the Hub could not be asked (and no cached copy): transient
        return None
    if isinstance(error, GatedRepoError):
        return UserError(f"{what}: the dataset is gated: accept its terms on the Hub, then {login}")
    if isinstance(error, RepositoryNotFoundError):
        return UserError(f"{what}: no such dataset repository (or it is private: {login})")
    if isinstance(error, RevisionNotFoundError):
        return UserError(f"{what}: no such revision (branch, tag or commit) in the repository")
    if isinstance(error, EntryNotFoundError):
        return UserError(f"{what}: no such file at this revision")
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status is not None and status < 500 and status not in (408, 429):
        hint = f" ({login})" if status in (401, 403) else ""
        return UserError(f"{what}: HTTP {status} {_first_line(error)}{hint}")
    return None


def _first_line(error: BaseException) -> str:
    from huggingface_hub.utils import LocalEntryNotFoundError

    if isinstance(error, LocalEntryNotFoundError) and error.__cause__ is not None:
        error = error.__cause__  # what kept the Hub from answering, not "not in the local cache"
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class _Mismatch(Exception):
    """The bytes fetched are not the file the Hub lists: fetched again from scratch."""


class _Hub:
    def __init__(self, endpoint: str, policy: RetryPolicy, say):
        from huggingface_hub import HfApi

        self.endpoint, self.policy, self.say = endpoint, policy, say
        self.api = HfApi(endpoint=endpoint)
        self.transient = _transient_errors()
        self.stop = threading.Event()

    def call(self, what: str, fn, mismatch=None):
        """fn() retried with backoff on 429, 5xx and dropped connections; final answers become one UserError."""
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return fn(attempt)
            except _Mismatch as e:
                if attempt >= 2:
                    raise UserError(f"{what}: {e} (fetched twice, wrong both times; nothing kept)") from None
                self.say(f"{what}: {e}; fetching it again")
                continue
            except self.transient as e:
                final = _explain(e, what)
                if final is not None:
                    raise final from None
                if attempt == self.policy.attempts:
                    raise UserError(f"{what}: {_first_line(e)} (gave up after {attempt} attempts)") from None
                delay = min(self.policy.max_delay, self.policy.base_delay * 2 ** (attempt - 1))
                self.say(f"{what}: {_first_line(e)}; retrying in {delay:.0f}s ({attempt}/{self.policy.attempts})")
                if self.stop.wait(delay):
                    raise KeyboardInterrupt from None

    def resolve(self, repo: str, revision: str) -> str:
        info = self.call(f"hf://datasets/{repo}@{revision}",
                         lambda _: self.api.repo_info(repo, repo_type="dataset", revision=revision))
        return info.sha

    def listed(self, repo: str, commit: str, pattern: str) -> list:
        folder = _literal_folder(pattern)
        regex = glob_regex(pattern)

        def fn(_):
            tree = self.api.list_repo_tree(repo, path_in_repo=folder or None, recursive=True, revision=commit,
                                           repo_type="dataset")
            # files only, and as a shell glob, none with a hidden part (every repo has a .gitattributes)
            return [f for f in tree if hasattr(f, "blob_id") and regex.fullmatch(f.path)
                    and not any(part.startswith(".") for part in f.path.split("/"))]
        return self.call(f"hf://datasets/{repo}@{commit[:12]}/{pattern}", fn)

    def paths_info(self, repo: str, commit: str, paths: list[str]) -> dict:
        found = {}
        for i in range(0, len(paths), PATHS_PER_CALL):
            batch = paths[i:i + PATHS_PER_CALL]
            infos = self.call(f"hf://datasets/{repo}@{commit[:12]}",
                              lambda _: self.api.get_paths_info(repo, batch, revision=commit, repo_type="dataset"))
            found.update({f.path: f for f in infos if hasattr(f, "blob_id")})
        return found

    def fetch(self, f: HubFile, staging: Path) -> tuple[Path, str]:
        """The file fetched into staging and checked: (its path there, its sha256)."""
        from huggingface_hub import hf_hub_download

        def attempt(n: int):
            staged = staging / f.path
            staged.unlink(missing_ok=True)
            # after a mismatch, bypass copies (the user's HF cache) that may hold the same wrong bytes
            got = Path(hf_hub_download(f.repo, f.path, repo_type="dataset", revision=f.commit, local_dir=staging,
                                       endpoint=self.endpoint, force_download=n > 1))
            return got, _check(f, got)
        return self.call(f"hf://datasets/{f.repo}/{f.path}", attempt)


def _check(f: HubFile, path: Path, remove: bool = True) -> str:
    """The file's sha256 if it is the file the Hub lists, else _Mismatch (removing the file if `remove`)."""
    size = path.stat().st_size
    sha, git = file_hashes(path, blob=not f.sha256)  # (only small files lack a sha256: their blob id is known)
    problem = None
    if size != f.size:
        problem = f"wrong size: the Hub lists {f.size:,} bytes, got {size:,}"
    elif f.sha256 and sha != f.sha256:
        problem = f"sha256 mismatch: the Hub lists {f.sha256}, the bytes hash to {sha}"
    elif git is not None and git != f.git_oid:
        problem = f"git blob id mismatch: the Hub lists {f.git_oid}, the bytes hash to {git}"
    if problem:
        if remove:
            path.unlink(missing_ok=True)
        raise _Mismatch(problem)
    return sha


# ------------------------------------------------------------------------------------------------ provenance

class _Record(Record):
    def check(self, f: HubFile) -> None:
        self.check_source(f.dest, f.source, f.dest.exists())

    def add(self, f: HubFile, sha256: str) -> None:
        self.put(f.name, {"source": f.source, "size": f.size, "role": f.role, "sha256": sha256, "repo": f.repo,
                          "revision": f.commit, "path": f.path, "git_oid": f.git_oid})


def _complete(f: HubFile, record: _Record) -> bool:
    """The file in DIR is the one the Hub lists: known from the record, else hashed once."""
    if not f.dest.is_file() or f.dest.stat().st_size != f.size:
        return False
    entry = record.get(f.name)
    if entry.get("git_oid") == f.git_oid or (f.sha256 and entry.get("sha256") == f.sha256):
        return True
    try:
        record.add(f, _check(f, f.dest, remove=False))  # replaced only once a good copy has been fetched
        return True
    except _Mismatch:
        return False


# ------------------------------------------------------------------------------------------------ the command

def _plan_url(hub: _Hub, url: str, out: Path, shards: int | None, start: int) -> list[HubFile]:
    repo, revision, pattern = parse_url(url)
    commit = hub.resolve(repo, revision)
    found = sorted(hub.listed(repo, commit, pattern), key=lambda f: f.path)
    if not found:
        raise UserError(f"{url}: no file of the dataset matches {pattern!r} at {revision} ({commit[:12]})")
    chosen = found[start:start + shards] if shards is not None else found[start:]
    if not chosen:
        raise UserError(f"{url}: {len(found)} files match; --start {start} leaves none")
    folder = _literal_folder(pattern)
    return [_hub_file(repo, revision, commit, info, out, info.path[len(folder):].lstrip("/"), "train")
            for info in chosen]


def _plan_jobs(hub: _Hub, jobs, out: Path) -> list[HubFile]:
    """download.py's plan for a named dataset (canonical URLs, local paths, roles) resolved on the Hub."""
    wanted = [(split_canonical_url(j.source), j) for j in jobs]
    files = []
    for repo, revision in dict.fromkeys((w[0], w[1]) for w, _ in wanted):
        commit = hub.resolve(repo, revision)
        mine = [(w[2], j) for w, j in wanted if (w[0], w[1]) == (repo, revision)]
        infos = hub.paths_info(repo, commit, [path for path, _ in mine])
        missing = [path for path, _ in mine if path not in infos]
        if missing:
            raise UserError(f"hf://datasets/{repo}@{revision}: {missing[0]} is not in the dataset "
                            f"({len(missing)} file(s) missing at commit {commit[:12]})")
        files += [_hub_file(repo, revision, commit, infos[path], out, job.path.name, job.role) for path, job in mine]
    return files


def _hub_file(repo: str, revision: str, commit: str, info, out: Path, name: str, role: str) -> HubFile:
    lfs = getattr(info, "lfs", None)
    sha = lfs.sha256 if lfs is not None else None
    return HubFile(repo, commit, info.path, name, out / name, role, canonical_url(repo, revision, info.path),
                   int(info.size), sha, info.blob_id)


def download(name: str, out, shards: int | None, workers: int, start: int = 0, endpoint: str | None = None, *,
             jobs=None, summary, about: str | None = None, policy: RetryPolicy | None = None,
             out_stream=None, progress_stream=None):
    """Fetch hf://datasets/... (or the planned `jobs` of a named dataset) into `out`; fills and returns `summary`."""
    import huggingface_hub
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hf_logging

    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    if shards is not None and shards < 1 or start < 0:
        raise UserError(f"--shards must be at least 1 and --start at least 0 (got --shards {shards} --start {start})")
    print_out, out = out_stream or sys.stdout, Path(out)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    line = StatusLine(progress_stream or sys.stderr)
    hub = _Hub(endpoint, policy or RetryPolicy(), line.say)
    files = _plan_jobs(hub, jobs, out) if jobs is not None else _plan_url(hub, name, out, shards, start)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the directory ({e.strerror})") from None
    val = [f for f in files if f.role == "val"]
    summary.val_file = val[0].dest if val else None
    xet = "hf-xet installed" if _has_xet() else "no hf-xet (pip install hf-xet for faster transfers)"
    token = "a token" if huggingface_hub.get_token() else "no token"
    print(f"download {name}: {len(files) - len(val)} train file(s)" + (f" + validation {val[0].dest.name}" if val
          else "") + f" from {files[0].repo} at {files[0].commit[:12]} -> {out.resolve()}", file=print_out, flush=True)
    print(f"  {endpoint}, {token}, {xet}, {min(workers, len(files))} worker(s)" + (f"; {about}" if about else ""),
          file=print_out, flush=True)
    disable_progress_bars()  # one gptforge status line instead of a tqdm bar per file and thread
    hf_logging.set_verbosity_error()  # its retry warnings too: gptforge says what it retries
    record, started = _Record(out), time.monotonic()
    _run_all(hub, files, out, record, workers, summary, line)
    shutil.rmtree(out / STAGING, ignore_errors=True)
    summary.seconds = time.monotonic() - started
    print(summary.done_line(out), file=print_out, flush=True)
    return summary


def _has_xet() -> bool:
    import importlib.util

    return importlib.util.find_spec("hf_xet") is not None and os.environ.get("HF_HUB_DISABLE_XET", "") in ("", "0")


def _run_all(hub: _Hub, files: list[HubFile], out: Path, record: _Record, workers: int, summary, line) -> None:
    """Fetch on `workers` daemon threads (Ctrl-C ends the process without waiting for transfers)."""
    todo: queue.Queue = queue.Queue()
    for f in files:
        todo.put(f)
    errors: list[BaseException] = []
    lock, started = threading.Lock(), time.monotonic()

    def one(f: HubFile) -> None:
        record.check(f)
        if _complete(f, record):
            with lock:
                summary.skipped.append(f.dest)
            return
        staged, sha = hub.fetch(f, out / STAGING)
        f.dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, f.dest)
        fsync_dir(f.dest.parent)
        record.add(f, sha)
        with lock:
            summary.fetched.append(f.dest)
            summary.bytes += f.size

    def worker() -> None:
        while not errors and not hub.stop.is_set():
            try:
                f = todo.get_nowait()
            except queue.Empty:
                return
            try:
                one(f)
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)
            done = len(summary.fetched) + len(summary.skipped)
            elapsed = max(time.monotonic() - started, 1e-9)
            line.show(f"  {done}/{len(files)} files  {summary.bytes / 1e6:,.1f} MB  "
                      f"{summary.bytes / 1e6 / elapsed:,.1f} MB/s")

    threads = [threading.Thread(target=worker, daemon=True, name=f"hub-{i}") for i in range(min(workers, len(files)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)  # a timeout keeps Ctrl-C responsive
    except KeyboardInterrupt:
        hub.stop.set()
        line.clear()
        raise
    line.clear()
    raise_first(errors)
