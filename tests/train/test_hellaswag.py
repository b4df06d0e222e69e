"""HellaSwag scoring: the batched scorer against a plain loop (both archs) and against the Hugging Face model of
an exported run, the file reader's errors, the cut from the left, the split across ranks, and `gptforge eval`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gptforge.cli import main
from gptforge.data import pinned
from gptforge.data.tokenizers import gpt2_tokenizer
from gptforge.errors import UserError
from gptforge.fmt import count
from gptforge.fsutil import sha256_file
from gptforge.interop.export import export_command
from gptforge.train import dist
from gptforge.train import hellaswag as hs

from helpers import FIXTURES, make_run, sigint_default

FIXTURE = FIXTURES / "hellaswag_val_small.jsonl"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def items():
    return hs.load_items(FIXTURE)


def plain_losses(logits_of, ctx, endings, block_size):
    """Per ending, one sequence at a time, as llm.c's hellaswag.py does: (summed loss, tokens) x 4."""
    out = []
    for inputs, targets in zip(*hs.item_rows(ctx, endings, block_size)):
        logits = logits_of(torch.tensor([inputs]))[0].float()
        target = torch.tensor(targets)
        losses = F.cross_entropy(logits[target != -1], target[target != -1], reduction="none")
        out.append((losses.sum().item(), int((target != -1).sum())))
    return out


def test_the_fixture_reads_as_the_val_set_does(items):
    assert len(items) == 10 and [it.label for it in items[:4]] == [0, 1, 2, 3]
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    assert all(set(r) == {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label", "split",
                          "split_type", "source_id"} for r in rows)
    assert all(r["ctx"] == (f"{r['ctx_a']} {r['ctx_b']}" if r["ctx_b"] else r["ctx_a"]) for r in rows)
    assert items[1].ctx == rows[1]["ctx"] and items[1].endings == tuple(rows[1]["endings"])
    assert len(hs.load_items(FIXTURE, limit=3)) == 3 and len(hs.load_items(FIXTURE, limit=50)) == 10


@pytest.mark.parametrize("content, message", [
    ("not json\n", "line 2: not a JSON object"),
    ('[1, 2]\n', "line 2: not a JSON object"),
    ('{"ctx": "a", "endings": ["x", "y", "z"], "label": 0}\n', "line 2: 'endings' must be a list of 4 strings"),
    ('{"ctx": "a", "endings": ["w", "x", "y", "z"], "label": 7}\n', "line 2: 'label' must be 0-3"),
    ('{"ctx": "a", "endings": ["w", "x", "y", "z"], "label": ""}\n', r"line 2: .*\(the test split has no labels"),
    ('{"ctx": "  ", "endings": ["w", "x", "y", "z"], "label": 1}\n', "line 2: 'ctx' must be a non-empty string"),
])
def test_a_bad_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "h.jsonl"
    path.write_text(FIXTURE.read_text().splitlines()[0] + "\n" + content)  # the error is on line 2
    with pytest.raises(UserError, match=message) as e:
        hs.load_items(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_missing_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTFORGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError) as e:
        hs.load_items()
    assert str(e.value) == (f"HellaSwag file {tmp_path / 'cache' / 'hellaswag' / 'hellaswag_val.jsonl'} not found: run "
                            f"`gptforge download hellaswag` (it goes to {tmp_path / 'cache' / 'hellaswag'}) or pass "
                            "--hellaswag FILE")
    with pytest.raises(UserError, match="--limit must be at least 1"):
        hs.load_items(FIXTURE, limit=0)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match=f"HellaSwag file {tmp_path / 'empty.jsonl'} holds no items"):
        hs.load_items(tmp_path / "empty.jsonl")


