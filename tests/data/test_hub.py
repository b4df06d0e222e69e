"""`gptforge download hf://datasets/...` and the named datasets, through huggingface_hub, against a local fake Hub.

The fake Hub (tests/fake_hub.py) answers the endpoints huggingface_hub calls; nothing else is contacted.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from gptforge.data import download as dl
from gptforge.data import hub
from gptforge.data.download import Summary, download
from gptforge.data.provenance import RECORD
from gptforge.errors import UserError

from fake_hub import FakeHub, git_oid
from helpers import REPO

FAST = hub.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def shard(i: int, n: int = 3000) -> bytes:
    out, k = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(f"{i}:{k}".encode()).digest()
        k += 1
    return bytes(out[:n])


@pytest.fixture
def fake(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    # the developer's own token file and download cache stay out of the tests
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield server
    server.stop()


def fetch(url, out, shards=None, start=0, workers=2, **kw):
    return hub.download(url, out, shards, workers, start, summary=Summary(), policy=FAST, **kw)


def visible(directory):
    """What readers see: files outside hidden names (DIR/.gptforge-hub/ holds transfers in progress)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def record(directory):
    return json.loads((directory / RECORD).read_text())["files"]


def test_url_parsing_and_globs():
    assert hub.parse_url("hf://datasets/karpathy/climbmix-400b-shuffle/shard_0000*.parquet") == (
        "karpathy/climbmix-400b-shuffle", "main", "shard_0000*.parquet")
    assert hub.parse_url("hf://datasets/HuggingFaceFW/fineweb@v1.2/sample/10BT/*.parquet") == (
        "HuggingFaceFW/fineweb", "v1.2", "sample/10BT/*.parquet")
    assert hub.parse_url("hf://datasets/o/r@refs%2Fconvert%2Fparquet") == ("o/r", "refs/convert/parquet", "**")
    for bad in ("hf://datasets/onlyowner", "hf://models/o/r/x", "hf://datasets//r/x", "hf://datasets/o/r@/x"):
        with pytest.raises(UserError, match="hf://datasets/OWNER/REPO|empty revision"):
            hub.parse_url(bad)
    match = hub.glob_regex("sample/*/0[01]?_*.parquet").fullmatch
    assert match("sample/10BT/000_00000.parquet") and match("sample/10BT/011_00000.parquet")
    assert not match("sample/10BT/x/000_00000.parquet") and not match("sample/10BT/020_00000.parquet")
    assert hub.glob_regex("**/*.parquet").fullmatch("a/b/c.parquet")
    assert hub.glob_regex("**/*.parquet").fullmatch("c.parquet")


def test_glob_download_verified_recorded_and_skipped_on_rerun(fake, tmp_path):
    files = {f"data/part_{i}.parquet": shard(i) for i in range(3)}
    files.update({"data/notes.txt": b"small file, no LFS", "README.md": b"# card"})
    commit = fake.add("someone/corpus", files).refs["main"]
    fake.page_size = 2  # the tree listing comes in pages
    out = tmp_path / "out"
    summary = fetch("hf://datasets/someone/corpus/data/*", out)
    assert visible(out) == ["notes.txt", "part_0.parquet", "part_1.parquet", "part_2.parquet"]
    assert (out / "part_1.parquet").read_bytes() == files["data/part_1.parquet"]
    assert sorted(p.name for p in summary.fetched) == visible(out) and summary.bytes == 3 * 3000 + 18
    assert not (out / hub.STAGING).exists()
    entry = record(out)["part_1.parquet"]
    assert entry == {"source": "https://huggingface.co/datasets/someone/corpus/resolve/main/data/part_1.parquet",
                     "size": 3000, "role": "train", "sha256": hashlib.sha256(shard(1)).hexdigest(),
                     "repo": "someone/corpus", "revision": commit, "path": "data/part_1.parquet",
                     "git_oid": git_oid(shard(1))}
    assert record(out)["notes.txt"]["sha256"] == hashlib.sha256(b"small file, no LFS").hexdigest()
    # LFS bytes come from the CDN; a rerun asks the Hub only for the listing and fetches nothing
    assert len(fake.requests("cdn", "GET")) == 3
    fake.log.clear()
    again = fetch("hf://datasets/someone/corpus/data/*", out)
    assert again.fetched == [] and len(again.skipped) == 4
    assert fake.requests("cdn") == [] and fake.requests("hub", "HEAD") == []


