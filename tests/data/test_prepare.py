import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gptforge.data.encode import cut_points, in_val, safe_pieces
from gptforge.data.manifest import listed_shards, load_manifest
from gptforge.data.prepare import prepare
from gptforge.data.shards import open_shard
from gptforge.data.tokenizers import gpt2_tokenizer
from gptforge.errors import UserError

from helpers import play_texts, sigint_default, tree_digest, write_parquet

EOT = 50256


def stream(data_dir, split):
    m = load_manifest(data_dir)
    parts = [np.asarray(open_shard(p)) for p, _ in listed_shards(data_dir, m, split)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def docs_of(tokens, eot=EOT):
    """Split a stream on end-of-text: every document must start with it."""
    assert len(tokens) == 0 or tokens[0] == eot
    cuts = np.flatnonzero(tokens == eot).tolist() + [len(tokens)]
    return [tokens[a + 1 : b].tolist() for a, b in zip(cuts, cuts[1:])]


def test_every_document_is_preceded_by_eot_with_exact_gpt2_ids(tmp_path):
    texts = ["Hello world", "Second document here.", "third"]
    src = write_parquet(tmp_path / "a.parquet", texts)
    prepare([str(src)], tmp_path / "data", val_fraction=0.0)
    tok = gpt2_tokenizer()
    assert docs_of(stream(tmp_path / "data", "train")) == [tok.encode(t).tolist() for t in texts]
    assert stream(tmp_path / "data", "train")[:3].tolist() == [EOT, 15496, 995]
    m = load_manifest(tmp_path / "data")
    assert m["tokenizer"]["name"] == "gpt2" and m["tokenizer"]["eot_id"] == EOT
    assert m["totals"]["documents"] == 3 and m["totals"]["train_tokens"] == len(stream(tmp_path / "data", "train"))
    assert m["sources"][0]["fingerprint"].startswith("sha256:")


def test_shards_split_at_shard_tokens_and_stream_continues(tmp_path):
    texts = play_texts(3, 3000)
    src = write_parquet(tmp_path / "a.parquet", texts)
    prepare([str(src)], tmp_path / "data", val_fraction=0.0, shard_tokens=500)
    m = load_manifest(tmp_path / "data")
    sizes = [s["tokens"] for s in m["shards"]["train"]]
    assert all(s == 500 for s in sizes[:-1]) and 0 < sizes[-1] <= 500 and len(sizes) > 3
    assert [d for d in docs_of(stream(tmp_path / "data", "train"))] == [
        gpt2_tokenizer().encode(t).tolist() for t in texts
    ]


def test_hash_split_is_stable_when_data_is_appended(tmp_path):
    texts = [f"document number {i}: " + "word " * (i % 7 + 1) for i in range(400)]
    write_parquet(tmp_path / "p1.parquet", texts[:200])
    write_parquet(tmp_path / "p2.parquet", texts[200:])
    data = tmp_path / "data"
    prepare([str(tmp_path / "p1.parquet")], data, val_fraction=0.2)
    train1, val1 = stream(data, "train"), stream(data, "val")
    prepare([str(tmp_path / "p2.parquet")], data)
    train2, val2 = stream(data, "train"), stream(data, "val")
    # the old streams are prefixes of the new ones: nothing earlier moved or changed
    assert train2[: len(train1)].tolist() == train1.tolist() and len(train2) > len(train1)
    assert val2[: len(val1)].tolist() == val1.tolist() and len(val2) > len(val1)
    tok = gpt2_tokenizer()
    val_docs = docs_of(val2)
    expected_val = [tok.encode(t).tolist() for t in texts if in_val(t, 0.2)]
    assert val_docs == expected_val and 40 < len(val_docs) < 130
    m = load_manifest(data)
    assert [v["version"] for v in m["versions"]] == [1, 2]
    assert m["sources"][1]["shards"] == ["train_000001.bin", "val_000001.bin"]


def test_tail_split_keeps_the_first_90_percent_for_training(tmp_path):
    text = "".join(play_texts(2, 30_000))
    (tmp_path / "input.txt").write_text(text)
    prepare([str(tmp_path / "input.txt")], tmp_path / "data", tokenizer="char", split="tail", val_fraction=0.1)
    m = load_manifest(tmp_path / "data")
    from gptforge.data.tokenizers import load_tokenizer

    tok = load_tokenizer(tmp_path / "data" / "tokenizer")
    full = np.concatenate([[tok.eot_id], tok.encode(text)])
    n_val = round(len(full) * 0.1)
    assert stream(tmp_path / "data", "train").tolist() == full[: len(full) - n_val].tolist()
    assert stream(tmp_path / "data", "val").tolist() == full[len(full) - n_val :].tolist()
    assert m["tokenizer"]["vocab_size"] == len(set(text)) + 1


def test_small_corpus_gets_a_minimum_validation_split(tmp_path):
    (tmp_path / "one.txt").write_text(play_texts(1, 40_000)[0])
    prepare([str(tmp_path / "one.txt")], tmp_path / "data")  # one document: the hash puts it wholly in one split
    m = load_manifest(tmp_path / "data")
    total = m["totals"]["tokens"]
    assert m["totals"]["val_tokens"] >= total // 10 - 1 and m["totals"]["train_tokens"] > 0


def test_rerun_with_nothing_new_leaves_the_dataset_byte_for_byte_unchanged(tmp_path, capsys):
    src = write_parquet(tmp_path / "a.parquet", play_texts(3, 2000))
    prepare([str(src)], tmp_path / "data")
    before = tree_digest(tmp_path / "data")
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(src.read_bytes())
    prepare([str(src), str(copy)], tmp_path / "data")
    out = capsys.readouterr().out
    assert "already in the dataset" in out and "same content as" in out and "nothing to add" in out
    assert tree_digest(tmp_path / "data") == before


def test_a_changed_file_at_a_known_path_is_refused(tmp_path):
    src = write_parquet(tmp_path / "a.parquet", ["one", "two"])
    prepare([str(src)], tmp_path / "data")
    before = tree_digest(tmp_path / "data")
    write_parquet(src, ["one", "two", "three"])
    with pytest.raises(UserError, match=r"a.parquet changed since it was added"):
        prepare([str(src)], tmp_path / "data")
    assert tree_digest(tmp_path / "data") == before


def test_bad_inputs_leave_data_dir_exactly_as_it_was(tmp_path):
    good = write_parquet(tmp_path / "a.parquet", ["one", "two"])
    data = tmp_path / "data"
    prepare([str(good)], data)
    before = tree_digest(data)
    bad_column = write_parquet(tmp_path / "b.parquet", ["x"], column="body")
    corrupt = tmp_path / "c.parquet"
    corrupt.write_bytes(b"garbage")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    tok_dir = tmp_path / "tok"
    from gptforge.data.tokenizers import train_bpe

    train_bpe(play_texts(2, 5000), 300, tok_dir)
    cases = [
        ([str(tmp_path / "missing.parquet")], {}, "does not exist"),
        ([str(bad_column)], {}, "no column 'text'; its columns are body, id"),
        ([str(corrupt)], {}, "not a readable parquet file"),
        ([str(empty)], {}, "hold no documents"),
        ([str(tmp_path / "x.csv")], {}, "does not exist"),
        ([str(good.with_name("n.parquet"))], {}, "does not exist"),
        ([str(bad_column)], {"tokenizer": str(tok_dir)}, "is a different tokenizer"),
        ([str(bad_column)], {"val_fraction": 0.5}, "changing it would move existing documents"),
        ([str(bad_column)], {"workers": -1}, "--workers must be at least 1, got -1"),
        ([str(bad_column)], {"part": "../x"}, "--part '../x': use 1-40 letters"),
    ]
    for specs, kwargs, message in cases:
        with pytest.raises(UserError, match=message):
            prepare(specs, data, **kwargs)
        assert tree_digest(data) == before, message


def test_failing_first_prepare_leaves_no_directory_behind(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError):
        prepare([str(empty)], tmp_path / "data")
    assert not (tmp_path / "data").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and has no manifest.json"):
        prepare([str(write_parquet(tmp_path / "a.parquet", ["x"]))], tmp_path / "other")


def test_min_chars_drops_and_counts_short_documents(tmp_path, capsys):
    src = write_parquet(tmp_path / "a.parquet", ["short", "a much longer document", "tiny", ""])
    m = prepare([str(src)], tmp_path / "data", min_chars=10, val_fraction=0.0)
    assert m["totals"]["documents"] == 1
    assert m["sources"][0]["skipped"] == {"empty_skipped": 1, "shorter_than_min_chars": 2}
    # the summary says what was skipped once, not "empty skipped 1"
    assert "  skipped: empty 1, shorter than min chars 2\n" in capsys.readouterr().out


def test_vocabularies_above_65536_write_uint32_shards(tmp_path):
    text = "".join(chr(0x20000 + i) for i in range(70_000))
    (tmp_path / "wide.txt").write_text(text)
    prepare([str(tmp_path / "wide.txt")], tmp_path / "data", tokenizer="char", val_fraction=0.0)
    m = load_manifest(tmp_path / "data")
    assert m["tokenizer"]["vocab_size"] == 70_001
    path = tmp_path / "data" / "train_000000.bin"
    assert np.fromfile(path, dtype="<i4", count=2).tolist() == [20240801, 7]  # llm.c's uint32 header
    tokens = open_shard(path)
    assert tokens.dtype == np.uint32 and tokens[0] == 70_000 and tokens[1:].tolist() == list(range(70_000))


def test_safe_pieces_tokenize_exactly_like_the_whole_text():
    text = "\n".join(play_texts(4, 50_000))
    pieces = safe_pieces(text, piece_chars=2000)
    assert len(pieces) > 20 and "".join(pieces) == text
    assert all(len(p) <= 4000 for p in pieces)
    tok = gpt2_tokenizer()
    assert np.concatenate([tok.encode(p) for p in pieces]).tolist() == tok.encode(text).tolist()
    # a text without newlines is cut at spaces, just as exactly
    line = text.replace("\n", " ")
    assert cut_points(line, 2000)[1] == 0
    assert np.concatenate([tok.encode(p) for p in safe_pieces(line, 2000)]).tolist() == tok.encode(line).tolist()
    # whitespace-heavy random text is where a wrong cut would show; unicode spaces are whitespace to both
    import random

    rng = random.Random(0)
    alphabet = ["a", "b", " ", "  ", "\n", "\n\n", "\t", "'s", "'", "1", "é", "!", "\r\n", " \n", "\u00a0",
                "\u3000", "\x1c", "😀", " 1", "x y"]
    exact = forced = 0
    for _ in range(600):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(50, 400)))
        cuts, n_forced = cut_points(text, piece_chars=rng.randint(3, 40))
        pieces = safe_pieces(text, piece_chars=len(text))  # no cut
        assert pieces == [text]
        bounds = [0, *cuts, len(text)]
        pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
        assert "".join(pieces) == text and all(pieces)
        if n_forced:  # no safe place within 2 x piece_chars: cut anyway, counted
            forced += 1
            continue
        exact += 1
        assert np.concatenate([tok.encode(p) for p in pieces]).tolist() == tok.encode(text).tolist()
    assert exact > 200 and forced > 100


