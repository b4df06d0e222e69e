"""WikipediaSource: dumps as files (.xml, .xml.bz2, UTF-16, no siteinfo, damaged), parallel and in order."""

from __future__ import annotations

import bz2
import re
from pathlib import Path

import pytest

import gptforge.data.sources.wikipedia as wikipedia
from gptforge.data.sources import SourceOptions, open_sources
from gptforge.data.sources.wikipedia import WikipediaSource
from gptforge.errors import UserError

from helpers import FIXTURES, many_pages_dump

WIKI = FIXTURES / "wiki"
ALPHA = (
    "Alpha Centauri\n\n"
    "Alpha Centauri is the closest star system to the Solar System. It lies in the constellation of Centaurus.\n\n"
    "Stars\n"
    "The system has three stars (A, B and C) — see the star list or.\n"
    "Alpha Centauri A (yellow)\nAlpha Centauri B\nProxima Centauri\n\n"
    "Planets\n"
    "Proxima b orbits in the habitable zone.\nIt was found in 2016."
)
STAR = "Αστέρι & Звезда\n\nЗвезда — это небесное тело. 星 means star. Ἀστήρ is Greek; 5 < 6 & 7 > 3."
SMALL_COUNTS = {"pages": 7, "articles": 2, "redirects_skipped": 2, "other_namespace_skipped": 2, "empty_skipped": 1}


def read(path: Path, keep_partial: bool = False) -> tuple[list[str], dict]:
    """The documents, and the skip counters with the pages read and articles kept."""
    source = WikipediaSource(path, SourceOptions(keep_partial=keep_partial))
    source.check()
    docs = list(source.documents())
    assert source.articles == len(docs)
    return docs, {"pages": source.pages_read, "articles": source.articles, **source.counters}


@pytest.fixture(params=["indexed_bzip2", "stdlib"])
def bz2_reader(request, monkeypatch):
    """Run a test with the parallel decompressor (when installed) and with the standard library's."""
    if request.param == "stdlib":
        monkeypatch.setattr(wikipedia, "indexed_bzip2", None)
    elif wikipedia.indexed_bzip2 is None:
        pytest.skip("indexed_bzip2 is not installed")
    return request.param


def test_small_dump_articles_and_counts():
    docs, counts = read(WIKI / "small.xml")
    assert docs == [ALPHA, STAR]
    assert counts == SMALL_COUNTS


def test_bz2_gives_the_same_documents(tmp_path, bz2_reader):
    path = tmp_path / "small.xml.bz2"
    path.write_bytes(bz2.compress((WIKI / "small.xml").read_bytes()))
    assert read(path) == ([ALPHA, STAR], SMALL_COUNTS)


def test_multistream_bz2(tmp_path, bz2_reader):
    """pages-articles-multistream dumps are many bz2 streams back to back."""
    xml = (WIKI / "small.xml").read_bytes()
    cut = xml.index(b"  <page>", xml.index(b"<title>Talk:"))
    path = tmp_path / "multi.xml.bz2"
    path.write_bytes(bz2.compress(xml[:cut]) + bz2.compress(xml[cut:]))
    assert read(path) == ([ALPHA, STAR], SMALL_COUNTS)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_dump(tmp_path, encoding):
    text = (WIKI / "small.xml").read_text(encoding="utf-8").replace('encoding="UTF-8"', 'encoding="UTF-16"')
    path = tmp_path / "small16.xml"
    path.write_bytes(text.encode(encoding))  # "utf-16" writes a byte-order mark, the others do not
    assert read(path) == ([ALPHA, STAR], SMALL_COUNTS)


def test_dump_without_siteinfo_or_ns_elements(tmp_path):
    """Old exports carry no <ns>: the namespace comes from the title's prefix (English defaults)."""
    xml = (WIKI / "small.xml").read_text(encoding="utf-8")
    xml = re.sub(r"<siteinfo>.*?</siteinfo>", "", xml, flags=re.S)
    xml = re.sub(r"\s*<ns>\d+</ns>", "", xml)
    path = tmp_path / "nosite.xml"
    path.write_text(xml, encoding="utf-8")
    assert read(path) == ([ALPHA, STAR], SMALL_COUNTS)


