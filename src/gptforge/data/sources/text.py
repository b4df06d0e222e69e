"""Plain text (.txt/.md) and JSON lines (.jsonl/.json), each also as .gz, .bz2 or .zst.

A text file is split into documents on `<|endoftext|>` (how nanoGPT-style exports separate them),
or on --doc-separator; a file without the separator is one document. The file is read as a stream
in blocks, so a file of any size, with any number of documents, takes linear time and one
document's worth of memory.
"""

from __future__ import annotations

import json
from typing import Iterator

from gptforge.data.sources.base import Source
from gptforge.errors import UserError

END_OF_TEXT = "<|endoftext|>"


class TextSource(Source):
    kind = "text"
    block_bytes = 1 << 22

    def documents(self) -> Iterator[str]:
        sep = self.options.doc_separator or END_OF_TEXT
        keep = len(sep) - 1  # characters at the end of a block that may begin a separator
        pieces: list[str] = []  # the document being read
        carry = ""  # the last `keep` characters, searched again with the next block
        first = True
        for block in self.decoded_blocks(self.block_bytes):
            *complete, rest = (carry + block).split(sep)
            if complete:
                complete[0] = "".join(pieces) + complete[0]
                yield from self._non_empty(complete, first)
                pieces, first = [], False
            cut = max(len(rest) - keep, 0)
            pieces.append(rest[:cut])
            carry = rest[cut:]
        last = "".join(pieces) + carry
        if last.strip() or first:  # an empty piece after the last separator is no document left out
            yield from self._non_empty([last], first)

    def _non_empty(self, docs: list[str], first: bool) -> Iterator[str]:
        for i, doc in enumerate(docs):
            if doc.strip():
                yield doc
            elif not (first and i == 0 and not doc):  # a file that starts with the separator has nothing before it
                self.counters["empty_skipped"] += 1


_JSON_TYPES = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}


class JsonlSource(Source):
    kind = "jsonl"

    def documents(self) -> Iterator[str]:
        field = self.options.text_column
        for line_no, obj in self.objects():
            if field not in obj:
                raise UserError(
                    f"{self.path}:{line_no}: no field {field!r} (it has: {', '.join(map(str, obj))}); "
                    "choose one with --text-column"
                )
            text = obj[field]
            if text is None or isinstance(text, str) and not text.strip():
                self.counters["empty_skipped"] += 1
                continue
            yield text_field(self.path, line_no, field, text)

    def objects(self) -> Iterator[tuple[int, dict]]:
        """(line number, JSON object) for every non-blank line."""
        for line_no, raw in enumerate(self.lines(), start=1):
            if not raw.strip():
                continue
            if line_no == 1 and raw.lstrip()[:1] == b"[":
                raise UserError(f"{self.path}: a JSON array; expected JSON lines (one object per line), "
                                "e.g. jq -c '.[]' FILE > FILE.jsonl")
            try:
                obj = json.loads(self.decode(raw))
            except ValueError as e:
                raise UserError(f"{self.path}:{line_no}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{self.path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj


def text_field(path, line_no: int, field: str, value) -> str:
    """A text field's value, or a UserError naming what it holds instead (a number was counted "empty")."""
    if isinstance(value, str):
        return value
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    raise UserError(f"{path}:{line_no}: field {field!r} holds {kind}, not text; choose the text field with "
                    "--text-column")
