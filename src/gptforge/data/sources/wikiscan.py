"""One-pass scanners for the MediaWiki markup that nests or pairs up: elements, templates, tables, links.

Each finds its delimiters with a regex that cannot backtrack far (no nested or overlapping
quantifiers), pairs them with a stack in one pass and cuts the spans out in one join, so the time is
linear in the text whatever it holds: unclosed templates, refs or tables never cause a rescan.
Markup that never closes is resolved where it stands: a template is cut to the end of its line, a
table to the next blank line, an unclosed element or link loses only its opening tag or brackets.
"""

from __future__ import annotations

import re
from typing import Callable

# Elements dropped with everything inside: footnotes, formulas, code, galleries, transclusion-only parts.
DROPPED_ELEMENTS = (
    "ref|references|math|chem|ce|gallery|timeline|graph|score|imagemap|syntaxhighlight|source|pre|"
    "templatedata|templatestyles|noinclude|includeonly|hiero|inputbox|categorytree|mapframe|maplink|"
    "table|indicator"
)
_ELEMENT_TAG = re.compile(rf"<({DROPPED_ELEMENTS})\b([^<>]*)>", re.I)
_BRACE_RUN = re.compile(r"\{\{+|\}\}+")
# Line-start delimiters are written "\n..." (clean() keeps the text starting with "\n").
_TABLE_EDGE = re.compile(r"\n[ \t:]*\{\||\n[ \t]*\|\}")
_BRACKET_RUN = re.compile(r"\[\[+|\]\]+")
# a link holding no other link: single brackets may appear inside (a caption's "[above]"); in "]]]"
# the last two close the link, in "]]]]" the first two (the rest close the link around it). The
# alternatives exclude each other, and a failed attempt stops at the next "[[": each stretch of text
# is read by one attempt.
_INNERMOST_LINK = re.compile(r"\[\[([^\[\]]*(?:(?:\[(?!\[)|\](?!\])|\](?=\]\](?!\])))[^\[\]]*)*)\]\]")
_EXTERNAL_START = re.compile(r"\[(?:https?:|ftp:|//|mailto:|news:|irc:|ircs:|gopher:|sftp:)", re.I)
_URL_END = re.compile(r"[\s\]]")
_BLANKS = re.compile(r"[ \t]*")
# Real captions nest links two levels deep. Past this depth the outermost open link counts as never
# closed (its text stays): a link's text is copied once per level, so this bounds the work.
MAX_LINK_DEPTH = 16


class NextFinder:
    """Where `needle` next occurs at or after a position, asked for positions in increasing order.

    Each search starts beyond the previous answer, so all the searches together read the text once.
    """

    def __init__(self, text: str, needle: str | re.Pattern):
        self.text, self.needle = text, needle
        self.asked, self.found = -1, -1

    def __call__(self, pos: int) -> int:
        """The position of the next occurrence (len(text) if none)."""
        if pos < self.asked or self.found < pos:
            if isinstance(self.needle, str):
                found = self.text.find(self.needle, pos)
            else:
                m = self.needle.search(self.text, pos)
                found = m.start() if m else -1
            self.found = len(self.text) if found < 0 else found
        self.asked = pos
        return self.found


def cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """text without the union of the [start, end) spans (they may overlap or nest)."""
    if not spans:
        return text
    pieces, kept_from = [], 0
    for start, end in sorted(spans):
        if start > kept_from:
            pieces.append(text[kept_from:start])
        kept_from = max(kept_from, end)
    pieces.append(text[kept_from:])
    return "".join(pieces)


def drop_elements(text: str) -> str:
    """Remove <ref>...</ref>, <math>...</math> and the like with their content; <ref/> alone.

    An element closes at the first "</name>" after it (they never nest in MediaWiki; "</ref x>"
    closes nothing). An opening tag never closed is removed alone: its text stays. Stray closing
    tags are left for clean() to strip with the other tags.
    """
    closers: dict[str, NextFinder] = {}
    spans, kept_from = [], 0
    for m in _ELEMENT_TAG.finditer(text):
        start, end = m.span()
        if start < kept_from:  # inside an element already cut
            continue
        if not m.group(2).endswith("/"):
            name = m.group(1).lower()
            if name not in closers:
                closers[name] = NextFinder(text, re.compile(rf"</{name}\s*>", re.I))
            closer = closers[name](end)
            if closer < len(text):
                end = text.index(">", closer) + 1
        spans.append((start, end))
        kept_from = end
    return cut_spans(text, spans)