def test_shards_and_start_take_a_slice_of_the_sorted_matches(fake, tmp_path):
    fake.add("o/r", {f"s_{i:02d}.parquet": shard(i, 100) for i in range(6)})
    fetch("hf://datasets/o/r/s_*.parquet", tmp_path / "a", shards=2, start=3)
    assert visible(tmp_path / "a") == ["s_03.parquet", "s_04.parquet"]
    with pytest.raises(UserError, match="6 files match; --start 9 leaves none"):
        fetch("hf://datasets/o/r/s_*.parquet", tmp_path / "b", start=9)
    with pytest.raises(UserError, match=r"no file of the dataset matches '\*.json'"):
        fetch("hf://datasets/o/r/*.json", tmp_path / "c")


def test_a_corrupted_file_is_caught_before_it_appears(fake, tmp_path):
    files = {f"shard_{i:05d}.parquet": shard(i) for i in range(3)}
    fake.add("o/r", files)
    bad = fake.cdn_path("o/r", "shard_00001.parquet")
    fake.script[("GET", bad)] += ["corrupt", "corrupt"]  # the same wrong bytes twice
    out = tmp_path / "out"
    with pytest.raises(UserError) as info:
        fetch("hf://datasets/o/r/*.parquet", out, workers=1)
    message = str(info.value)
    assert message.startswith("hf://datasets/o/r/shard_00001.parquet: sha256 mismatch: the Hub lists "
                              f"{hashlib.sha256(files['shard_00001.parquet']).hexdigest()}, the bytes hash to ")
    assert message.endswith("(fetched twice, wrong both times; nothing kept)")
    assert not (out / "shard_00001.parquet").exists() and "shard_00001.parquet" not in record(out)
    assert visible(out) == ["shard_00000.parquet"]  # a failure starts no further file
    # once the CDN serves the right bytes a rerun completes, fetching only what is missing
    summary = fetch("hf://datasets/o/r/*.parquet", out)
    assert sorted(p.name for p in summary.fetched) == ["shard_00001.parquet", "shard_00002.parquet"]
    assert all((out / n).read_bytes() == b for n, b in files.items())


def test_one_bad_transfer_is_fetched_again(fake, tmp_path):
    fake.add("o/r", {"a.parquet": shard(0), "small.json": b'{"x": 1}', ".gitattributes": b"*.parquet lfs"})
    fake.script[("GET", fake.cdn_path("o/r", "a.parquet"))] += ["corrupt"]
    # a small (non-LFS) file is checked against its git blob id
    fake.script[("GET", "/datasets/o/r/resolve/" + fake.repos[("dataset", "o/r")].refs["main"] + "/small.json")] += [
        "corrupt"]
    out = tmp_path / "out"
    fetch("hf://datasets/o/r", out)
    assert (out / "a.parquet").read_bytes() == shard(0) and (out / "small.json").read_bytes() == b'{"x": 1}'
    assert not (out / ".gitattributes").exists()  # hidden files are not part of a glob (every repo has this one)
    assert len(fake.requests("cdn", "GET")) == 2


def test_a_wrong_size_is_refused(fake, tmp_path):
    fake.add("o/r", {"a.parquet": shard(0)})
    fake.script[("GET", fake.cdn_path("o/r", "a.parquet"))] += [("short", 2000)] * 6
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"^hf://datasets/o/r/a.parquet: .*size.*3000"):
        fetch("hf://datasets/o/r/*.parquet", out)
    assert visible(out) == []


