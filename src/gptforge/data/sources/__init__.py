"""Input sources. Each file becomes one Source that yields its documents (str) lazily.

`open_sources` expands the user's paths (files, directories, globs) and picks the reader by file
name (base.py defines what a reader is): the extension, wikiextractor's wiki_NN names, and for a
compressed file the name inside (x.jsonl.gz) or, when that says nothing (x.bz2), its first bytes.
A path that yields no file of a supported kind is an error naming what it found. Every Source has a
content fingerprint (for the manifest) and counters that prepare adds to its summary (empty rows
skipped, undecodable bytes replaced, redirects skipped, ...).
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from gptforge.data.sources.base import Source, SourceOptions
from gptforge.data.sources.compressed import compression_of, head, inner_name
from gptforge.data.sources.parquet import ParquetSource
from gptforge.data.sources.text import JsonlSource, TextSource
from gptforge.data.sources.wikiextractor import FILE_NAME, WikiExtractorSource, looks_like
from gptforge.data.sources.wikipedia import WikipediaSource
from gptforge.errors import UserError
from gptforge.fsutil import is_temporary

__all__ = ["SUPPORTED", "Source", "SourceOptions", "expand_paths", "open_sources"]

SUPPORTED = (".parquet; .txt, .md (split on <|endoftext|>); .jsonl, .json (JSON lines); wikiextractor's wiki_NN "
             "files; Wikipedia dumps .xml, .xml.bz2; text, JSON lines and wiki_NN compressed as .gz, .bz2 or .zst")
_TEXT = (".txt", ".md", ".text")
_JSONL = (".jsonl", ".json", ".ndjson")


def _reader_for(path: Path):
    """The Source class for a file, or None for a kind gptforge does not read."""
    name, compression = inner_name(path), compression_of(path)
    if name.endswith(_TEXT):
        return TextSource
    if name.endswith(_JSONL):
        return JsonlSource
    if FILE_NAME.fullmatch(name):
        return WikiExtractorSource
    if compression is None:
        return ParquetSource if name.endswith(".parquet") else WikipediaSource if name.endswith(".xml") else None
    if compression == "bzip2" and (name.endswith(".xml") or ".xml-p" in name):  # enwiki-...-articles1.xml-p1p41242.bz2
        return WikipediaSource
    if Path(name).suffix[1:].isalpha():
        return None  # x.csv.gz, x.xml.gz, x.tar.gz: a kind gptforge does not read
    return _by_content(path)  # x.bz2, shard.00001.gz


def _by_content(path: Path):
    """A compressed file whose name says nothing of what is inside: its first bytes decide."""
    try:
        start = head(path)
    except UserError:  # damaged: a reader's check() will say how
        return WikipediaSource if compression_of(path) == "bzip2" else TextSource
    if b"<mediawiki" in start[:4096]:
        return WikipediaSource if compression_of(path) == "bzip2" else None
    if looks_like(start):
        return WikiExtractorSource
    if b"\0" in start:
        return None  # binary: no text inside
    return JsonlSource if start.lstrip()[:1] == b"{" else TextSource


def _describe(files: list[Path]) -> str:
    """'12 files (a.csv, b.csv, c.zip, ...)' for a message."""
    shown = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
    return f"{len(files)} file{'s' if len(files) != 1 else ''} ({shown})"


def _expand(specs: list[str]) -> list[tuple[Path, type]]:
    """(file, its Source class) for every file named by the user, in order, each file once."""
    found: dict[str, tuple[Path, type]] = {}
    for spec in specs:
        path = Path(spec)
        if any(ch in spec for ch in "*?["):
            files = [Path(m) for m in sorted(glob.glob(spec, recursive=True)) if Path(m).is_file()]
            where = "the pattern matches"
        elif not path.exists():
            raise UserError(f"source {spec} does not exist")
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            where = "the directory holds"
        else:
            files, where = [path], "it is"
        files = [p for p in files if not is_temporary(p.name)]
        if not files:
            raise UserError(f"source {spec}: the pattern matches no files" if where.startswith("the pattern")
                            else f"source {spec}: the directory holds no files")
        readers = [(p, _reader_for(p)) for p in files]
        usable = [(p, reader) for p, reader in readers if reader is not None]
        if not usable:
            what = (f"unknown file type {path.suffix or '(no extension)'!r}" if where == "it is"
                    else f"{where} {_describe(files)}, none of a supported kind")
            raise UserError(f"source {spec}: {what}; supported: {SUPPORTED}")
        if len(usable) < len(readers):
            skipped = [p for p, reader in readers if reader is None]
            print(f"note: {spec}: skipping {_describe(skipped)} of kinds gptforge does not read", file=sys.stderr)
        for p, reader in usable:
            found.setdefault(os.path.realpath(p), (p, reader))
    return list(found.values())


def expand_paths(specs: list[str]) -> list[Path]:
    """Files named by the user: plain paths, directories (recursively, sorted) and glob patterns."""
    return [p for p, _ in _expand(specs)]


def open_sources(specs: list[str], options: SourceOptions | None = None) -> list[Source]:
    options = options or SourceOptions()
    return [reader(p, options) for p, reader in _expand(specs)]
