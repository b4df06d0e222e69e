"""What every input reader is: a Source (one file) that yields documents, with a fingerprint and counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gptforge.errors import UserError
from gptforge.fsutil import sha256_file


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
            self._fingerprint = "sha256:" + sha256_file(self.path)
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