def test_rate_limits_and_dropped_connections_are_survived(fake, tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16384)  # (10 MB: a test file would arrive in one piece)
    fake.add("o/r", {"a.parquet": shard(0, 200_000), "b.parquet": shard(1)})
    main = fake.repos[("dataset", "o/r")].refs["main"]
    fake.script[("GET", "/api/datasets/o/r/revision/main")] += [429]
    fake.script[("GET", f"/api/datasets/o/r/tree/{main}")] += [503]
    fake.script[("HEAD", f"/datasets/o/r/resolve/{main}/b.parquet")] += [429]
    fake.script[("GET", fake.cdn_path("o/r", "b.parquet"))] += [429]
    fake.script[("GET", fake.cdn_path("o/r", "a.parquet"))] += [("drop", 70_000)]
    out = tmp_path / "out"
    fetch("hf://datasets/o/r/*.parquet", out)
    assert (out / "a.parquet").read_bytes() == shard(0, 200_000) and (out / "b.parquet").read_bytes() == shard(1)
    ranges = [r["range"] for r in fake.requests("cdn", "GET", fake.cdn_path("o/r", "a.parquet"))]
    assert ranges[0] is None and len(ranges) == 2
    if int(huggingface_hub.__version__.split(".")[0]) >= 1:  # (0.x fetches the file again from its start)
        assert ranges[1].startswith("bytes=") and int(ranges[1][6:].split("-")[0]) > 0


def test_named_dataset_fetches_its_validation_shard_marked_as_val(fake, tmp_path):
    files = {f"shard_{i:05d}.parquet": shard(i, 500) for i in (0, 1, 2, 6542)}
    commit = fake.add("karpathy/climbmix-400b-shuffle", files).refs["main"]
    out = tmp_path / "climb"
    summary = download("climbmix-400b-shuffle", out, shards=2, workers=2, start=1)
    assert visible(out) == ["shard_00001.parquet", "shard_00002.parquet", "shard_06542.parquet"]
    assert summary.val_file == out / "shard_06542.parquet"
    entries = record(out)
    assert {n: e["role"] for n, e in entries.items()} == {
        "shard_00001.parquet": "train", "shard_00002.parquet": "train", "shard_06542.parquet": "val"}
    # the same source URL as the plain HTTP client records, so the two share a directory
    assert entries["shard_06542.parquet"]["source"] == dl.plan("climbmix-400b-shuffle", out, 1)[-1].source
    assert entries["shard_06542.parquet"]["revision"] == commit
    # only the named files were asked about (paths-info), never a listing of all 6,543
    assert fake.requests("hub", "POST", "/api/datasets/karpathy/climbmix-400b-shuffle/paths-info/")
    assert not fake.requests("hub", "GET", "/api/datasets/karpathy/climbmix-400b-shuffle/tree/")
    with pytest.raises(UserError, match="has 6542 train shards"):
        download("climbmix-400b-shuffle", out, shards=2, start=6541)


def test_named_dataset_missing_on_the_hub(fake, tmp_path):
    fake.add("karpathy/fineweb-edu-100b-shuffle", {"shard_00000.parquet": shard(0)})
    with pytest.raises(UserError, match=r"shard_01822.parquet is not in the dataset \(1 file\(s\) missing"):
        download("fineweb-edu-100b-shuffle", tmp_path / "o", shards=1)


def test_every_named_dataset_has_a_validation_shard(tmp_path):
    for name, dataset in dl.DATASETS.items():
        jobs = dl.plan(name, tmp_path, 1)
        assert jobs[-1].role == "val" and hub.split_canonical_url(jobs[-1].source), name
    climb = dl.DATASETS["climbmix-400b-shuffle"]
    assert (climb.train_files, climb.val_index) == (6542, 6542)