def test_a_run_without_a_safe_cut_is_cut_at_twice_the_piece_size_and_counted():
    text = "Start here " + "x" * 10_000 + " and go on"
    cuts, forced = cut_points(text, piece_chars=1000)
    assert cuts == [2000, 4000, 6000, 8000, 10000] and forced == 5  # the spaces lie outside every window
    tok = gpt2_tokenizer()
    pieces = safe_pieces(text, 1000)
    whole, cut = tok.encode(text).tolist(), np.concatenate([tok.encode(p) for p in pieces]).tolist()
    assert tok.decode(cut) == text  # the same text, possibly other tokens at the forced cuts
    assert abs(len(cut) - len(whole)) <= 2 * forced


def _interrupted_run(tmp_path, data, srcs, kill_after_shards, sig):
    script = textwrap.dedent(f"""
        import os, signal
        from gptforge.data import shard_streams as streams
        from gptforge.data.prepare import prepare
        closed = 0
        real = streams.ShardSequence._close_current
        def close_then_die(self):
            global closed
            real(self)
            closed += 1
            if closed == {kill_after_shards}:
                os.kill(os.getpid(), {int(sig)})
        streams.ShardSequence._close_current = close_then_die
        prepare({[str(s) for s in srcs]!r}, {str(data)!r}, shard_tokens=300, val_fraction=0.0)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          preexec_fn=sigint_default)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_prepare_keeps_the_old_dataset_and_a_rerun_finishes_without_duplicates(tmp_path, sig):
    data = tmp_path / "data"
    first = write_parquet(tmp_path / "p1.parquet", play_texts(2, 3000))
    prepare([str(first)], data, shard_tokens=300, val_fraction=0.0)
    before_manifest = (data / "manifest.json").read_bytes()
    before_train = stream(data, "train")
    more = [write_parquet(tmp_path / "p2.parquet", play_texts(6, 3000)[2:4]),
            write_parquet(tmp_path / "p3.parquet", play_texts(6, 3000)[4:])]
    result = _interrupted_run(tmp_path, data, more, kill_after_shards=3, sig=sig)
    assert result.returncode != 0
    assert (data / "manifest.json").read_bytes() == before_manifest
    assert stream(data, "train").tolist() == before_train.tolist()  # the manifest's shards are intact
    from gptforge.commands.inspection import verify_dataset

    assert verify_dataset(data, load_manifest(data)) == []
    prepare([str(p) for p in [first, *more]], data)  # the rerun redoes the unfinished part
    tok = gpt2_tokenizer()
    assert docs_of(stream(data, "train")) == [tok.encode(t).tolist() for t in play_texts(6, 3000)]
    leftovers = [p.name for p in data.iterdir() if p.name.startswith(".")]
    assert leftovers == [".gptforge.lock"] and (data / ".gptforge.lock").read_bytes() == b""


def test_cli_prepare_and_inspect_exit_codes(tmp_path):
    src = write_parquet(tmp_path / "a.parquet", ["hello there", "general kenobi"])

    def run(*args):
        return subprocess.run([sys.executable, "-m", "gptforge", *args], capture_output=True, text=True, timeout=120)

    ok = run("prepare", str(src), "--out", str(tmp_path / "data"))
    assert ok.returncode == 0 and "added 1 source(s): 2 documents" in ok.stdout
    shown = run("inspect", str(tmp_path / "data"))
    assert shown.returncode == 0 and "verified" in shown.stdout
    bad = run("prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "data"))
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"gptforge prepare: error: source {tmp_path / 'missing.txt'} does not exist"
    ]
    shard = tmp_path / "data" / "train_000000.bin"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 2)
    broken = run("inspect", str(tmp_path / "data"))
    assert broken.returncode == 1 and "train_000000.bin: size is" in broken.stdout
