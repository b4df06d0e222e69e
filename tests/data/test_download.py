"""`gptforge download` against local HTTP servers on 127.0.0.1 that misbehave on cue.

The servers are started by the tests on ephemeral ports; nothing else is ever contacted.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from gptforge import cli
from gptforge.data import download as dl
from gptforge.data import fetcher
from gptforge.data.provenance import RECORD
from gptforge.errors import UserError

from fake_http import FAST, Fake, Handler, payload
from helpers import sigint_default


@pytest.fixture
def servers():
    started = []

    def start() -> tuple[Fake, str]:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        httpd.fake = Fake()
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        started.append(httpd)
        return httpd.fake, f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in started:
        httpd.fake.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(servers):
    return servers()


@pytest.fixture(autouse=True)
def no_proxy_no_token(monkeypatch):
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", *dl.TOKEN_ENV):
        monkeypatch.delenv(key, raising=False)


def run(name, out, shards=1, **kw):
    kw.setdefault("policy", FAST)
    kw.setdefault("out_stream", io.StringIO())
    kw.setdefault("progress_stream", io.StringIO())
    return dl.download(name, out, shards, **kw)


def files_in(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()} - {RECORD}


# --------------------------------------------------------------------------------------------- happy paths

def test_template_downloads_real_bytes_in_parallel_and_reports(server, tmp_path):
    fake, base = server
    bodies = {i: payload(50_000 + 1000 * i, seed=i) for i in range(5)}
    for i, b in bodies.items():
        fake.files[f"/data/part_{i:03d}.bin"] = b
    out, said = io.StringIO(), tmp_path / "out"
    summary = run(base + "/data/part_{index:03d}.bin", said, shards=4, start=1, workers=3, out_stream=out)
    assert files_in(said) == {f"part_{i:03d}.bin" for i in (1, 2, 3, 4)}
    for i in (1, 2, 3, 4):
        assert (said / f"part_{i:03d}.bin").read_bytes() == bodies[i]
    assert summary.bytes == sum(len(bodies[i]) for i in (1, 2, 3, 4))
    assert len(summary.fetched) == 4 and summary.skipped == [] and summary.val_file is None
    assert sorted(r["path"] for r in fake.requests("GET")) == [f"/data/part_{i:03d}.bin" for i in (1, 2, 3, 4)]
    assert all(r["range"] is None for r in fake.log)
    text = out.getvalue()
    assert f"-> {said.resolve()}" in text and "part_001.bin .. part_004.bin" in text
    assert "done: 4 fetched, 0 already complete" in text and "MB/s" in text
    record = json.loads((said / RECORD).read_text())["files"]
    assert record["part_002.bin"] == {"source": base + "/data/part_002.bin", "size": len(bodies[2]), "role": "train",
                                      "sha256": hashlib.sha256(bodies[2]).hexdigest()}


def test_complete_files_are_skipped_after_a_head_request(server, tmp_path):
    fake, base = server
    fake.files["/f/a_0.bin"] = payload(9000)
    run(base + "/f/a_{index}.bin", tmp_path)
    # same size, different content on disk: the size check alone decides, and nothing is fetched
    (tmp_path / "a_0.bin").write_bytes(b"x" * 9000)
    fake.log.clear()
    summary = run(base + "/f/a_{index}.bin", tmp_path)
    assert [r["method"] for r in fake.log] == ["HEAD"]
    assert summary.skipped == [tmp_path / "a_0.bin"] and summary.fetched == [] and summary.bytes == 0
    assert (tmp_path / "a_0.bin").read_bytes() == b"x" * 9000


def test_a_file_of_the_wrong_size_is_fetched_again(server, tmp_path):
    fake, base = server
    body = payload(12_345)
    fake.files["/f/a_0.bin"] = body
    (tmp_path / "a_0.bin").write_bytes(body[:5000])  # an old truncated copy, e.g. from another tool
    err = io.StringIO()
    summary = run(base + "/f/a_{index}.bin", tmp_path, progress_stream=err)
    assert (tmp_path / "a_0.bin").read_bytes() == body
    assert [r["method"] for r in fake.log] == ["HEAD", "GET"] and fake.log[1]["range"] is None
    assert "5,000 bytes on disk but the server has 12,345" in err.getvalue()
    assert summary.fetched == [tmp_path / "a_0.bin"]


# --------------------------------------------------------------------------------------------- resume and retry

def test_dropped_connection_resumes_with_the_right_range(server, tmp_path):
    fake, base = server
    body = payload(100_000)
    fake.files["/f/s_0.bin"] = body
    fake.script[("GET", "/f/s_0.bin")] = [("drop", 30_000), ("drop", 25_000)]
    summary = run(base + "/f/s_{index}.bin", tmp_path)
    assert (tmp_path / "s_0.bin").read_bytes() == body
    assert [r["range"] for r in fake.requests("GET")] == [None, "bytes=30000-", "bytes=55000-"]
    assert summary.bytes == 100_000 and files_in(tmp_path) == {"s_0.bin"}


def test_partial_file_from_an_earlier_run_is_resumed_not_restarted(server, tmp_path):
    fake, base = server
    body = payload(64_000)
    fake.files["/f/s_0.bin"] = body
    (tmp_path / ".s_0.bin.part").write_bytes(body[:40_000])
    summary = run(base + "/f/s_{index}.bin", tmp_path)
    assert [r["range"] for r in fake.requests("GET")] == ["bytes=40000-"]
    assert (tmp_path / "s_0.bin").read_bytes() == body and summary.bytes == 24_000
    # the sha256 recorded covers the whole file, including the bytes from the earlier run
    assert (
        json.loads((tmp_path / RECORD).read_text())["files"]["s_0.bin"]["sha256"] == hashlib.sha256(body).hexdigest()
    )


def test_whole_part_file_is_finished_on_416(server, tmp_path):
    fake, base = server
    body = payload(20_000)
    fake.files["/f/s_0.bin"] = body
    (tmp_path / ".s_0.bin.part").write_bytes(body)  # killed between the last byte and the rename
    run(base + "/f/s_{index}.bin", tmp_path)
    assert [r["range"] for r in fake.requests("GET")] == ["bytes=20000-"]
    assert (tmp_path / "s_0.bin").read_bytes() == body and files_in(tmp_path) == {"s_0.bin"}


def test_server_that_ignores_range_makes_the_file_restart(server, tmp_path):
    fake, base = server
    body = payload(30_000)
    fake.files["/f/s_0.bin"] = body
    fake.ignore_range = True
    (tmp_path / ".s_0.bin.part").write_bytes(b"stale bytes that must not survive" * 100)
    err = io.StringIO()
    run(base + "/f/s_{index}.bin", tmp_path, progress_stream=err)
    assert [r["range"] for r in fake.requests("GET")] == ["bytes=3300-"]
    assert (tmp_path / "s_0.bin").read_bytes() == body
    assert "ignored the range request; restarting from byte 0" in err.getvalue()


def test_5xx_is_retried_with_backoff_then_succeeds(server, tmp_path):
    fake, base = server
    body = payload(10_000)
    fake.files["/f/s_0.bin"] = body
    fake.script[("GET", "/f/s_0.bin")] = [500, 503, 502]
    err = io.StringIO()
    run(base + "/f/s_{index}.bin", tmp_path, progress_stream=err)
    assert len(fake.requests("GET")) == 4 and (tmp_path / "s_0.bin").read_bytes() == body
    assert err.getvalue().count("retrying ") == 3 and "HTTP 503" in err.getvalue()


def test_repeated_5xx_gives_up_with_the_url_and_status(server, tmp_path):
    fake, base = server
    fake.files["/f/s_0.bin"] = payload(1000)
    fake.script[("GET", "/f/s_0.bin")] = [503] * 10
    with pytest.raises(UserError) as e:
        run(base + "/f/s_{index}.bin", tmp_path)
    assert str(e.value) == f"{base}/f/s_0.bin: HTTP 503 Service Unavailable (gave up after 4 attempts)"
    assert len(fake.requests("GET")) == FAST.attempts and files_in(tmp_path) == set()


def test_404_is_final_at_once_and_running_files_still_finish(server, tmp_path):
    fake, base = server
    fake.files["/f/s_0.bin"] = payload(100_000)
    fake.files["/f/s_2.bin"] = payload(1000)
    fake.slow = 0.002  # s_0 is still running when s_1 fails
    with pytest.raises(UserError) as e:
        run(base + "/f/s_{index}.bin", tmp_path, shards=3, workers=2)
    assert str(e.value) == (f"{base}/f/s_1.bin: HTTP 404 Not Found "
                            "(no such file: check the dataset name, the shard range and --mirror)")
    assert len(fake.requests("GET", "/f/s_1.bin")) == 1
    assert (tmp_path / "s_0.bin").read_bytes() == payload(100_000)  # finished, not cut off
    assert fake.requests(path="/f/s_2.bin") == [] and files_in(tmp_path) == {"s_0.bin"}  # never started


def test_connection_dropped_for_good_leaves_only_a_part_file_that_resumes_later(server, tmp_path):
    fake, base = server
    body = payload(50_000)
    fake.files["/f/s_0.bin"] = body
    fake.script[("GET", "/f/s_0.bin")] = [("drop", 7000)] + [("drop", 0)] * 3
    with pytest.raises(UserError) as e:
        run(base + "/f/s_{index}.bin", tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{base}/f/s_0.bin: connection dropped after 7,000 of 50,000 bytes")
    assert "gave up after 4 attempts; .s_0.bin.part (7,000 bytes) is kept" in msg
    assert files_in(tmp_path) == {".s_0.bin.part"} and not (tmp_path / RECORD).exists()
    fake.log.clear()
    run(base + "/f/s_{index}.bin", tmp_path)
    assert [r["range"] for r in fake.log] == ["bytes=7000-"]
    assert (tmp_path / "s_0.bin").read_bytes() == body and files_in(tmp_path) == {"s_0.bin"}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_process_leaves_only_a_part_file_and_rerun_resumes(server, tmp_path, sig):
    fake, base = server
    body = payload(400_000)
    fake.files["/f/s_0.bin"] = body
    fake.slow = 0.01  # ~400 KB/s: the kill lands mid-file
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptforge", "download", base + "/f/s_{index}.bin", "--out", str(out), "--shards", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=sigint_default,
    )
    part = out / ".s_0.bin.part"
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size >= 40_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    rc = proc.wait(timeout=10)
    if sig == signal.SIGINT:  # Ctrl-C: workers stop between chunks, the CLI says so in one line
        assert rc == 130 and proc.stderr.read().decode().strip() == "gptforge download: interrupted"
    assert files_in(out) == {".s_0.bin.part"}
    kept = part.stat().st_size
    assert 0 < kept < len(body) and part.read_bytes() == body[:kept]
    fake.slow, fake.log[:] = 0.0, []
    run(base + "/f/s_{index}.bin", out)
    assert fake.log[0]["range"] == f"bytes={kept}-"
    assert (out / "s_0.bin").read_bytes() == body and files_in(out) == {"s_0.bin"}


# --------------------------------------------------------------------------------------------- verification


def hf_like(fake: Fake, cdn: Fake, cdn_base: str, path: str, body: bytes, sha: str | None = None):
    """Hugging Face's shape: /resolve/ answers 302 with X-Linked-Size/X-Linked-Etag; a CDN holds the bytes."""
    fake.redirects[path] = f"{cdn_base}/blob{path}"
    fake.headers[path] = {"X-Linked-Size": str(len(body)),
                          "X-Linked-Etag": f'"{sha or hashlib.sha256(body).hexdigest()}"',
                          "X-Repo-Commit": "0" * 40}
    cdn.files[f"/blob{path}"] = body