def test_final_answers_are_one_line(fake, tmp_path):
    fake.add("o/r", {"a.parquet": shard(0)})
    with pytest.raises(UserError, match=r"^hf://datasets/o/missing@main: no such dataset repository \(or it is "
                                        r"private: log in with `hf auth login` or set HF_TOKEN\)$"):
        fetch("hf://datasets/o/missing/*", tmp_path / "x")
    with pytest.raises(UserError, match=r"^hf://datasets/o/r@v9: no such revision"):
        fetch("hf://datasets/o/r@v9/*", tmp_path / "x")
    fake.script[("GET", "/api/datasets/o/r/revision/main")] += [500] * 3
    with pytest.raises(UserError, match=r"^hf://datasets/o/r@main: .*500.* \(gave up after 3 attempts\)$"):
        fetch("hf://datasets/o/r/*", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_file_from_another_source_is_not_overwritten(fake, tmp_path):
    fake.add("o/r", {"a.parquet": shard(0)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.parquet").write_bytes(b"mine")
    (out / RECORD).write_text(json.dumps({"files": {"a.parquet": {"source": "https://elsewhere/a.parquet",
                                                                     "size": 4, "role": "train"}}}))
    with pytest.raises(UserError, match="was downloaded from https://elsewhere/a.parquet, not https://huggingface.co"):
        fetch("hf://datasets/o/r/*", out)
    assert (out / "a.parquet").read_bytes() == b"mine"


def test_a_stale_or_unrecorded_copy_is_checked(fake, tmp_path):
    fake.add("o/r", {"a.parquet": shard(0), "b.parquet": shard(1)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.parquet").write_bytes(shard(0))  # the right bytes, put there by hand: hashed once, kept
    (out / "b.parquet").write_bytes(b"x" * 3000)  # the right size, wrong bytes: replaced
    summary = fetch("hf://datasets/o/r/*", out)
    assert [p.name for p in summary.skipped] == ["a.parquet"] and [p.name for p in summary.fetched] == ["b.parquet"]
    assert (out / "b.parquet").read_bytes() == shard(1)
    assert record(out)["a.parquet"]["sha256"] == hashlib.sha256(shard(0)).hexdigest()


def test_cli_uses_the_token_file_and_hf_endpoint_and_keeps_the_token_off_the_cdn(fake, tmp_path):
    fake.add("gated/set", {"a.parquet": shard(0), "b.txt": b"hello"})
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text("hf_from_the_token_file\n")  # what `hf auth login` writes
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(home), HF_ENDPOINT=fake.url, PYTHONPATH=str(REPO / "src"))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "gptforge.cli", "download", "hf://datasets/gated/set/*",
                           "--out", str(out), "--workers", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"from gated/set at {fake.repos[('dataset', 'gated/set')].refs['main'][:12]}" in done.stdout
    assert f"{fake.url}, a token" in done.stdout and "done: 2 fetched, 0 already complete" in done.stdout
    ours = [r for r in fake.requests("hub") if "gated/set" in r["path"]]  # (not huggingface_hub's own look-ups)
    assert len(ours) >= 4 and {r["auth"] for r in ours} == {"Bearer hf_from_the_token_file"}
    assert {r["auth"] for r in fake.requests("cdn")} == {None}
    # HF_TOKEN wins over the file, as everywhere in the Hugging Face stack
    fake.log.clear()
    env["HF_TOKEN"] = "hf_from_env"
    subprocess.run([sys.executable, "-m", "gptforge.cli", "download", "hf://datasets/gated/set/*", "--out",
                    str(tmp_path / "out2")], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert {r["auth"] for r in fake.requests("hub") if "gated/set" in r["path"]} == {"Bearer hf_from_env"}


def test_shards_is_required_but_for_hf_urls(tmp_path):
    for name in ("climbmix-400b-shuffle", "https://h/x_{index}.bin"):
        with pytest.raises(UserError, match=r"--shards is required for .* \(only hf:// URLs default to every"):
            download(name, tmp_path / "o", shards=None)


def test_nested_folders_keep_their_path_below_the_glob(fake, tmp_path):
    fake.add("o/web", {"data/CC-2013/000.parquet": shard(0, 100), "data/CC-2014/000.parquet": shard(1, 100),
                       "data/CC-2014/001.parquet": shard(2, 100), "other/x.parquet": shard(3, 100)})
    out = tmp_path / "out"
    fetch("hf://datasets/o/web/data/**/*.parquet", out)
    assert visible(out) == ["CC-2013/000.parquet", "CC-2014/000.parquet", "CC-2014/001.parquet"]
    assert record(out)["CC-2014/000.parquet"]["path"] == "data/CC-2014/000.parquet"
    assert fetch("hf://datasets/o/web/data/**/*.parquet", out).fetched == []
