"""Input sources. Each file becomes one Source that yields its documents (str) lazily.

`open_sources` expands the user's paths (files, directories, globs) and picks the reader by file
extension. Every Source has a content fingerprint (for the manifest) and counters that prepare
adds to its summary (empty rows skipped, undecodable bytes replaced, redirects skipped, ...).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gptforge.errors import UserError
from gptforge.fsutil import is_temporary


@dataclass
class SourceOptions:
    text_column: str = "text"  # parquet column / jsonl field holding the document text
    doc_separator: str | None = None  # split .txt files into documents on this string
    keep_partial: bool = False  # wikipedia: keep articles read before a corrupt part of a dump
    workers: int | None = None  # processes a source may use for its own parsing (None: all cores)


class Source:
    """One input file. Subclasses set `kind` and implement `documents()`."""

    kind = "?"

    def __init__(self, path: Path, options: SourceOptions):
        self.path = path
        self.options = options
        self.counters: Counter[str] = Counter()
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """sha256 of the file's bytes: the same content under any name is the same source."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            self._fingerprint = "sha256:" + h.hexdigest()
        return self._fingerprint

    def check(self) -> None:
        """Raise UserError now if the file cannot be read, before prepare writes anything."""
        try:
            with open(self.path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise UserError(f"source {self.path}: cannot be read ({e.strerror})") from None

    def documents(self) -> Iterator[str]:
        raise NotImplementedError

    def decode(self, data: bytes) -> str:
        """UTF-8 with undecodable bytes replaced by U+FFFD and counted, never an exception."""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            self.counters["invalid_utf8_replaced"] += text.count("\ufffd") - data.count("\ufffd".encode())
            return text


def _reader_for(path: Path):
    name = path.name.lower()
    if name.endswith(".parquet"):
        from gptforge.data.sources.parquet import ParquetSource

        return ParquetSource
    if name.endswith((".txt", ".md", ".text")):
        from gptforge.data.sources.text import TextSource

        return TextSource
    if name.endswith(".jsonl"):
        from gptforge.data.sources.text import JsonlSource

        return JsonlSource
    if name.endswith((".xml", ".xml.bz2", ".bz2")):
        from gptforge.data.sources.wikipedia import WikipediaSource

        return WikipediaSource
    return None


SUPPORTED = ".parquet, .txt, .md, .jsonl, .xml, .xml.bz2"


def expand_paths(specs: list[str]) -> list[Path]:
    """Files named by the user: plain paths, directories (recursively, sorted) and glob patterns."""
    found: list[Path] = []
    for spec in specs:
        if any(ch in spec for ch in "*?["):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise UserError(f"source {spec}: the pattern matches no files")
            found.extend(Path(m) for m in matches if Path(m).is_file() and _reader_for(Path(m)))
            continue
        path = Path(spec)
        if not path.exists():
            raise UserError(f"source {spec} does not exist")
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*")
                if p.is_file() and not is_temporary(p.name) and _reader_for(p) is not None
            )
            if not inside:
                raise UserError(f"source directory {spec} holds no files of a supported kind ({SUPPORTED})")
            found.extend(inside)
        else:
            if _reader_for(path) is None:
                raise UserError(f"source {spec}: unknown file type {path.suffix or '(no extension)'!r}; supported: {SUPPORTED}")
            found.append(path)
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.realpath(p), p)
    return list(unique.values())


def open_sources(specs: list[str], options: SourceOptions | None = None) -> list[Source]:
    options = options or SourceOptions()
    return [_reader_for(p)(p, options) for p in expand_paths(specs)]