def strip_templates(text: str) -> str:
    """Remove templates, parser functions and template parameters, however nested.

    Braces are matched the way MediaWiki's preprocessor does, before anything else: a run of
    braces counts its braces, so {{{1}}} and {{a|{{b}}}} both balance, and "|}}" closes a
    template even inside a table. A template never closed is cut to the end of its line.
    """
    return _cut_balanced(text, _BRACE_RUN, unit=2, open_ends_at="\n")


def strip_tables(text: str) -> str:
    """Remove {| ... |} tables (after templates, which may have opened or closed some).

    A table never closed is cut to the next blank line.
    """
    return _cut_balanced(text, _TABLE_EDGE, unit=1, open_ends_at="\n\n")


def _cut_balanced(text: str, tokens_re: re.Pattern, unit: int, open_ends_at: str) -> str:
    """Cut every balanced span delimited by `tokens_re`, and every opener never closed up to `open_ends_at`.

    A brace run of n is worth n and closes in steps of at least 2 (unit=2): an opener left with a
    single brace is done; closing braces left over once nothing is open are plain text. A table
    edge is worth 1 (unit=1).
    """
    spans: list[tuple[int, int]] = []
    stack: list[list[int]] = []  # [units still open, start of the opener]
    for m in tokens_re.finditer(text):
        tok = m.group().lstrip(" \t:\n")
        size = len(tok) if unit == 2 else 1
        if tok[0] == "{":
            stack.append([size, m.start()])
            continue
        closing = size
        while closing >= unit and stack:
            used = min(stack[-1][0], closing)
            stack[-1][0] -= used
            closing -= used
            if stack[-1][0] < unit:
                spans.append((stack.pop()[1], m.end() - closing))
    if stack:  # never closed: cut short where it stands (they are in increasing order)
        ends = NextFinder(text, open_ends_at)
        spans.extend((start, ends(start)) for _, start in stack)
    return cut_spans(text, spans)


def resolve_links(text: str, link_text: Callable[[str | re.Match], str]) -> str:
    """Replace every [[...]] by link_text(its inside), innermost first, in one pass.

    link_text takes the inside as a string, or as a match whose group 1 it is (one call fewer per link).

    Inner links are resolved before the link around them (an image caption's links before the
    image is dropped). In a run of brackets the pairs are the last ones ("]]]": a single bracket,
    then the link's end). An unclosed [[ and a stray ]] are dropped; what they enclose stays.
    """
    for _ in range(3):  # at C speed, innermost first: plain links, then the image captions that held them
        text, n = _INNERMOST_LINK.subn(link_text, text)
        if not n or "[[" not in text:
            break
    if "[[" not in text and "]]" not in text:
        return text
    # what is left is deeper or unbalanced: one pass with a stack
    levels: list[list[str]] = [[]]  # text so far at each open level; levels[0] is outside every link
    pos = 0
    for m in _BRACKET_RUN.finditer(text):
        run = m.group()
        levels[-1].append(text[pos:m.start() + len(run) % 2])  # an odd bracket is plain text
        pos = m.end()
        for _ in range(len(run) // 2):
            if run[0] == "[":
                if len(levels) > MAX_LINK_DEPTH:  # the outermost open link is taken as never closed
                    levels[0].extend(levels.pop(1))
                levels.append([])
            elif len(levels) > 1:
                inside = "".join(levels.pop())
                levels[-1].append(link_text(inside))
    levels[-1].append(text[pos:])
    while len(levels) > 1:  # never closed: keep what they hold as text
        inside = "".join(levels.pop())
        levels[-1].append(inside)
    return "".join(levels[0])


def strip_external_links(text: str) -> str:
    """[http://x.org label] becomes its label, [http://x.org] nothing; a bare URL is text.

    A link ends at the first "]" of its line; the URL runs to the first space or "]".
    """
    url_end, close, newline = NextFinder(text, _URL_END), NextFinder(text, "]"), NextFinder(text, "\n")
    pieces, kept_from, blanks_from, label_start = [], 0, -1, 0
    for m in _EXTERNAL_START.finditer(text):
        start = m.start()
        if start < kept_from:
            continue
        u = url_end(m.end())
        if u == len(text) or text[u] not in " \t]":
            continue  # a URL followed by a line end is not a link
        if u != blanks_from:  # candidates that share a URL end share the blanks after it: read them once
            blanks_from, label_start = u, _BLANKS.match(text, u).end()
        if label_start == len(text):
            continue
        end = close(label_start)
        if end == len(text) or newline(label_start) < end:
            continue
        pieces.append(text[kept_from:start])
        pieces.append(text[label_start:end])
        kept_from = end + 1
    pieces.append(text[kept_from:])
    return "".join(pieces)