def test_xml_character_references(tmp_path):
    path = tmp_path / "refs.xml"
    path.write_text("<mediawiki><page><title>A &#38; B</title><ns>0</ns><revision><text>&#169; 2020 &#x263A; "
                    "&amp;#169; &amp;amp;lt; &#0;&#xD800;</text></revision></page></mediawiki>", encoding="utf-8")
    # XML references decode once; what they spell is wikitext, whose own entities decode once more
    assert read(path)[0] == ["A & B\n\n© 2020 ☺ © &lt; \ufffd\ufffd"]


def test_localized_dump_drops_its_own_file_and_category_links(tmp_path):
    xml = (WIKI / "small.xml").read_text(encoding="utf-8")
    xml = xml.replace(">File<", ">Berkas<").replace(">Category<", ">Kategori<")
    xml = xml.replace("[[File:", "[[Berkas:").replace("[[Category:", "[[Kategori:").replace("thumb|", "jmpl|")
    path = tmp_path / "idwiki.xml"
    path.write_text(xml, encoding="utf-8")
    assert read(path)[0] == [ALPHA, STAR]


def test_many_batches_cleaned_in_parallel_keep_dump_order(tmp_path, monkeypatch):
    path = tmp_path / "many.xml"
    path.write_bytes(many_pages_dump(300))
    inline_docs, inline_counts = read(path)  # one batch: cleaned in this process
    monkeypatch.setattr(wikipedia, "BATCH_BYTES", 20_000)  # about 25 batches over 2 worker processes
    source = WikipediaSource(path, SourceOptions())
    source.workers = 2
    docs = list(source.documents())
    assert docs == inline_docs
    assert [d.split("\n", 1)[0] for d in docs] == [f"Page {i}" for i in range(300) if i % 5 != 4]
    assert source.pages_read == 300 and source.articles == 240
    assert dict(source.counters) == {"redirects_skipped": 60}
    assert inline_counts == {"pages": 300, "articles": 240, "redirects_skipped": 60}
    assert all(d.count("\n") == 4 and "[[" not in d and "{{" not in d and "<ref" not in d for d in docs)


def test_stopping_early_stops_the_workers(tmp_path, monkeypatch):
    path = tmp_path / "many.xml"
    path.write_bytes(many_pages_dump(300))
    monkeypatch.setattr(wikipedia, "BATCH_BYTES", 20_000)
    source = WikipediaSource(path, SourceOptions())
    source.workers = 2
    docs = source.documents()
    assert next(docs).startswith("Page 0\n\n")
    docs.close()  # what prepare does on an error elsewhere: must return, not hang
    assert 0 < source.articles < 240


def _damaged_bz2(tmp_path: Path, n_pages: int = 1500) -> tuple[Path, bytes]:
    """A multi-block bz2 (100 KB blocks) of n_pages, and its full XML."""
    xml = many_pages_dump(n_pages)
    return tmp_path / "enwiki-part.xml.bz2", bz2.compress(xml, compresslevel=1)


