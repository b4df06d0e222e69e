"""MediaWiki markup -> clean prose, for language-model training text.

Everything that does not render as prose is removed: templates and parser functions, tables,
references, files/images with their captions, categories, interlanguage links, HTML comments,
code/math blocks, magic words, bold/italic quotes and external-link brackets. Internal links keep
their label, section titles and list items stay as plain lines, HTML entities are decoded.

Speed comes from doing almost every step as one C-level regex pass over the whole article; the
only Python loops run over template/table delimiters and links, never over characters or lines.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

# Namespace names used when a dump has no <siteinfo> (or to add to it): English canonical names
# plus the local names of the largest wikis, so a headerless dump in those languages still loses
# its images and categories. Compared in lower case.
_DEFAULT_FILE_NAMES = (
    "file image datei bild fichier archivo imagen immagine файл изображение ficheiro arquivo imagem "
    "bestand afbeelding plik grafika fil billede kuva dosya soubor obrázek ファイル 画像 文件 图像 檔案 파일"
).split()
_DEFAULT_CATEGORY_NAMES = (
    "category kategorie catégorie categoría categoria категория categorie kategoria kategori luokka "
    "kategória カテゴリ 分类 分類 분류"
).split()
_ENGLISH_NAMESPACES = {
    "media": -2, "special": -1, "talk": 1, "user": 2, "user talk": 3, "wikipedia": 4, "wikipedia talk": 5,
    "file": 6, "image": 6, "file talk": 7, "mediawiki": 8, "mediawiki talk": 9, "template": 10,
    "template talk": 11, "help": 12, "help talk": 13, "category": 14, "category talk": 15,
    "portal": 100, "portal talk": 101, "book": 108, "draft": 118, "timedtext": 710, "module": 828,
}


@dataclass(frozen=True)
class WikiNames:
    """What a dump's namespaces are called: drives which links vanish and which pages are articles."""

    file_prefixes: frozenset = frozenset(_DEFAULT_FILE_NAMES)
    category_prefixes: frozenset = frozenset(_DEFAULT_CATEGORY_NAMES)
    namespace_by_prefix: dict = field(default_factory=lambda: dict(_ENGLISH_NAMESPACES))

    @classmethod
    def from_siteinfo(cls, namespaces: dict[int, str]) -> "WikiNames":
        by_prefix = dict(_ENGLISH_NAMESPACES)
        by_prefix.update({name.lower(): key for key, name in namespaces.items() if name})
        files = set(_DEFAULT_FILE_NAMES) | {n.lower() for k, n in namespaces.items() if k == 6 and n}
        cats = set(_DEFAULT_CATEGORY_NAMES) | {n.lower() for k, n in namespaces.items() if k == 14 and n}
        return cls(frozenset(files), frozenset(cats), by_prefix)

    def namespace_of(self, title: str) -> int:
        """The namespace a title is in, for dumps too old to carry <ns>."""
        prefix, colon, _ = title.partition(":")
        return self.namespace_by_prefix.get(prefix.strip().lower(), 0) if colon else 0