def test_sha256_mismatch_is_fetched_again_once_then_an_error(servers, tmp_path):
    (fake, base), (cdn, cdn_base) = servers(), servers()
    hf_like(fake, cdn, cdn_base, "/r/s_0.bin", payload(8000), sha="ab" * 32)
    with pytest.raises(UserError) as e:
        run(base + "/r/s_{index}.bin", tmp_path)
    assert str(e.value).startswith(f"{base}/r/s_0.bin: sha256 mismatch: the server announced {'ab' * 32}")
    assert "fetched twice, wrong both times" in str(e.value)
    assert len(cdn.requests("GET")) == 2 and files_in(tmp_path) == set()


def test_size_lie_is_fetched_again_once_then_an_error(servers, tmp_path):
    (fake, base), (cdn, cdn_base) = servers(), servers()
    body = payload(8000)
    hf_like(fake, cdn, cdn_base, "/r/s_0.bin", body)
    fake.headers["/r/s_0.bin"]["X-Linked-Size"] = "9000"
    with pytest.raises(UserError) as e:
        run(base + "/r/s_{index}.bin", tmp_path)
    assert str(e.value) == (f"{base}/r/s_0.bin: wrong size: the server announced 9,000 bytes but serves 8,000 "
                            "(fetched twice, wrong both times; nothing kept)")
    assert files_in(tmp_path) == set()


