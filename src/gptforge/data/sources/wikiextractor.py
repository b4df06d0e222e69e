"""wikiextractor's output: folders AA/, AB/, ... of wiki_00, wiki_01, ... files; one document per article.

Two forms, told apart by the first line. The default: blocks of

    <doc id="12" url="https://en.wikipedia.org/wiki?curid=12" title="Anarchism">
    Anarchism

    Anarchism is a political philosophy ...
    </doc>

whose text starts with the title, as gptforge's own Wikipedia documents do; with --json, one object a
line with id, url, title and text (the title is put in front, so both forms give the same documents).
wikiextractor escapes <, > and & by default (--html-safe): they are unescaped. Articles with no text
after their title are skipped and counted. Files may be compressed (--compress writes wiki_00.bz2).
"""

from __future__ import annotations

import re
from typing import Iterator

from gptforge.data.sources.compressed import head
from gptforge.data.sources.text import JsonlSource, text_field
from gptforge.data.sources.wikitext import unescape_entities
from gptforge.errors import UserError

FILE_NAME = re.compile(r"wiki_\d+")
_DOC_START = re.compile(r'<doc\b[^>]*\btitle="([^"]*)"[^>]*>\s*$')


def looks_like(start: bytes) -> bool:
    """Whether decompressed content starts like wikiextractor output (either form)."""
    start = start.lstrip()
    return start.startswith(b"<doc ") or start.startswith(b'{"id"')


class WikiExtractorSource(JsonlSource):
    kind = "wikiextractor"

    def check(self) -> None:
        super().check()
        start = head(self.path).lstrip()
        if not start:
            raise UserError(f"source {self.path}: empty; a wikiextractor file holds <doc ...> blocks")
        if not looks_like(start):
            raise UserError(f"source {self.path}: no <doc ...> block at its start (it begins {start[:40]!r}): "
                            "not wikiextractor output")

    def documents(self) -> Iterator[str]:
        start = head(self.path, 64).lstrip()
        articles = self._json_articles() if start.startswith(b"{") else self._doc_articles()
        found = 0
        for title, text in articles:
            found += 1
            text = unescape_entities(text).strip()
            if not text:
                self.counters["empty_skipped"] += 1
                continue
            title = unescape_entities(title).strip()
            yield f"{title}\n\n{text}" if title else text
        if not found:
            raise UserError(f"source {self.path}: no <doc ...> blocks: not wikiextractor output")

    def _json_articles(self) -> Iterator[tuple[str, str]]:
        for line_no, obj in self.objects():
            if "text" not in obj:
                raise UserError(f"{self.path}:{line_no}: no field 'text' (it has: {', '.join(map(str, obj))}): "
                                "not wikiextractor --json output")
            yield str(obj.get("title") or ""), text_field(self.path, line_no, "text", obj["text"] or "")

    def _doc_articles(self) -> Iterator[tuple[str, str]]:
        """(title, text after the title line) of each <doc> block; a block never closed is an error."""
        title, body, opened_at = None, [], 0
        for line_no, raw in enumerate(self.lines(), start=1):
            line = self.decode(raw)
            if title is None:
                m = _DOC_START.match(line)
                if m:
                    title, body, opened_at = m.group(1), [], line_no
                elif line.strip():
                    raise UserError(f"{self.path}:{line_no}: text outside a <doc ...> block: "
                                    "not wikiextractor output")
            elif line.rstrip("\r\n") == "</doc>":
                first, _, rest = "".join(body).partition("\n")  # the first line repeats the title
                same = unescape_entities(first).strip() == unescape_entities(title).strip()
                yield title, rest if same else "".join(body)
                title = None
            else:
                body.append(line)
        if title is not None:
            raise UserError(f"{self.path}: the <doc> block of {title!r} opened on line {opened_at} never closes "
                            "(the file is cut short)")
