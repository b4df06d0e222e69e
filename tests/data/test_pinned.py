"""`gptforge download hellaswag`: a pinned file, verified by size, sha256 and git blob id, into the cache.

The fake servers of test_download.py stand in for raw.githubusercontent.com (through --mirror)."""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from http.server import ThreadingHTTPServer

import pytest

from gptforge import cli
from gptforge.data import download as dl
from gptforge.data import pinned
from gptforge.data.provenance import RECORD
from gptforge.errors import UserError
from gptforge.fsutil import sha256_file

from fake_http import FAST, Fake, Handler
from helpers import FIXTURES

DATA = (FIXTURES / "hellaswag_val_small.jsonl").read_bytes()
PATH = "/rowanz/hellaswag/0123abc/data/hellaswag_val.jsonl"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A server holding the fixture at the pinned path, the pin set to the fixture, the cache in tmp_path."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.fake = Fake()
    httpd.fake.files[PATH] = DATA
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    source = FIXTURES / "hellaswag_val_small.jsonl"
    pin = pinned.PinnedFile(f"https://raw.githubusercontent.com{PATH}", len(DATA), sha256_file(source),
                            pinned.git_blob_id(source), "hellaswag", "HellaSwag (test pin)")
    monkeypatch.setitem(pinned.PINNED, "hellaswag", pin)
    monkeypatch.setenv("GPTFORGE_CACHE", str(tmp_path / "cache"))
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(key, raising=False)
    yield httpd.fake, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def fetch(mirror, out=None):
    stdout = io.StringIO()
    summary = dl.download("hellaswag", out, None, mirror=mirror, policy=FAST, out_stream=stdout,
                          progress_stream=io.StringIO())
    return summary, stdout.getvalue()


def test_the_blob_id_is_gits(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    path = FIXTURES / "hellaswag_val_small.jsonl"
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert pinned.git_blob_id(path) == expected.stdout.strip()


def test_the_real_pin_is_the_official_val_set():
    pin = pinned.PINNED["hellaswag"]
    assert pin.url == ("https://raw.githubusercontent.com/rowanz/hellaswag/a29ff8e9a04bba4bd6588223785ce105328adc57/"
                       "data/hellaswag_val.jsonl") and pin.filename == "hellaswag_val.jsonl"
    assert (pin.size, pin.git_blob) == (12_246_618, "0f5ee25d72216f12317d5d8a7b92deafa423d81e")


def test_fetched_into_the_cache_then_checked_without_a_request(fake, tmp_path):
    server, base = fake
    summary, out = fetch(base)
    target = tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"
    assert target.read_bytes() == DATA and summary.fetched == [target]
    assert out.splitlines()[0] == f"download hellaswag: hellaswag_val.jsonl -> {target.parent} (1 workers)"
    assert out.splitlines()[1] == "  HellaSwag (test pin)"
    assert sorted(p.name for p in target.parent.iterdir()) == [RECORD, "hellaswag_val.jsonl"]
    server.log.clear()
    summary, _ = fetch(base)
    assert summary.skipped == [target] and server.log == []  # verified on disk, nothing asked


def test_wrong_bytes_are_refused_and_nothing_appears(fake, tmp_path):
    server, base = fake
    server.files[PATH] = DATA[:-10] + b"x" * 10  # same size, other content
    with pytest.raises(UserError, match="sha256 mismatch: the pin says .* nothing kept"):
        fetch(base)
    assert len(server.requests("GET", PATH)) == 2
    assert [p.name for p in (tmp_path / "cache" / "hellaswag").iterdir()] == []


def test_a_wrong_blob_id_is_refused_too(fake, monkeypatch):
    server, base = fake
    pin = pinned.PINNED["hellaswag"]
    monkeypatch.setitem(pinned.PINNED, "hellaswag", pinned.PinnedFile(pin.url, pin.size, pin.sha256, "0" * 40,
                                                                      pin.folder, pin.about))
    with pytest.raises(UserError, match="git blob id [0-9a-f]{40} is not the pinned 0{40}"):
        fetch(base)


def test_a_damaged_cached_file_is_fetched_again(fake, tmp_path):
    server, base = fake
    target = tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"
    target.parent.mkdir(parents=True)
    target.write_bytes(DATA[:100])
    summary, _ = fetch(base)
    assert summary.fetched == [target] and target.read_bytes() == DATA


def test_a_partial_download_resumes_from_where_it_stopped(fake, tmp_path):
    server, base = fake
    out = tmp_path / "elsewhere"
    out.mkdir()
    (out / ".hellaswag_val.jsonl.part").write_bytes(DATA[:1000])
    summary, _ = fetch(base, out)
    assert (out / "hellaswag_val.jsonl").read_bytes() == DATA
    assert server.requests("GET", PATH)[0]["range"] == "bytes=1000-"


def test_bad_requests_in_one_line(fake, tmp_path, capsys):
    _, base = fake
    assert cli.main(["download", "hellaswag", "--shards", "2", "--mirror", base]) == 1
    assert capsys.readouterr().err.strip() == "gptforge download: error: hellaswag is a single file: drop --shards " \
                                              "and --start"
    assert cli.main(["download", "fineweb-sample-10BT", "--shards", "1"]) == 1
    assert "say where the files go with --out DIR" in capsys.readouterr().err
    assert cli.main(["download", "fineweb-sample-10BT", "--out", str(tmp_path / "d")]) == 1
    assert "--shards is required for fineweb-sample-10BT" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