def test_short_content_length_is_caught_by_the_checksum_and_fixed_on_refetch(servers, tmp_path):
    (fake, base), (cdn, cdn_base) = servers(), servers()
    body = payload(8000)
    hf_like(fake, cdn, cdn_base, "/r/s_0.bin", body)
    fake.headers["/r/s_0.bin"].pop("X-Linked-Size")
    cdn.script[("GET", "/blob/r/s_0.bin")] = [("length", 6000)]  # claims and sends 6,000 of 8,000 bytes once
    err = io.StringIO()
    run(base + "/r/s_{index}.bin", tmp_path, progress_stream=err)
    assert (tmp_path / "s_0.bin").read_bytes() == body
    assert "sha256 mismatch" in err.getvalue() and len(cdn.requests("GET")) == 2


def test_named_dataset_via_mirror_fetches_validation_shard_and_token_stays_on_the_mirror(servers, tmp_path,
                                                                                        monkeypatch):
    (mirror, base), (cdn, cdn_base) = servers(), servers()
    cdn.refuse_head = True
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    root = "/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
    bodies = {i: payload(5000 + i, seed=i) for i in (0, 1, 2, 1822)}
    for i, b in bodies.items():
        hf_like(mirror, cdn, cdn_base, f"{root}/shard_{i:05d}.parquet", b)
    out = io.StringIO()
    summary = run("fineweb-edu-100b-shuffle", tmp_path, shards=2, mirror=base, out_stream=out)
    assert files_in(tmp_path) == {"shard_00000.parquet", "shard_00001.parquet", "shard_01822.parquet"}
    for i in (0, 1, 1822):
        assert (tmp_path / f"shard_{i:05d}.parquet").read_bytes() == bodies[i]
    assert summary.val_file == tmp_path / "shard_01822.parquet"
    assert "validation shard_01822.parquet" in out.getvalue()
    assert {r["auth"] for r in mirror.log} == {"Bearer hf_secret"}
    assert {r["auth"] for r in cdn.log} == {None}
    record = json.loads((tmp_path / RECORD).read_text())["files"]
    assert record["shard_01822.parquet"]["role"] == "val"
    assert record["shard_00000.parquet"]["source"] == f"https://huggingface.co{root}/shard_00000.parquet"
    # a rerun with more shards: the complete ones cost one HEAD each on the mirror (its X-Linked-Size), no CDN call
    mirror.log.clear()
    cdn.log.clear()
    summary = run("fineweb-edu-100b-shuffle", tmp_path, shards=3, mirror=base)
    assert len(summary.skipped) == 3 and summary.fetched == [tmp_path / "shard_00002.parquet"]
    assert sorted(r["method"] for r in mirror.log) == ["GET", "HEAD", "HEAD", "HEAD"]
    assert [r["method"] for r in cdn.log] == ["GET"]