def test_a_long_row_is_cut_from_the_left():
    ctx, endings = list(range(100, 130)), [[1, 2, 3], [4], [5, 6, 7, 8, 9], list(range(200, 240))]
    inputs, targets = hs.item_rows(ctx, endings, block_size=16)
    for ending, x, y in zip(endings[:3], inputs, targets):
        row = (ctx + ending)[-17:]  # block_size inputs + the last target
        assert x == row[:-1] and len(x) == 16
        assert [t for t in y if t != -1] == ending  # every ending token scored, no context token
    assert [t for t in targets[3] if t != -1] == list(range(224, 240))  # an ending longer than the block
    short_in, short_tg = hs.item_rows([7, 8], [[1, 2]] * 4, block_size=16)
    assert short_in[0] == [7, 8, 1] and short_tg[0] == [-1, 1, 2]


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_batched_scorer_equals_a_plain_loop(tmp_path, items, arch):
    _, model = make_run(tmp_path, arch=arch, block_size=32)  # the long item is cut
    encoded = hs.encode(gpt2_tokenizer(), items, model.vocab_size)
    assert max(len(c) for c, _ in encoded) > 32
    rows = [hs.item_rows(c, e, 32) for c, e in encoded]
    with torch.no_grad():
        sums, counts = hs.ending_losses(model, rows[:4], CPU)  # 4 items, 16 rows of other lengths, one forward
        loop = [plain_losses(lambda idx: model(idx)[0], c, e, 32) for c, e in encoded[:4]]
    torch.testing.assert_close(sums, torch.tensor([[s for s, _ in item] for item in loop]), rtol=1e-5, atol=1e-5)
    assert counts.tolist() == [[n for _, n in item] for item in loop]
    # the whole score: acc by summed loss, acc_norm by mean loss, the same whatever the grouping
    with torch.no_grad():
        loop = [plain_losses(lambda idx: model(idx)[0], c, e, 32) for c, e in encoded]
    labels = [it.label for it in items]
    acc = sum(min(range(4), key=lambda i: item[i][0]) == y for item, y in zip(loop, labels)) / len(items)
    acc_norm = sum(min(range(4), key=lambda i: item[i][0] / item[i][1]) == y for item, y in zip(loop, labels)) / 10
    for per_forward in (1, 3, 16):
        r = hs.score(model, gpt2_tokenizer(), items, CPU, items_per_forward=per_forward)
        assert (r.acc, r.acc_norm, r.items) == (acc, acc_norm, 10)
        assert r.tokens == sum(len(x) for c, e in encoded for x in hs.item_rows(c, e, 32)[0])
        assert r.acc_norm_stderr == pytest.approx(math.sqrt(acc_norm * (1 - acc_norm) / 9))
    assert not model.training


def test_an_exported_gpt2_run_scores_the_same_with_the_hugging_face_model(tmp_path, items):
    transformers = pytest.importorskip("transformers")
    run, model = make_run(tmp_path, tokenizer=gpt2_tokenizer(), block_size=64)
    export_command(run, "hf", tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    encoded = hs.encode(gpt2_tokenizer(), items, model.vocab_size)
    with torch.no_grad():
        sums, counts = hs.ending_losses(model, [hs.item_rows(c, e, 64) for c, e in encoded], CPU)
        theirs = [plain_losses(lambda idx: hf(idx).logits, c, e, 64) for c, e in encoded]
    torch.testing.assert_close(sums, torch.tensor([[s for s, _ in item] for item in theirs]), rtol=1e-5, atol=1e-4)
    assert counts.tolist() == [[n for _, n in item] for item in theirs]


def test_ranks_split_the_items_and_run_the_same_number_of_forwards(tmp_path, items, monkeypatch):
    _, model = make_run(tmp_path, block_size=32)
    whole = hs.score(model, gpt2_tokenizer(), items[:9], CPU, items_per_forward=2)
    forwards = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: forwards.append(1) or real(*a, **k))
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce_sum", lambda t: t)  # each "rank" keeps its own counts here
    parts = []
    for rank in (0, 1):  # 5 items and 4 items: 3 forwards of up to 2 items on both, one of them empty on rank 1
        monkeypatch.setattr(dist, "rank", lambda rank=rank: rank)
        forwards.clear()
        parts.append(hs.score(model, gpt2_tokenizer(), items[:9], CPU, items_per_forward=2))
        assert len(forwards) == 3
    assert [p.items for p in parts] == [5, 4] and sum(p.tokens for p in parts) == whole.tokens
    assert sum(p.acc * p.items for p in parts) == pytest.approx(whole.acc * 9)
    assert sum(p.acc_norm * p.items for p in parts) == pytest.approx(whole.acc_norm * 9)


