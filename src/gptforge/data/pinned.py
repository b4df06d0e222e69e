"""Single files fetched by name (`gptforge download hellaswag`), pinned by size, sha256 and git blob id.

The pins are known in advance, so a download is verified whatever the server says, and a file already in
the cache is checked without a request. The cache is $GPTFORGE_CACHE, else $XDG_CACHE_HOME/gptforge, else
~/.cache/gptforge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gptforge.fsutil import file_hashes


@dataclass(frozen=True)
class PinnedFile:
    """One file at a fixed URL whose size, sha256 and git blob id are known in advance."""

    url: str
    size: int
    sha256: str
    git_blob: str  # sha1(b"blob <size>\0" + data): what the file's git repository records
    folder: str  # its default directory under cache_dir()
    about: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


PINNED = {
    # rowanz/hellaswag (MIT) at commit a29ff8e, the head of its master branch since 2020. The size and sha256
    # are those of tensorflow/datasets' url_checksums/hellaswag.txt; the blob id is the repository's own.
    "hellaswag": PinnedFile(
        "https://raw.githubusercontent.com/rowanz/hellaswag/a29ff8e9a04bba4bd6588223785ce105328adc57/data/"
        "hellaswag_val.jsonl", 12_246_618, "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588",
        "0f5ee25d72216f12317d5d8a7b92deafa423d81e", "hellaswag",
        "HellaSwag validation set (rowanz/hellaswag, MIT): 10,042 items, 12.2 MB"),
}


def cache_dir() -> Path:
    """Where named single files go unless --out says otherwise: $GPTFORGE_CACHE, else ~/.cache/gptforge."""
    if os.environ.get("GPTFORGE_CACHE"):
        return Path(os.environ["GPTFORGE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptforge"


def git_blob_id(path: str | os.PathLike) -> str:
    return file_hashes(path)[1]


def pinned_mismatch(path: str | os.PathLike, pinned: PinnedFile) -> str | None:
    """Why the file at `path` is not the pinned one, or None when its size, sha256 and blob id all match."""
    size = os.path.getsize(path)
    if size != pinned.size:
        return f"{size:,} bytes, the pin says {pinned.size:,}"
    sha, blob = file_hashes(path)
    if sha != pinned.sha256:
        return f"sha256 {sha} differs from the pinned {pinned.sha256}"
    if blob != pinned.git_blob:
        return f"git blob id {blob} differs from the pinned {pinned.git_blob}"
    return None
