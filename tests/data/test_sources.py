import json

import pytest

from gptforge.data.sources import SourceOptions, expand_paths, open_sources
from gptforge.errors import UserError

from helpers import write_parquet


def docs_of(path, **options):
    (source,) = open_sources([str(path)], SourceOptions(**options))
    source.check()
    return list(source.documents()), dict(source.counters)


def test_parquet_streams_rows_and_counts_null_and_empty(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", ["first doc", None, "", "  ", "second doc", "third"], row_group_size=2)
    docs, counters = docs_of(path)
    assert docs == ["first doc", "second doc", "third"]
    assert counters == {"empty_skipped": 3}


def test_parquet_other_column_missing_column_and_corrupt_file(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", ["x", "y"], column="content")
    assert docs_of(path, text_column="content")[0] == ["x", "y"]
    with pytest.raises(UserError, match=r"a.parquet: no column 'text'; its columns are content, id"):
        docs_of(path)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match=r"bad.parquet: not a readable parquet file"):
        docs_of(bad)


def test_directories_and_globs_expand_in_order_to_supported_files(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("b.parquet", "a.parquet"):
        write_parquet(tmp_path / "d" / name, ["t"])
    (tmp_path / "d" / "README").write_text("not data")
    (tmp_path / "d" / ".a.parquet.part").write_text("partial download")
    assert [p.name for p in expand_paths([str(tmp_path / "d")])] == ["a.parquet", "b.parquet"]
    assert [p.name for p in expand_paths([str(tmp_path / "d" / "*.parquet")])] == ["a.parquet", "b.parquet"]
    # the same file named twice is one source
    assert len(expand_paths([str(tmp_path / "d"), str(tmp_path / "d" / "a.parquet")])) == 2


def test_missing_unknown_and_empty_inputs(tmp_path):
    with pytest.raises(UserError, match=r"source .*nope.txt does not exist"):
        expand_paths([str(tmp_path / "nope.txt")])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match=r"x.csv: unknown file type '.csv'"):
        expand_paths([str(tmp_path / "x.csv")])
    (tmp_path / "e").mkdir()
    with pytest.raises(UserError, match="e: the directory holds no files$"):
        expand_paths([str(tmp_path / "e")])
    (tmp_path / "e" / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match=r"e: the directory holds 1 file \(x.csv\), none of a supported kind"):
        expand_paths([str(tmp_path / "e")])
    with pytest.raises(UserError, match="matches no files"):
        expand_paths([str(tmp_path / "*.parquet")])


def test_text_one_document_or_split_on_separator(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n\n\ntwo\n\n\n\n\n\nthree")
    assert docs_of(path)[0] == ["one\n\n\ntwo\n\n\n\n\n\nthree"]
    docs, counters = docs_of(path, doc_separator="\n\n\n")
    assert docs == ["one", "two", "three"]
    assert counters == {"empty_skipped": 1}


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"caf\xe9 ok \xff\xfe end")
    docs, counters = docs_of(path)
    assert docs == ["caf\ufffd ok \ufffd\ufffd end"]
    assert counters == {"invalid_utf8_replaced": 3}


def test_jsonl_field_and_errors(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        "\n".join(json.dumps(o) for o in ({"text": "alpha"}, {"text": ""}, {"text": "beta", "n": 1})) + "\n"
    )
    assert docs_of(path) == (["alpha", "beta"], {"empty_skipped": 1})
    path.write_text('{"body": "x"}\n')
    with pytest.raises(UserError, match=r"a.jsonl:1: no field 'text' \(it has: body\)"):
        docs_of(path)
    path.write_text('{"text": "x"}\n{broken\n')
    with pytest.raises(UserError, match=r"a.jsonl:2: not valid JSON"):
        docs_of(path)