def test_head_refused_falls_back_to_a_one_byte_range(server, tmp_path):
    fake, base = server
    fake.files["/f/s_0.bin"] = payload(3000)
    run(base + "/f/s_{index}.bin", tmp_path)
    fake.refuse_head = True
    fake.log.clear()
    summary = run(base + "/f/s_{index}.bin", tmp_path)
    assert [(r["method"], r["range"]) for r in fake.log] == [("HEAD", None), ("GET", "bytes=0-0")]
    assert summary.skipped == [tmp_path / "s_0.bin"]


def test_gated_dataset_without_token_says_what_to_set(server, tmp_path):
    fake, base = server
    fake.script[("GET", "/f/s_0.bin")] = [401]
    with pytest.raises(UserError) as e:
        run(base + "/f/s_{index}.bin", tmp_path)
    assert str(e.value) == (f"{base}/f/s_0.bin: HTTP 401 Unauthorized "
                            "(a gated dataset? set HF_TOKEN to an access token that may read it)")


def test_token_goes_only_to_huggingface_or_the_mirror_and_only_over_https():
    http = fetcher.Http(FAST, "https://hf-mirror.com", "tok")
    assert http._auth("https://huggingface.co/datasets/x/resolve/main/a.parquet")
    assert http._auth("https://hf-mirror.com/datasets/x/a.parquet")
    assert not http._auth("https://cdn-lfs.hf.co/x")
    assert not http._auth("https://example.com/huggingface.co/a")
    assert not http._auth("http://huggingface.co/a")  # never in clear text
    assert not fetcher.Http(FAST, None, None)._auth("https://huggingface.co/a")


