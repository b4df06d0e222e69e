"""Plain text (.txt/.md: one document per file, or split on --doc-separator) and .jsonl (one JSON object a line)."""

from __future__ import annotations

import json
from typing import Iterator

from gptforge.data.sources.base import Source
from gptforge.errors import UserError


class TextSource(Source):
    kind = "text"

    def documents(self) -> Iterator[str]:
        sep = self.options.doc_separator
        if not sep:
            text = self.decode(self.path.read_bytes())
            if text.strip():
                yield text
            else:
                self.counters["empty_skipped"] += 1
            return
        # stream the file in blocks so a large file split into documents never sits in memory whole
        pending = ""
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                pending += self._decode_block(block)
                *complete, pending = pending.split(sep)
                yield from self._non_empty(complete)
            pending += self._decode_block(b"", final=True)
        yield from self._non_empty([pending])

    _decoder = None

    def _decode_block(self, block: bytes, final: bool = False) -> str:
        # an incremental decoder keeps a multi-byte character that straddles two blocks intact
        if self._decoder is None:
            import codecs

            self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = self._decoder.decode(block, final=final)
        if "\ufffd" in text:
            self.counters["invalid_utf8_replaced"] += text.count("\ufffd")
        return text

    def _non_empty(self, docs: list[str]) -> Iterator[str]:
        for doc in docs:
            if doc.strip():
                yield doc
            else:
                self.counters["empty_skipped"] += 1


class JsonlSource(Source):
    kind = "jsonl"

    def documents(self) -> Iterator[str]:
        field = self.options.text_column
        with open(self.path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(self.decode(raw))
                except ValueError as e:
                    raise UserError(f"{self.path}:{line_no}: not valid JSON ({e})") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{self.path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
                if field not in obj:
                    raise UserError(
                        f"{self.path}:{line_no}: no field {field!r} (it has: {', '.join(map(str, obj))}); "
                        "choose one with --text-column"
                    )
                text = obj[field]
                if not isinstance(text, str) or not text.strip():
                    self.counters["empty_skipped"] += 1
                    continue
                yield text
