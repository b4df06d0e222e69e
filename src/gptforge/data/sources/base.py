"""What every input reader is: a Source (one file) that yields documents, with a fingerprint and counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gptforge.data.sources.compressed import DECOMPRESSION_ERRORS, compression_of, damaged, head, open_stream
from gptforge.errors import UserError
from gptforge.fsutil import sha256_file

_REPLACEMENT = "\ufffd".encode()


@dataclass
class SourceOptions:
    text_column: str = "text"  # parquet column / jsonl field holding the document text
    doc_separator: str | None = None  # split .txt files into documents on this string (None: <|endoftext|>)
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
        """Raise UserError now if the file cannot be read (or decompressed), before prepare writes anything."""
        try:
            if compression_of(self.path):
                head(self.path)
            else:
                with open(self.path, "rb") as f:
                    f.read(1)
        except OSError as e:
            raise UserError(f"source {self.path}: cannot be read ({e.strerror})") from None

    def blocks(self, size: int = 1 << 22) -> Iterator[bytes]:
        """The file's bytes (decompressed), in blocks; data that stops decompressing is a UserError."""
        with self._open() as f:
            yield from self._guarded(iter(lambda: f.read(size), b""))

    def lines(self) -> Iterator[bytes]:
        """The file's lines (decompressed), as bytes with their line ends."""
        with self._open() as f:
            yield from self._guarded(iter(f))

    def _guarded(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """`pieces` of the decompressed stream; one that fails to decompress ends in a UserError naming where."""
        done = 0
        while True:
            try:
                piece = next(pieces)
            except StopIteration:
                return
            except DECOMPRESSION_ERRORS as e:
                raise damaged(self.path, e, done) from None
            done += len(piece)
            yield piece

    def _open(self):
        try:
            return open_stream(self.path)
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
            self.counters["invalid_utf8_replaced"] += text.count("\ufffd") - data.count(_REPLACEMENT)
            return text

    def decoded_blocks(self, size: int = 1 << 22) -> Iterator[str]:
        """The file as text in blocks: UTF-8 decoded across block edges, undecodable bytes replaced and counted."""
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        edge = b""  # the last bytes of the previous block: a U+FFFD in the file may straddle two blocks
        for block in self.blocks(size):
            text = decoder.decode(block)
            if "\ufffd" in text:
                self.counters["invalid_utf8_replaced"] += text.count("\ufffd") - (edge + block).count(_REPLACEMENT)
            edge = block[-2:]
            yield text
        text = decoder.decode(b"", final=True)
        if text:
            self.counters["invalid_utf8_replaced"] += text.count("\ufffd")
            yield text