def test_same_file_name_from_another_dataset_is_refused(servers, tmp_path):
    (a, base_a), (b, base_b) = servers(), servers()
    a.files["/sample/10BT/000_00000.parquet"] = payload(4000, seed=1)
    b.files["/edu/sample/10BT/000_00000.parquet"] = payload(4100, seed=2)
    run(base_a + "/sample/10BT/{index:03d}_00000.parquet", tmp_path)
    with pytest.raises(UserError) as e:
        run(base_b + "/edu/sample/10BT/{index:03d}_00000.parquet", tmp_path)
    assert str(e.value) == (f"{tmp_path / '000_00000.parquet'} was downloaded from "
                            f"{base_a}/sample/10BT/000_00000.parquet, not {base_b}/edu/sample/10BT/000_00000.parquet: "
                            "use another --out directory for this dataset")
    assert (tmp_path / "000_00000.parquet").read_bytes() == payload(4000, seed=1) and b.log == []


# --------------------------------------------------------------------------------------------- disk full

class _FullDisk(io.FileIO):
    budget = 6000

    def write(self, data):
        if self.tell() + len(data) > self.budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_disk_full_while_writing_is_one_clear_line_and_no_complete_looking_file(server, tmp_path, monkeypatch):
    fake, base = server
    fake.files["/f/s_0.bin"] = payload(20_000)
    monkeypatch.setattr(fetcher, "open", lambda path, mode: _FullDisk(path, mode.replace("b", "")), raising=False)
    with pytest.raises(UserError) as e:
        run(base + "/f/s_{index}.bin", tmp_path)
    assert str(e.value).startswith(f"{base}/f/s_0.bin: disk full while writing {tmp_path / '.s_0.bin.part'}")
    assert files_in(tmp_path) == {".s_0.bin.part"} and len(fake.requests("GET")) == 1