def test_a_character_level_run_is_skipped_in_one_line(tiny_run, capsys):
    assert main(["eval", str(tiny_run), "--hellaswag", str(FIXTURE), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gptforge eval: error: HellaSwag skipped: the run's tokenizer (char") and "\n" not in err
    assert "are not in its vocabulary" in err and "such as gpt2" in err
    with pytest.raises(hs.HellaSwagSkipped, match="no tokenizer"):
        hs.encode(None, [], 10)


def test_eval_cli_scores_a_run(tmp_path, capsys, items):
    run, model = make_run(tmp_path, tokenizer=gpt2_tokenizer(), block_size=64)
    assert main(["eval", str(run), "--hellaswag", str(FIXTURE), "--limit", "6", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = hs.score(model, gpt2_tokenizer(), items[:6], CPU)
    assert out[0] == f"{run} at step 7, the first 6 items of {FIXTURE} (not the official val set: scores do not " \
                     "compare with published ones)"
    assert out[1].startswith(f"hellaswag acc_norm {expected.acc_norm:.4f} ± {expected.acc_norm_stderr:.4f}, acc "
                             f"{expected.acc:.4f} ± {expected.acc_stderr:.4f} (6 items, ")


def test_the_official_file_is_named_so_and_found_in_the_cache(tmp_path, capsys, monkeypatch):
    run, _ = make_run(tmp_path, tokenizer=gpt2_tokenizer(), block_size=64)
    monkeypatch.setenv("GPTFORGE_CACHE", str(tmp_path / "cache"))
    pin = pinned.PinnedFile("https://example.org/h/hellaswag_val.jsonl", FIXTURE.stat().st_size,
                            sha256_file(FIXTURE), pinned.git_blob_id(FIXTURE), "hellaswag", "test")
    monkeypatch.setitem(pinned.PINNED, "hellaswag", pin)
    assert main(["eval", str(run), "--hellaswag"]) == 1
    assert "gptforge download hellaswag" in capsys.readouterr().err
    (tmp_path / "cache" / "hellaswag").mkdir(parents=True)
    (tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl").write_bytes(FIXTURE.read_bytes())
    assert main(["eval", str(run), "--hellaswag", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{run} at step 7, 10 items of the official val set"


def test_flags_that_do_not_go_together(tmp_path, capsys):
    run, _ = make_run(tmp_path, tokenizer=gpt2_tokenizer())
    assert main(["eval", str(run), "--limit", "5"]) == 1
    assert "--limit applies to --hellaswag" in capsys.readouterr().err
    assert main(["eval", str(run), "--hellaswag", str(FIXTURE), "--batches", "2"]) == 1
    assert "--hellaswag scores HellaSwag alone" in capsys.readouterr().err


def test_result_line():
    r = hs.Result(0.3, 0.35, hs.stderr(0.3, 100), hs.stderr(0.35, 100), 100, 12_345, 2.0)
    assert r.line() == ("hellaswag acc_norm 0.3500 ± 0.0479, acc 0.3000 ± 0.0461 (100 items, 12.3K tokens in 2.0 s, "
                        "6.17K tok/s; chance 0.25)")
    assert math.isnan(hs.stderr(1.0, 1))


@pytest.mark.slow  # two torchrun processes (~15 s on 2 shared cores)
def test_two_processes_under_torchrun_give_the_one_process_score(tmp_path, items):
    run, model = make_run(tmp_path, tokenizer=gpt2_tokenizer(), block_size=32)
    expected = hs.score(model, gpt2_tokenizer(), items[:9], CPU)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptforge",
           "eval", str(run), "--hellaswag", str(FIXTURE), "--limit", "9", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, preexec_fn=sigint_default)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("hellaswag ")]
    assert len(lines) == 1  # rank 0 alone prints
    assert lines[0].startswith(f"hellaswag acc_norm {expected.acc_norm:.4f} ± {expected.acc_norm_stderr:.4f}, acc "
                               f"{expected.acc:.4f} ± {expected.acc_stderr:.4f} (9 items, "
                               f"{count(expected.tokens)} tokens")