DEFAULT_NAMES = WikiNames()

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
# Elements dropped with everything inside: footnotes, formulas, code, galleries, transclusion-only parts.
_DROPPED_ELEMENTS = re.compile(
    r"<(ref|references|math|chem|ce|gallery|timeline|graph|score|imagemap|syntaxhighlight|source|pre|"
    r"templatedata|templatestyles|noinclude|includeonly|hiero|inputbox|categorytree|mapframe|maplink|"
    r"table|indicator)\b[^>]*?(?:/>|>.*?</\1\s*>)",
    re.S | re.I,
)
# Tags stripped while their content stays (a generic "<...>" would eat prose like "x < y > z").
_KEPT_TAGS = re.compile(
    r"</?(?:b|i|u|s|em|strong|small|big|sup|sub|span|div|font|center|code|tt|var|kbd|samp|abbr|cite|"
    r"blockquote|poem|nowiki|p|q|dfn|del|ins|strike|mark|bdi|bdo|ruby|rb|rt|rp|ol|ul|li|dl|dt|dd|"
    r"onlyinclude|section|caption|h[1-6]|hr|wbr|time|data|ref|references|math|gallery|table|tr|td|th|"
    r"tbody|thead|tfoot|includeonly|noinclude)\b[^>]*>",
    re.I,
)
_LINE_BREAK_TAG = re.compile(r"<br\b[^>]*>", re.I)
# Line-start patterns are written "\n..." (clean() keeps the text starting with "\n"): a literal
# first character lets the regex engine skip ahead, several times faster than "^" with re.M.
_BRACE_RUN = re.compile(r"\{\{+|\}\}+")
_TABLE_EDGE = re.compile(r"\n[ \t:]*\{\||\n[ \t]*\|\}")
_EXTERNAL_LINK = re.compile(
    r"\[(?:https?:|ftp:|//|mailto:|news:|irc:|ircs:|gopher:|sftp:)[^\s\]]*(?:[ \t]+([^\]\n]*))?\]", re.I
)
# a link holding no other link: single brackets may appear inside (a caption's "[above]"),
# and in "]]]" the last two close the link
_INNERMOST_LINK = re.compile(r"\[\[([^\[\]]*(?:(?:\[(?!\[)|\](?!\])|\](?=\]\]))[^\[\]]*)*)\]\]")
# A line made only of namespaced links (categories, interlanguage links, images) is never prose,
# whatever the wiki calls those namespaces.
_NS_LINK = r"\[\[[^\[\]|:\n]+:[^\[\]\n]*\]\]"
_LINK_ONLY_LINE = re.compile(r"\n" + _NS_LINK + r"(?:[ \t]*" + _NS_LINK + r")*[ \t]*(?=\n)")
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:-[a-z]{2,8})*|simple")
_MEDIA_FILE = re.compile(
    r"\.(?:jpe?g|png|gif|svg|tiff?|webp|xcf|ogg|oga|ogv|webm|mp3|mp4|wav|flac|mid|midi|pdf|djvu|stl)\s*$", re.I
)
_MAGIC_WORD = re.compile(r"__(?:[^\W\da-z_]|_(?!_))+__")
_HEADING = re.compile(r"\n(={1,6})[ \t]*([^\n]+?)[ \t]*\1[ \t]*(?=\n)")
_LIST_MARKER = re.compile(r"\n[*#:;]+ *")
# Table/template residue lines (what a half-closed table leaves) and horizontal rules.
_RESIDUE_LINE = re.compile(r"\n(?:\||!(?=[^\n]*(?:!!|\|))|\{\||\}\}|-{4,})[^\n]*")
_SPACES = re.compile(r"  +")
_EMPTY_PARENS = re.compile(r"\([ ,;:]*\)")
_PAREN_OPEN_JUNK = re.compile(r"\([ ,;]+")  # "(; born 1950" once a pronunciation template is gone
_PUNCT_ONLY_LINE = re.compile(r"\n[.,;:]+(?=\n)")  # what "* {{cite book}}." leaves
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.])(?=\s)")
_BLANK_LINES = re.compile(r"\n\n\n+")
_HEADING_MARK = "\x00"  # marks heading lines so the headings of empty closing sections can go


