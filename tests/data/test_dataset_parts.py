"""Dataset parts (a val share per prepare run, val streams per part), a named dataset's own val file, and the
content identity that tells the same, a grown and another dataset apart."""

from __future__ import annotations

import functools
import io
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from gptforge.commands.inspection import inspect_command
from gptforge.data import download as dl
from gptforge.data.dataset import open_dataset
from gptforge.data.encode import in_val
from gptforge.data.identity import compare_identity
from gptforge.data.manifest import load_manifest, save_manifest
from gptforge.data.parts import derive_part_name
from gptforge.data.prepare import prepare
from gptforge.data.provenance import RECORD, recorded_role
from gptforge.data.tokenizers import gpt2_tokenizer
from gptforge.errors import UserError

from helpers import play_texts, tiny_text, write_parquet

EOT = 50256


def encoded(texts: list[str]) -> list[int]:
    tok = gpt2_tokenizer()
    return [t for text in texts for t in [EOT, *tok.encode(text).tolist()]]


def test_an_added_part_gets_its_own_val_share_and_the_summary_says_so(tmp_path, capsys):
    """An appended part used to get no val at all when its hash share was empty, silently."""
    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "plays.parquet", play_texts(12, 3000)))], data)
    (tmp_path / "sonnets.txt").write_text(play_texts(13, 9000)[12])  # one document: the hash puts it in one split
    capsys.readouterr()
    m = prepare([str(tmp_path / "sonnets.txt")], data)
    out = capsys.readouterr().out
    added = m["sources"][-1]
    assert added["val_tokens"] == round(added["tokens"] * 0.1) and added["train_tokens"] > 0  # 10%: a small part
    assert (f"part 'sonnets': train {added['train_tokens']:,} tokens, val {added['val_tokens']:,} tokens = 10.00% of "
            "the part (hash split, topped up to the small-part minimum from the end of the stream)") in out
    parts = open_dataset(data).val_parts
    assert [p.name for p in parts] == ["plays", "sonnets"]
    assert f"val tokens per part: plays {parts[0].tokens:,} | sonnets {parts[1].tokens:,}" in out
    assert "val fraction 0.01" not in out
    # inspect, too, says what each part got, not only the configured fraction
    assert inspect_command(str(data)) == 0
    out = capsys.readouterr().out
    total = m["totals"]["val_tokens"] / m["totals"]["tokens"]
    assert f"split hash, val fraction 0.01 per document and a minimum per part: val is {total:.2%} of the tokens" in out
    assert (f"part 'sonnets', +1 sources -> {m['totals']['train_tokens']:,} train, {m['totals']['val_tokens']:,} val "
            f"tokens; its val: {parts[1].tokens:,} tokens (hash split, topped up to the small-part minimum from "
            "the end of the stream)") in out


def test_a_part_too_small_for_any_val_is_warned_about(tmp_path, capsys):
    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "plays.parquet", play_texts(3, 3000)))], data)
    (tmp_path / "note.txt").write_text("Tiny.")
    prepare([str(tmp_path / "note.txt")], data)
    out = capsys.readouterr().out
    assert "warning: part 'note' got no val tokens (its 4 tokens are too few for a share)" in out  # EOT Tiny .


@pytest.mark.usefixtures("shared_data")
def test_an_added_wikipedia_part_gets_val(tmp_path, shared_data, capsys):
    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "plays.parquet", play_texts(6, 3000)))], data)
    m = prepare([str(shared_data / "enwiki-sample-pages-articles.xml.bz2")], data)
    wiki = m["versions"][-1]
    assert wiki["part"] == "wikipedia" and wiki["val_ranges"][0][1] > wiki["val_ranges"][0][0]
    parts = {p.name: p.tokens for p in open_dataset(data).val_parts}
    assert parts["wikipedia"] == m["sources"][-1]["val_tokens"] > 0


