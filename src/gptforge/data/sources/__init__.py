"""Input sources. Each file becomes one Source that yields its documents (str) lazily.

`open_sources` expands the user's paths (files, directories, globs) and picks the reader by file
extension (base.py defines what a reader is). Every Source has a content fingerprint (for the manifest)
and counters that prepare adds to its summary (empty rows skipped, undecodable bytes replaced,
redirects skipped, ...).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from gptforge.data.sources.base import Source, SourceOptions
from gptforge.data.sources.parquet import ParquetSource
from gptforge.data.sources.text import JsonlSource, TextSource
from gptforge.data.sources.wikipedia import WikipediaSource
from gptforge.errors import UserError
from gptforge.fsutil import is_temporary

__all__ = ["Source", "SourceOptions", "expand_paths", "open_sources"]


def _reader_for(path: Path):
    name = path.name.lower()
    if name.endswith(".parquet"):
        return ParquetSource
    if name.endswith((".txt", ".md", ".text")):
        return TextSource
    if name.endswith(".jsonl"):
        return JsonlSource
    if name.endswith((".xml", ".xml.bz2", ".bz2")):
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
                raise UserError(
                    f"source {spec}: unknown file type {path.suffix or '(no extension)'!r}; supported: {SUPPORTED}"
                )
            found.append(path)
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.realpath(p), p)
    return list(unique.values())


def open_sources(specs: list[str], options: SourceOptions | None = None) -> list[Source]:
    options = options or SourceOptions()
    return [_reader_for(p)(p, options) for p in expand_paths(specs)]