def clean(text: str, names: WikiNames = DEFAULT_NAMES) -> str:
    """Clean prose from one article's wikitext (already XML-unescaped). May return ''."""
    text = "\n" + text + "\n"
    if _HEADING_MARK in text:  # never in real wikitext (XML forbids it), but it is our marker
        text = text.replace(_HEADING_MARK, "")
    if "<" in text:
        if "<!--" in text:
            text = _COMMENT.sub("", text)
        text = _DROPPED_ELEMENTS.sub("", text)
    if "{" in text:
        text = strip_templates(text)
        if "{|" in text:
            text = strip_tables(text)
    if "[" in text:
        text = _LINK_ONLY_LINE.sub("", text)
        text = resolve_links(text, names)  # first: an external link's label may hold internal links
        text = _EXTERNAL_LINK.sub(_external_label, text)
    if "<" in text:
        text = _LINE_BREAK_TAG.sub("\n", text)
        text = _KEPT_TAGS.sub("", text)
    if "''" in text:
        text = text.replace("'''", "").replace("''", "")  # bold, italic (five quotes: both)
    if "__" in text:
        text = _MAGIC_WORD.sub("", text)
    text = _HEADING.sub("\n" + _HEADING_MARK + r"\2", text)
    if "&" in text:
        text = html.unescape(text).replace("\u00a0", " ")
    text = text.replace("\t", " ")
    text = _SPACES.sub(" ", text)
    if "(" in text:
        text = _PAREN_OPEN_JUNK.sub("(", text)
        for junk in (", )", "; )", ",)", ";)", " )"):
            text = text.replace(junk, ")")
        text = _EMPTY_PARENS.sub("", text).replace("  ", " ")
    text = "\n".join([line.strip() for line in text.split("\n")])
    text = _LIST_MARKER.sub("\n", text)
    text = _RESIDUE_LINE.sub("", text)
    text = _PUNCT_ONLY_LINE.sub("", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _BLANK_LINES.sub("\n\n", text).strip()
    # "References", "External links", ...: nothing is left under the closing headings
    while text:
        last_line = text.rfind("\n") + 1
        if text[last_line:last_line + 1] != _HEADING_MARK:
            break
        text = text[:last_line].rstrip()
    return text.replace(_HEADING_MARK, "")


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
    """Cut every outermost balanced span delimited by `tokens_re` out of text.

    A brace run of n is worth n and closes in steps of at least 2 (unit=2): an opener left
    with a single brace is done. A table edge is worth 1 (unit=1).
    """
    tokens = []
    for m in tokens_re.finditer(text):
        tok = m.group().strip(" \t:\n")
        opener = tok[0] == "{" and (unit == 2 or tok[1] == "|")
        size = len(tok) if unit == 2 else 1
        tokens.append((m.start(), m.end(), size if opener else -size))
    pieces: list[str] = []
    kept_from = 0
    i = 0
    while i < len(tokens):
        stack: list[list[int]] = []  # [units still open, index of the opening token]
        while i < len(tokens):
            start, end, size = tokens[i]
            i += 1
            if start < kept_from:
                continue
            if size > 0:
                stack.append([size, i - 1])
                continue
            closing = -size
            closed = 0
            while closing >= unit and stack:
                used = min(stack[-1][0], closing)
                stack[-1][0] -= used
                closing -= used
                closed += used
                if stack[-1][0] < unit:
                    opened = stack.pop()
                    if not stack:
                        pieces.append(text[kept_from:tokens[opened[1]][0]])
                        # braces left over after the outermost closes are plain text
                        kept_from = end if closing == 0 else end - closing
                        break
        if not stack:
            break
        # the outermost opener never closed: cut it short, then scan what follows afresh
        first = stack[0][1]
        open_start = tokens[first][0]
        cut_end = text.find(open_ends_at, open_start)
        pieces.append(text[kept_from:open_start])
        kept_from = len(text) if cut_end < 0 else cut_end
        i = first + 1
    pieces.append(text[kept_from:])
    return "".join(pieces)


def _external_label(m: re.Match) -> str:
    return m.group(1) or ""


def resolve_links(text: str, names: WikiNames) -> str:
    """Internal links become their label; files, categories and interlanguage links disappear.

    Innermost links first, so a caption's links are resolved before its image link is dropped.
    """
    def replace(m: re.Match) -> str:
        target, bar, label = m.group(1).partition("|")
        target = target.strip()
        if target.startswith(":"):  # [[:Category:X]] is an inline link, shown as written
            return label if bar and label else target[1:]
        prefix, colon, rest = target.partition(":")
        if colon:
            p = prefix.strip()
            low = p.lower()
            if low in names.file_prefixes or low in names.category_prefixes:
                return ""
            if _LANGUAGE_CODE.fullmatch(p) or _MEDIA_FILE.search(target):
                return ""
        if bar:
            if label:
                return label
            return _pipe_trick(target)
        return target

    for _ in range(8):  # nesting depth bound: file captions rarely nest links more than twice
        new = _INNERMOST_LINK.sub(replace, text)
        if new == text:
            break
        text = new
    return text


def _pipe_trick(target: str) -> str:
    """[[Paris (France)|]] shows "Paris", [[Help:Contents|]] shows "Contents"."""
    shown = target.split(":", 1)[-1]
    shown = re.sub(r"\s*\([^()]*\)\s*$", "", shown)
    return shown.split(",", 1)[0].strip()