def test_val_parts_are_the_val_documents_of_each_part(tmp_path):
    first = [f"first part document {i}: " + "words " * (i % 9 + 3) for i in range(300)]
    second = [f"second part, other text {i}. " + "more " * (i % 5 + 2) for i in range(300)]
    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "a.parquet", first))], data, val_fraction=0.2, part="first")
    prepare([str(write_parquet(tmp_path / "b.parquet", second))], data, part="second")
    ds = open_dataset(data)
    streams = dict(ds.val_part_streams())
    assert list(streams) == ["first", "second"]
    for name, texts in (("first", first), ("second", second)):
        expected = encoded([t for t in texts if in_val(t, 0.2)])
        assert streams[name].read(0, len(streams[name])).tolist() == expected
    a, b = (p.ranges for p in ds.val_parts)
    assert a == [(0, a[0][1])] and b == [(a[0][1], ds.val_tokens)]
    # a part name given again joins that part: its val ranges grow
    third = [f"a third file of the first kind {i} " + "x " * (i % 4) for i in range(200)]
    prepare([str(write_parquet(tmp_path / "c.parquet", third))], data, part="first")
    parts = open_dataset(data).val_parts
    assert [(p.name, p.versions, len(p.ranges)) for p in parts] == [("first", [1, 3], 2), ("second", [2], 1)]


def test_part_names_come_from_the_sources_or_the_flag(tmp_path):
    assert derive_part_name(["/d/enwiki-1.xml.bz2", "/d/enwiki-2.xml.bz2"], ["wikipedia", "wikipedia"]) == "wikipedia"
    # wikiextractor's output (extracted/AA/wiki_00, ...) is Wikipedia too, not a part named after the tool
    wiki = [f"/home/u/extracted/A{c}/wiki_{i:02d}" for c in "AB" for i in range(3)]
    assert derive_part_name(wiki, ["wikiextractor"] * 6) == "wikipedia"
    assert derive_part_name(["/x/tinyshakespeare.txt"], ["text"]) == "tinyshakespeare"
    shards = [f"/home/u/data/fineweb-edu/shard_{i:05d}.parquet" for i in range(3)]
    assert derive_part_name(shards, ["parquet"] * 3) == "fineweb-edu"
    assert derive_part_name(["/plays/hamlet.md", "/plays/macbeth.md"], ["text", "text"]) == "plays"
    assert derive_part_name(["/a/x1.jsonl", "/b/y2.jsonl"], ["jsonl", "jsonl"]) == "jsonl"
    src = write_parquet(tmp_path / "a.parquet", ["one document", "another"])
    with pytest.raises(UserError, match=r"--part 'no spaces please': use 1-40 letters"):
        prepare([str(src)], tmp_path / "data", part="no spaces please")
    assert not (tmp_path / "data").exists()
    m = prepare([str(src)], tmp_path / "data", part="web")
    assert m["versions"][0]["part"] == "web" and m["sources"][0]["part"] == "web"


def _serve(directory):
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return httpd


def test_a_named_datasets_validation_file_becomes_val(tmp_path, monkeypatch):
    """nanochat's last shard is its validation split; it used to be prepared into train."""
    served = tmp_path / "served"
    served.mkdir()
    texts = play_texts(9, 2000)
    for i, chunk in enumerate([texts[0:3], texts[3:6], texts[6:8], texts[8:9]]):
        write_parquet(served / f"shard_{i:05d}.parquet", chunk)
    httpd = _serve(served)
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        named = dl.Dataset(f"{base}/shard_{{index:05d}}.parquet", 3, 3, "test")
        monkeypatch.setitem(dl.DATASETS, "mini-shuffle", named)
        down = tmp_path / "mini-shuffle"
        # (--mirror: the plain HTTP client; without it a named dataset goes through the Hugging Face Hub)
        dl.download("mini-shuffle", down, shards=2, mirror=base, out_stream=io.StringIO(),
                    progress_stream=io.StringIO())
    finally:
        httpd.shutdown()
        httpd.server_close()
    record = json.loads((down / RECORD).read_text())["files"]
    assert record["shard_00003.parquet"]["role"] == "val" and record["shard_00000.parquet"]["role"] == "train"
    data = tmp_path / "data"
    m = prepare([str(down)], data)
    ds = open_dataset(data)
    assert ds.val.read(0, ds.val_tokens).tolist() == encoded(texts[8:9])  # the validation file, all of it
    assert ds.train.read(0, ds.train_tokens).tolist() == encoded(texts[0:6])  # the train files, all of them
    assert m["versions"][0]["val_rule"] == "the dataset's validation file"
    assert m["versions"][0]["part"] == "mini-shuffle"
    assert [s.get("role") for s in m["sources"]] == [None, None, "val"]


