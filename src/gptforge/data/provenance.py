"""DIR/.gptforge-download.json: where each downloaded file came from (source URL, size, sha256, role; a Hub file
also its repo, revision, path and git blob id). Two datasets whose files share names (FineWeb and FineWeb-Edu
samples both use 000_00000.parquet) so never overwrite each other silently, and prepare knows a named dataset's
validation file by it."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_json

RECORD = ".gptforge-download.json"


class Record:
    """The record of one download directory, shared by the transfer threads."""

    def __init__(self, out: Path):
        self.path, self.lock = out / RECORD, threading.Lock()
        try:
            files = json.loads(self.path.read_text(encoding="utf-8")).get("files")
        except (OSError, ValueError, AttributeError):
            files = None
        self.files = files if isinstance(files, dict) else {}

    def get(self, name: str) -> dict:
        return self.files.get(name) or {}

    def check_source(self, dest: Path, source: str, present: bool) -> None:
        """Refuse to fetch `source` into `dest` over a file (`present`) that came from elsewhere."""
        known = self.get(dest.name).get("source")
        if known and known != source and present:
            raise UserError(f"{dest} was downloaded from {known}, not {source}: use another --out directory for this "
                            "dataset")

    def put(self, name: str, entry: dict) -> None:
        with self.lock:
            if self.files.get(name) != entry:
                self.files[name] = entry
                atomic_write_json(self.path, {"files": self.files})


def recorded_role(path: str | os.PathLike, sha256: str | None = None, record: Record | None = None) -> str | None:
    """The role ("train" or "val") a download recorded for the file at `path`, if it is still the file it
    downloaded (same size, and same sha256 where both are known); None for any other file. prepare reads it
    so a named dataset's validation file becomes val. `record`: its folder's record, read once for many files."""
    path = Path(path)
    entry = (record or Record(path.parent)).get(path.name)
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if not isinstance(entry, dict) or entry.get("size") != size:
        return None
    if sha256 and entry.get("sha256") and entry["sha256"] != sha256:
        return None
    return entry.get("role")