def test_not_enough_free_space_is_refused_before_writing(server, tmp_path, monkeypatch):
    fake, base = server
    fake.files["/f/s_0.bin"] = payload(20_000)
    monkeypatch.setattr(fetcher.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(UserError) as e:
        run(base + "/f/s_{index}.bin", tmp_path)
    assert "disk full: s_0.bin needs 0.0 MB more, 0.0 MB free in" in str(e.value)
    assert files_in(tmp_path) == set()


# --------------------------------------------------------------------------------------------- plan, CLI, progress

def test_plan_for_named_datasets_and_bad_requests(tmp_path):
    jobs = dl.plan("fineweb-edu-100b-shuffle", tmp_path, shards=2, start=5)
    assert [j.url for j in jobs] == [
        "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_00005.parquet",
        "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_00006.parquet",
        "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_01822.parquet"]
    assert [j.role for j in jobs] == ["train", "train", "val"]
    jobs = dl.plan("fineweb-sample-10BT", tmp_path, shards=1, mirror="https://hf-mirror.com/")
    assert [j.url for j in jobs] == ["https://hf-mirror.com/datasets/HuggingFaceFW/fineweb/resolve/main/sample/10BT/000_00000.parquet",
                                     "https://hf-mirror.com/datasets/HuggingFaceFW/fineweb/resolve/main/sample/10BT/014_00000.parquet"]
    assert jobs[0].part == tmp_path / ".000_00000.parquet.part"
    assert dl.plan("fineweb-edu-sample-10BT", tmp_path, shards=13)[-1].path.name == "013_00000.parquet"
    cases = {
        (
            "fineweb-edu-100b-shuffle",
            3,
            1820,
        ): "fineweb-edu-100b-shuffle has 1822 train shards (0..1821); --start 1820 --shards 3 asks for up to 1822",
        (
            "fineweb",
            1,
            0,
        ): (
            "unknown dataset 'fineweb': known are fineweb-edu-100b-shuffle, fineweb-sample-10BT, "
            "fineweb-edu-sample-10BT"
        ),
        ("https://h/x_{idx}.bin", 1, 0): "unknown dataset",
        ("https://h/x_{index}_{part}.bin", 1, 0): "cannot fill in the shard index ('part')",
        ("ftp://h/x_{index}.bin", 1, 0): "must start with http:// or https://",
        ("https://h/x.bin?i={index}", 2, 0): "shards 0 and 1 both map to the file name 'x.bin'",
        ("https://h/x_{index}.bin", 0, 0): "--shards must be at least 1",
        ("https://h/a%2F..%2F..%2Fx_{index}.bin", 1, 0): "its path does not end in a usable file name",
        ("https://h/..%5Cx_{index}.bin", 1, 0): "its path does not end in a usable file name",
    }
    for (name, shards, start), message in cases.items():
        with pytest.raises(UserError) as e:
            dl.plan(name, tmp_path, shards, start)
        assert message in str(e.value), (name, str(e.value))
    with pytest.raises(UserError, match="--mirror ftp://m: expected a base URL"):
        dl.apply_mirror("https://huggingface.co/a", "ftp://m")
    assert dl.apply_mirror("https://huggingface.co/a/b.parquet?x=1", "http://127.0.0.1:9/hf/") == "http://127.0.0.1:9/hf/a/b.parquet?x=1"


def test_cli_downloads_and_reports_errors_in_one_line(server, tmp_path, capsys):
    fake, base = server
    fake.files["/c/t_0.txt"] = b"hello world\n" * 100
    assert cli.main(["download", base + "/c/t_{index}.txt", "--out", str(tmp_path), "--shards", "1",
                     "--workers", "2"]) == 0
    assert (tmp_path / "t_0.txt").read_bytes() == b"hello world\n" * 100
    assert "done: 1 fetched" in capsys.readouterr().out
    assert (
        cli.main(["download", base + "/c/t_{index}.txt", "--out", str(tmp_path), "--shards", "1", "--start", "1"]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert err == (f"gptforge download: error: {base}/c/t_1.txt: HTTP 404 Not Found "
                   "(no such file: check the dataset name, the shard range and --mirror)")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_with_mb_per_second_on_a_terminal_only(server, tmp_path):
    fake, base = server
    fake.files["/f/s_0.bin"] = payload(200_000)
    fake.slow = 0.002
    tty = _Tty()
    run(base + "/f/s_{index}.bin", tmp_path, progress_stream=tty)
    assert "\r\033[K  0/1 files" in tty.getvalue() and " MB/s" in tty.getvalue()
    plain = io.StringIO()
    run(base + "/f/s_{index}.bin", tmp_path / "again", progress_stream=plain)
    assert plain.getvalue() == ""


# --------------------------------------------------------------------------------------------- hostile servers

@pytest.mark.parametrize("target", ["file://{secret}", "ftp://127.0.0.1/x", "data:text/plain,hello", "gopher://h/x"])
def test_redirect_to_anything_but_http_is_refused_and_nothing_is_written(server, tmp_path, target):
    """A `302 Location: file:///etc/passwd` copied that file into --out, exit 0."""
    fake, base = server
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    fake.redirects["/f/s_0.bin"] = target.format(secret=secret)
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        run(base + "/f/s_{index}.bin", out)
    assert str(e.value) == (f"{base}/f/s_0.bin: the server redirects to {target.format(secret=secret)}; "
                            "only http and https redirects are followed")
    assert files_in(out) == set() and not (out / RECORD).exists()


def test_the_opener_itself_cannot_read_files(tmp_path):
    (tmp_path / "x").write_text("secret")
    with pytest.raises(urllib.error.URLError, match="unknown url type: file"):
        fetcher._http_only_opener().open((tmp_path / "x").as_uri())


def test_redirects_are_followed_a_few_hops_then_refused(server, tmp_path):
    fake, base = server
    body = payload(5000)
    fake.files["/final/s_0.bin"] = body
    for hop in range(fetcher.MAX_REDIRECTS):  # /f/s_0.bin -> /hop1 -> ... -> /final: MAX_REDIRECTS hops in all
        fake.redirects["/f/s_0.bin" if hop == 0 else f"/hop{hop}"] = (
            f"/hop{hop + 1}" if hop + 1 < fetcher.MAX_REDIRECTS else "/final/s_0.bin")
    run(base + "/f/s_{index}.bin", tmp_path / "ok")
    assert (tmp_path / "ok" / "s_0.bin").read_bytes() == body
    fake.redirects["/loop"] = "/loop"
    fake.redirects["/f/s_1.bin"] = "/loop"
    with pytest.raises(UserError, match=rf"s_1.bin: more than {fetcher.MAX_REDIRECTS} redirects \(the last to "):
        run(base + "/f/s_{index}.bin", tmp_path / "loop", start=1)
    assert files_in(tmp_path / "loop") == set()


def test_body_without_content_length_cut_short_is_not_complete(server, tmp_path):
    """12,345 of 200,000 bytes, no Content-Length: it was renamed as complete."""
    fake, base = server
    body = payload(200_000)
    fake.files["/f/s_0.bin"] = body
    fake.script[("GET", "/f/s_0.bin")] = [("no-length", 12_345)]
    run(base + "/f/s_{index}.bin", tmp_path)
    # the size comes from a HEAD request; the rest is fetched from where the cut was
    assert [(r["method"], r["range"]) for r in fake.log] == [("GET", None), ("HEAD", None), ("GET", "bytes=12345-")]
    assert (tmp_path / "s_0.bin").read_bytes() == body
    fake.script[("GET", "/f/s_1.bin")] = [("no-length", 12_345)] + [("drop", 0)] * 10  # then no progress
    fake.files["/f/s_1.bin"] = body
    with pytest.raises(UserError, match=r"s_1.bin: connection dropped after 12,345 of 200,000 bytes"):
        run(base + "/f/s_{index}.bin", tmp_path, start=1)
    assert files_in(tmp_path) == {"s_0.bin", ".s_1.bin.part"}


def test_body_longer_than_announced_is_cut_off_and_never_kept(server, tmp_path):
    """What a redirect to /dev/zero did, over http: more bytes than the size the server announced."""
    fake, base = server
    fake.files["/f/s_0.bin"] = payload(10_000)
    fake.script[("GET", "/f/s_0.bin")] = [("more", 1_000_000)] * 2
    fake.hide_length = True
    fake.script[("HEAD", "/f/s_0.bin")] = []
    fake.headers["/f/s_0.bin"] = {"X-Linked-Size": "10000"}
    with pytest.raises(UserError) as e:
        run(base + "/f/s_{index}.bin", tmp_path)
    assert str(e.value) == (f"{base}/f/s_0.bin: wrong size: the server sends more than the 10,000 bytes it announced "
                            "(fetched twice, wrong both times; nothing kept)")
    assert files_in(tmp_path) == set()


def test_without_any_size_or_checksum_the_bytes_are_taken_and_it_says_so(server, tmp_path):
    fake, base = server
    body = payload(30_000)
    fake.files["/f/s_0.bin"] = body
    fake.hide_length = True
    err = io.StringIO()
    run(base + "/f/s_{index}.bin", tmp_path, progress_stream=err)
    assert (tmp_path / "s_0.bin").read_bytes() == body
    assert ("announces neither size nor checksum; the 30,000 bytes received are taken as the whole file"
            in err.getvalue())


def test_ctrl_c_on_a_stalled_download_stops_within_two_seconds(server, tmp_path):
    """It took 56 s: the workers waited in a socket read with a 60 s timeout."""
    fake, base = server
    body = payload(400_000)
    fake.files["/f/s_0.bin"] = body
    fake.script[("GET", "/f/s_0.bin")] = [("stall", 50_000)]
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptforge", "download", base + "/f/s_{index}.bin", "--out", str(out), "--shards", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, preexec_fn=sigint_default,
    )
    part = out / ".s_0.bin.part"
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size >= 50_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # stalled now: no byte is coming
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=30)
    assert time.monotonic() - sent < 2.0
    assert rc == 130 and proc.stderr.read().decode().strip() == "gptforge download: interrupted"
    assert files_in(out) == {".s_0.bin.part"} and part.read_bytes() == body[:50_000]
    fake.release.set()
    run(base + "/f/s_{index}.bin", out)  # and it resumes
    assert (out / "s_0.bin").read_bytes() == body