def test_truncated_bz2_is_an_error_naming_the_file_and_progress(tmp_path, monkeypatch, bz2_reader):
    monkeypatch.setattr(wikipedia, "BATCH_BYTES", 100_000)
    path, data = _damaged_bz2(tmp_path)
    path.write_bytes(data[: len(data) * 2 // 3])
    source = WikipediaSource(path, SourceOptions())
    source.check()  # the start is fine: the damage shows only when reading reaches it
    with pytest.raises(UserError) as err:
        list(source.documents())
    message = str(err.value)
    assert str(path) in message and "truncated" in message
    assert re.search(r"after \d+\.\d MB of XML and \d+ complete pages", message)
    assert "--keep-partial" in message and "\n" not in message


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_keep_partial_keeps_whole_articles_before_the_damage(tmp_path, monkeypatch, capsys, bz2_reader, damage):
    monkeypatch.setattr(wikipedia, "BATCH_BYTES", 100_000)
    path, data = _damaged_bz2(tmp_path)
    path.write_bytes(data)
    full, _ = read(path)
    if damage == "truncated":
        path.write_bytes(data[: len(data) * 2 // 3])
    else:
        flipped = bytearray(data)
        for i in range(len(data) * 2 // 3, len(data) * 2 // 3 + 64):
            flipped[i] ^= 0x5A
        path.write_bytes(bytes(flipped))
    docs, counts = read(path, keep_partial=True)
    assert 0 < len(docs) < len(full)
    assert docs == full[: len(docs)]  # whole articles, in order, none from the damaged part
    assert counts["truncated"] == 1 and counts["articles"] == len(docs)
    warning = capsys.readouterr().err.strip().splitlines()
    assert (
        len(warning) == 1
        and warning[0].startswith(f"warning: {path}:")
        and f"kept the {len(docs)} articles" in warning[0]
    )


def test_xml_cut_short(tmp_path):
    xml = many_pages_dump(20)
    path = tmp_path / "cut.xml"
    path.write_bytes(xml[: xml.index(b"<title>Page 12</title>") + 30])
    with pytest.raises(UserError, match=r"cut.xml: the XML ends before </mediawiki>.*--keep-partial"):
        read(path)
    docs, counts = read(path, keep_partial=True)
    assert [d.split("\n", 1)[0] for d in docs] == [f"Page {i}" for i in range(12) if i % 5 != 4]
    assert counts["pages"] == 12 and counts["truncated"] == 1


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("page.xml", b"<html><body>not a dump</body></html>", "not a MediaWiki XML dump"),
        ("data.bz2", bz2.compress(b"just some text\n" * 100), "not a MediaWiki XML dump"),
        ("broken.xml.bz2", b"BZh91AY&SY" + bytes(range(256)) * 4, "bzip2 data is"),
        ("empty.xml", b"", "not a MediaWiki XML dump"),
    ],
)
def test_check_rejects_what_is_not_a_dump(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*" + message):
        WikipediaSource(path, SourceOptions()).check()


def test_dispatch_by_extension(tmp_path):
    for name in ("a.xml", "b.xml.bz2", "c.bz2"):
        (tmp_path / name).write_bytes(b"")
    assert {type(s).__name__ for s in open_sources([str(tmp_path)])} == {"WikipediaSource"}


def test_real_enwiki_fragment(shared_data):
    docs, counts = read(shared_data / "enwiki-sample-pages-articles.xml.bz2")
    assert counts["pages"] == 206 and counts["articles"] == 106 == len(docs)
    assert counts["redirects_skipped"] + counts["other_namespace_skipped"] == 100
    assert docs[0].startswith("Anarchism\n\nAnarchism is a political philosophy that advocates self-governed societies")
    titles = [d.split("\n", 1)[0] for d in docs]
    assert titles[:4] == ["Anarchism", "Autism", "Albedo", "A"] and len(set(titles)) == 106
    for doc in docs:
        for markup in ("{{", "}}", "[[", "]]", "<ref", "thumb|", "File:", "Category:", "&amp;", "&nbsp;", "'''"):
            assert markup not in doc, (doc.split("\n", 1)[0], markup)
        assert not re.search(r"^(?:\||\{\||!)", doc, re.M), doc.split("\n", 1)[0]
    assert sum(len(d) for d in docs) > 2_500_000  # the prose is there, not just titles


def _dump_part(xml: bytes, first: int, last: int) -> bytes:
    """Pages first..last-1 of a many_pages_dump, as a dump of their own (what articles1, articles2 are)."""
    pages = re.findall(rb"<page>.*?</page>", xml, re.S)[first:last]
    return b"<mediawiki>\n" + b"\n".join(pages) + b"\n</mediawiki>\n"


def test_prepare_appends_dump_parts_and_a_damaged_part_adds_nothing(tmp_path):
    from gptforge.data.prepare import prepare

    from helpers import tree_digest

    xml = many_pages_dump(200)
    part1, part2, part3 = (tmp_path / f"wiki-articles{i}.xml.bz2" for i in (1, 2, 3))
    part1.write_bytes(bz2.compress(_dump_part(xml, 0, 100)))
    part2.write_bytes(bz2.compress(_dump_part(xml, 100, 200)))
    out = tmp_path / "data"
    prepare([str(part1)], out, tokenizer="char", val_fraction=0.1, split="tail")
    manifest = prepare([str(part2)], out, tokenizer="char", val_fraction=0.1, split="tail")
    assert [(Path(s["path"]).name, s["documents"]) for s in manifest["sources"]] == [
        (part1.name, 80), (part2.name, 80)]
    assert manifest["sources"][1]["skipped"] == {"redirects_skipped": 20}

    before = tree_digest(out)
    data = bz2.compress(_dump_part(xml, 0, 200), compresslevel=1)
    part3.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=re.escape(part3.name) + r": the bzip2 data is truncated"):
        prepare([str(part3)], out, tokenizer="char", val_fraction=0.1, split="tail")
    assert tree_digest(out) == before
