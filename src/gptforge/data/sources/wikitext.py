"""MediaWiki markup -> clean prose, for language-model training text.

Everything that does not render as prose is removed: templates and parser functions, tables,
references, files/images with their captions, categories, interlanguage links, HTML comments,
code/math blocks, magic words, bold/italic quotes and external-link brackets. Internal links keep
their label, section titles and list items stay as plain lines, HTML entities are decoded.

Time is linear in the article whatever it holds (a dump is written by strangers): every regex here
has no nested or overlapping quantifiers, and what nests or pairs up (elements, templates, tables,
links) is matched in one pass by wikiscan. Most steps are one C-level regex pass over the whole
article; the Python loops run over delimiters, links and heading lines, never over characters.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from gptforge.data.sources.wikiscan import (
    DROPPED_ELEMENTS,
    drop_elements,
    resolve_links,
    strip_external_links,
    strip_tables,
    strip_templates,
)

__all__ = ["DEFAULT_NAMES", "WikiNames", "clean", "drop_elements", "resolve_links", "strip_tables",
           "strip_templates", "unescape_entities"]

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

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)  # each match ends where its scan ends: linear
# Tags stripped while their content stays (a generic "<...>" would eat prose like "x < y > z").
# A tag holds no "<": so a scan from one "<" never passes the next.
_KEPT_TAGS = re.compile(
    r"</?(?:b|i|u|s|em|strong|small|big|sup|sub|span|div|font|center|code|tt|var|kbd|samp|abbr|cite|"
    r"blockquote|poem|nowiki|p|q|dfn|del|ins|strike|mark|bdi|bdo|ruby|rb|rt|rp|ol|ul|li|dl|dt|dd|"
    r"onlyinclude|section|caption|h[1-6]|hr|wbr|time|data|tr|td|th|tbody|thead|tfoot|"
    rf"{DROPPED_ELEMENTS})\b[^<>]*>",  # (what is left of those: tags never closed or never opened)
    re.I,
)
_LINE_BREAK_TAG = re.compile(r"<br\b[^<>]*>", re.I)
# Line-start patterns are written "\n..." (clean() keeps the text starting with "\n"): a literal
# first character lets the regex engine skip ahead, several times faster than "^" with re.M.
# A line made only of namespaced links (categories, interlanguage links, images) is never prose,
# whatever the wiki calls those namespaces.
_NS_LINK = r"\[\[[^\[\]|:\n]+:[^\[\]\n]*\]\]"
_LINK_ONLY_LINE = re.compile(r"\n" + _NS_LINK + r"(?:[ \t]*" + _NS_LINK + r")*[ \t]*(?=\n)")
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:-[a-z]{2,8})*|simple")
_MEDIA_FILE = re.compile(
    r"\.(?:jpe?g|png|gif|svg|tiff?|webp|xcf|ogg|oga|ogv|webm|mp3|mp4|wav|flac|mid|midi|pdf|djvu|stl)\s*$", re.I
)
_MAGIC_WORD = re.compile(r"__(?:[^\W\da-z_]|_(?!_))+__")
_HEADING_LINE = re.compile(r"\n=[^\n]*")
# A numeric character reference too long to be a code point (html.unescape would fail on 4,300 digits).
_OVERLONG_CHAR_REF = re.compile(r"&#(?:[xX][0-9a-fA-F]{7,}|[0-9]{8,});?")
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
        text = drop_elements(text)
    if "{" in text:
        text = strip_templates(text)
        if "{|" in text:
            text = strip_tables(text)
    if "[" in text:
        text = _LINK_ONLY_LINE.sub("", text)
        text = resolve_links(text, _link_text_for(names))  # first: an external link's
        text = strip_external_links(text)  # label may hold internal links
    if "<" in text:
        text = _LINE_BREAK_TAG.sub("\n", text)
        text = _KEPT_TAGS.sub("", text)
    if "''" in text:
        text = text.replace("'''", "").replace("''", "")  # bold, italic (five quotes: both)
    if "__" in text:
        text = _MAGIC_WORD.sub("", text)
    if "\n=" in text:
        text = _HEADING_LINE.sub(_heading, text)
    if "&" in text:
        text = unescape_entities(text).replace("\u00a0", " ")
    return _tidy(text)


def unescape_entities(text: str) -> str:
    """html.unescape, safe on any input (it raises on a character reference of 4,300 digits)."""
    if "&" not in text:
        return text
    return html.unescape(_OVERLONG_CHAR_REF.sub("\ufffd", text))


def _tidy(text: str) -> str:
    """Blank and junk lines, spaces and empty parentheses that the removed markup left behind."""
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
    end = len(text)
    while end:
        last_line = text.rfind("\n", 0, end) + 1
        if text[last_line:last_line + 1] != _HEADING_MARK:
            break
        end = last_line
        while end and text[end - 1].isspace():
            end -= 1
    return text[:end].replace(_HEADING_MARK, "")


def _heading(m: re.Match) -> str:
    """"== Title ==" -> the marked title. Levels 1-6; the same number of "=" on both sides; a title
    that is not there ("= " followed by spaces) leaves the line as it is."""
    line = m.group()[1:].rstrip(" \t")
    level = min(len(line) - len(line.lstrip("=")), 6, len(line) - len(line.rstrip("=")), (len(line) - 1) // 2)
    if level < 1:
        return m.group()
    return "\n" + _HEADING_MARK + line[level:len(line) - level].strip(" \t")


def _link_text_for(names: WikiNames):
    """What an internal link shows (its label; files, categories and interlanguage links show nothing),
    as a function of the link's inside or of a match whose group 1 it is (one call per link: they are many)."""

    def link_text(inside: str | re.Match) -> str:
        if not isinstance(inside, str):
            inside = inside.group(1)
        target, bar, label = inside.partition("|")
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
            return label or _pipe_trick(target)
        return target

    return link_text


def _pipe_trick(target: str) -> str:
    """[[Paris (France)|]] shows "Paris", [[Help:Contents|]] shows "Contents"."""
    shown = target.split(":", 1)[-1].rstrip()
    if shown.endswith(")"):  # a last "(...)" without parentheses inside goes, with the blanks before it
        opening = shown.rfind("(")
        if opening >= 0 and ")" not in shown[opening:-1]:
            shown = shown[:opening]
    return shown.split(",", 1)[0].strip()