def test_a_file_that_is_not_the_one_downloaded_is_not_taken_for_the_val_file(tmp_path):
    down = tmp_path / "down"
    down.mkdir()
    src = write_parquet(down / "shard_00003.parquet", play_texts(2, 2000))
    (down / RECORD).write_text(json.dumps({"files": {src.name: {"source": "x", "size": 5, "role": "val"}}}))
    assert recorded_role(src) is None  # another size: not the downloaded file
    (down / RECORD).write_text(json.dumps({"files": {src.name: {"source": "x", "size": src.stat().st_size,
                                                                    "role": "val", "sha256": "0" * 64}}}))
    m = prepare([str(src)], tmp_path / "data", val_fraction=0.0)
    assert m["totals"]["val_tokens"] == 0 and m["totals"]["train_tokens"] > 0  # another sha256: an ordinary file


def test_identity_tells_same_grown_and_other_datasets_apart(tmp_path):
    a = write_parquet(tmp_path / "a.parquet", play_texts(3, 3000))
    b = write_parquet(tmp_path / "b.parquet", play_texts(6, 3000)[3:])
    data, twin, other = tmp_path / "data", tmp_path / "twin", tmp_path / "other"
    prepare([str(a)], data)
    prepare([str(a)], twin)
    prepare([str(b)], other)
    first = open_dataset(data).identity
    assert compare_identity(first, open_dataset(twin).identity).relation == "same"  # same content, another folder
    check = compare_identity(first, open_dataset(other).identity)
    # (it named version 1 beside the train tokens of all versions: say which dataset each figure is of)
    now = open_dataset(other).identity["train_tokens"]
    assert check.relation == "other" and check.detail == (
        f"its version 1 holds other data than the checkpoint's version 1 (the checkpoint's dataset: 1 version(s), "
        f"{first['train_tokens']:,} train tokens; this one: 1 version(s), {now:,})")
    prepare([str(b)], data)
    grown = open_dataset(data).identity
    check = compare_identity(first, grown)
    assert check.relation == "grown" and check.compatible and "from 1 to 2 version(s)" in check.detail
    assert compare_identity(grown, first).relation == "other"  # shrunk: not the dataset the run saw
    char = tmp_path / "char"
    prepare([str(a)], char, tokenizer="char")
    assert compare_identity(first, open_dataset(char).identity).detail.startswith("another tokenizer")
    assert json.loads(json.dumps(grown)) == grown  # a checkpoint can keep it as JSON


def test_identity_of_a_shard_depends_on_its_bytes(tmp_path):
    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "a.parquet", play_texts(3, 3000)))], data)
    m = load_manifest(data)
    import hashlib

    for entry in m["shards"]["train"] + m["shards"]["val"]:
        body = (data / entry["file"]).read_bytes()[1024:]
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["max_id"] == int(np.frombuffer(body, dtype="<u2").max())


def test_manifests_written_before_parts_still_give_parts_and_identity(tmp_path):
    data = tmp_path / "data"
    prepare([str(write_parquet(tmp_path / "plays.parquet", play_texts(3, 3000)))], data)
    m = load_manifest(data)
    for v in m["versions"]:  # as the previous format wrote them
        for key in ("part", "val_ranges", "train_range", "val_rule", "identity"):
            v.pop(key)
    m["format_version"] = 1
    save_manifest(data, m)
    ds = open_dataset(data)
    assert [(p.name, p.ranges) for p in ds.val_parts] == [("plays", [(0, ds.val_tokens)])]
    before = ds.identity
    prepare([str(write_parquet(tmp_path / "more.parquet", play_texts(6, 3000)[3:]))], data)
    assert compare_identity(before, open_dataset(data).identity).relation == "grown"


def test_nanogpt_folder_has_one_val_part_and_an_identity(tmp_path):
    folder = tmp_path / "shakespeare_char"
    folder.mkdir()
    np.arange(1000, dtype=np.uint16).__mod__(60).astype(np.uint16).tofile(folder / "train.bin")
    np.arange(100, dtype=np.uint16).astype(np.uint16).tofile(folder / "val.bin")
    ds = open_dataset(folder)
    assert [(p.name, p.ranges) for p in ds.val_parts] == [("shakespeare_char", [(0, 100)])]
    assert compare_identity(ds.identity, open_dataset(folder).identity).relation == "same"
    np.arange(1000, dtype=np.uint16).__mod__(50).astype(np.uint16).tofile(folder / "train.bin")
    assert compare_identity(ds.identity, open_dataset(folder).identity).relation == "other"


def test_char_dataset_of_the_test_helpers_still_opens(tmp_path):
    from helpers import make_char_data

    ds = open_dataset(make_char_data(tmp_path, tiny_text(300)))
    assert ds.val_parts[0].name == "corpus" and ds.val_parts[0].tokens == ds.val_tokens > 0
