"""HellaSwag during training (issue 15): scored at the evals it is due at, into the eval line, metrics.jsonl and
the wandb/TensorBoard mirrors; the run's losses are the same with it on or off and a resume stays exact; a
missing or bad file, or a tokenizer that cannot encode the items, is one line at start and training goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from gptforge.data.prepare import prepare
from gptforge.train import dist
from gptforge.train import hellaswag as hs
from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint
from gptforge.train.events import Eval, MetricsLog
from gptforge.train.loop import train
from gptforge.train.runs import load_run

from helpers import FIXTURES, records, sigint_default, tiny_config, tiny_text

FIXTURE = FIXTURES / "hellaswag_val_small.jsonl"
SWAG = dict(hellaswag_interval=4, hellaswag_file=str(FIXTURE), hellaswag_limit=6)
# dropout on: scoring must not draw from the RNG the dropout masks come from; decay pinned for the resume
BASE = dict(max_iters=8, eval_interval=2, lr_decay_iters=40, block_size=32, n_embd=16, dropout=0.1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory) -> Path:
    """A DATA_DIR in GPT-2's tokenizer (HellaSwag needs a tokenizer for English text)."""
    folder = tmp_path_factory.mktemp("gpt2data")
    (folder / "corpus.txt").write_text(tiny_text(600), encoding="utf-8")
    prepare([str(folder / "corpus.txt")], folder / "data", tokenizer="gpt2", val_fraction=0.1, split="tail")
    return folder / "data"


@pytest.fixture(scope="module")
def runs(gpt2_data, tmp_path_factory):
    """The same run with HellaSwag on and off, and what the "on" run printed."""
    root = tmp_path_factory.mktemp("swagruns")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train(tiny_config(gpt2_data, root / "on", **BASE, **SWAG))
    train(tiny_config(gpt2_data, root / "off", **BASE))
    return root / "on", root / "off", printed.getvalue()


@pytest.mark.parametrize("interval, eval_interval, last, due", [
    (4, 2, 9, [0, 4, 8, 9]),  # every other eval, and the last step (not an eval multiple)
    (3, 2, 10, [0, 4, 6, 10]),  # not a multiple: the first eval at or after 3, 6, 9
    (1, 2, 6, [0, 2, 4, 6]),  # more often than the evals: every eval
])
def test_scored_at_the_first_eval_at_or_after_each_multiple_and_at_the_end(interval, eval_interval, last, due):
    swag = hs.DuringTraining(interval, eval_interval, [], [])
    evals = [s for s in range(last + 1) if s % eval_interval == 0 or s == last]
    assert [s for s in evals if swag.due(s, s == last)] == due


def test_the_score_goes_into_the_eval_line_and_metrics_and_equals_scoring_the_checkpoint(runs):
    on, _, printed = runs
    evals = records(on, "eval")
    assert sorted(evals) == [0, 2, 4, 6, 8]
    scored = {s for s, r in evals.items() if "hellaswag_acc_norm" in r}
    assert scored == {0, 4, 8}
    for s in (2, 6):  # not due: the fields are left out, not null
        assert not any(k.startswith("hellaswag") for k in evals[s])
    assert f"6 items of {FIXTURE} (not the official val set" in printed
    assert "HellaSwag at the evals every 4 steps and at the end" in printed
    for s in scored:
        r = evals[s]
        assert r["hellaswag_items"] == 6 and r["hellaswag_seconds"] <= r["seconds"]
        assert r["hellaswag_stderr"] == pytest.approx(hs.stderr(r["hellaswag_acc_norm"], 6))
        line = next(x for x in printed.splitlines() if x.startswith(f"step {s}:"))
        assert f"val ppl {r['val_ppl']:.2f}, hellaswag {r['hellaswag_acc_norm']:.4f} ± {r['hellaswag_stderr']:.4f} " \
               "(6 items) (eval" in line
    # the last eval's score is the final checkpoint's, scored on its own
    model, tokenizer, state = load_run(on, CPU)
    assert state["step"] == 8
    result = hs.score(model, tokenizer, hs.load_items(FIXTURE, 6), CPU)
    assert (result.acc_norm, result.acc) == (evals[8]["hellaswag_acc_norm"], evals[8]["hellaswag_acc"])


def test_losses_and_weights_are_the_same_with_hellaswag_on_or_off(runs):
    on, off, _ = runs
    a, b = records(on, "log"), records(off, "log")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]
    ea, eb = records(on, "eval"), records(off, "eval")
    assert [(ea[s]["train_loss"], ea[s]["val_loss"]) for s in ea] == [(eb[s]["train_loss"], eb[s]["val_loss"])
                                                                      for s in ea]
    pa, pb = (load_checkpoint(latest_checkpoint(r)) for r in (on, off))
    assert all(torch.equal(pa["model"][k], pb["model"][k]) for k in pa["model"])
    assert pa["state"]["loader"] == pb["state"]["loader"]


def test_a_resume_with_hellaswag_on_is_exact(gpt2_data, runs, tmp_path):
    on, _, _ = runs
    split = tmp_path / "split"
    train(tiny_config(gpt2_data, split, **{**BASE, "max_iters": 4}, **SWAG))
    train(tiny_config(gpt2_data, split, **BASE, **SWAG, init_from="resume"))
    a, b = records(on, "log"), records(split, "log")
    assert [a[s]["loss"] for s in range(1, 9)] == [b[s]["loss"] for s in range(1, 9)]
    ea, eb = records(on, "eval"), records(split, "eval")
    assert [ea[s].get("hellaswag_acc_norm") for s in ea] == [eb[s].get("hellaswag_acc_norm") for s in ea]


@pytest.mark.parametrize("case", ["missing", "default cache empty", "not jsonl"])
def test_a_missing_or_bad_file_is_one_line_at_start_and_the_run_goes_on(gpt2_data, tmp_path, capsys, monkeypatch,
                                                                       case):
    monkeypatch.setenv("GPTFORGE_CACHE", str(tmp_path / "cache"))
    path = {"missing": tmp_path / "nowhere.jsonl", "default cache empty": "", "not jsonl": tmp_path / "bad.jsonl"}[case]
    if case == "not jsonl":
        path.write_text("ctx,endings,label\n")
    result = train(tiny_config(gpt2_data, tmp_path / "run", **{**BASE, "max_iters": 2}, hellaswag_interval=2,
                               hellaswag_file=str(path)))
    assert result["step"] == 2
    lines = [x for x in capsys.readouterr().out.splitlines() if "HellaSwag" in x]
    expected = {"missing": f"HellaSwag file {path} not found: run `gptforge download hellaswag`",
                "default cache empty": f"HellaSwag file {tmp_path / 'cache' / 'hellaswag'}",
                "not jsonl": f"{path} line 1: not a JSON object"}[case]
    assert len(lines) == 1 and lines[0].startswith("HellaSwag during training is off: ") and expected in lines[0]
    if case != "not jsonl":
        assert lines[0].endswith("or set hellaswag_file=FILE")
    assert not any(k.startswith("hellaswag") for r in records(tmp_path / "run", "eval").values() for k in r)


def test_a_character_level_run_skips_it_in_one_line(char_data, tmp_path, capsys):
    result = train(tiny_config(char_data, tmp_path / "run", max_iters=2, eval_interval=2, **SWAG))
    assert result["step"] == 2
    lines = [x for x in capsys.readouterr().out.splitlines() if "HellaSwag" in x]
    assert len(lines) == 1 and lines[0].startswith("HellaSwag skipped: the run's tokenizer (") and \
        "cannot encode the items" in lines[0]


def test_off_by_default_and_off_on_every_rank_when_one_cannot_read(gpt2_data, monkeypatch):
    assert hs.during_training(0, 250, str(FIXTURE), 0, None, 50257, CPU) == (None, None)
    from gptforge.data.tokenizers import gpt2_tokenizer

    on, line = hs.during_training(4, 2, str(FIXTURE), 3, gpt2_tokenizer(), 50257, CPU)
    assert len(on.items) == len(on.encoded) == 3 and line.startswith("HellaSwag at the evals every 4 steps")
    monkeypatch.setattr(dist, "any_true_each", lambda flags, device="cpu": [True])  # another rank failed
    assert hs.during_training(4, 2, str(FIXTURE), 3, gpt2_tokenizer(), 50257, CPU) == (
        None, "HellaSwag during training is off: another process could not read its items")


def test_wandb_and_tensorboard_mirror_the_score(tmp_path, monkeypatch):
    logged = []
    fake = types.SimpleNamespace(init=lambda **kw: None, finish=lambda: None,
                                 log=lambda values, step: logged.append((step, values)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log = MetricsLog(tmp_path, wandb_log=True, fresh=True)
    base = dict(tokens=0, epoch=0.0, train_loss=3.0, val_loss=3.1, val_ppl=22.2, eval_batches=2, seconds=1.0)
    log.write(Eval(step=0, **base))
    log.write(Eval(step=4, **base, **hs.Result(0.25, 0.5, 0.1, 0.2, 6, 300, 0.4).event_fields()))
    log.close()
    assert not any(k.startswith("eval/hellaswag") for k in logged[0][1])
    assert logged[1][0] == 4 and logged[1][1]["eval/hellaswag_acc_norm"] == 0.5 and \
        logged[1][1]["eval/hellaswag_items"] == 6


@pytest.mark.slow  # a torchrun launch (~15 s on 2 cores)
def test_two_processes_split_the_items_and_score_what_one_does(gpt2_data, runs, tmp_path):
    on, _, _ = runs
    cfg = tiny_config("x", "y", **{**BASE, "dropout": 0.0}, **SWAG, device="cpu").flat()
    args = [f"--{k}={v}" for k, v in cfg.items() if k not in ("data", "out", "sample_prompts", "vocab_size")]
    one = tmp_path / "one"
    train(tiny_config(gpt2_data, one, **{**BASE, "dropout": 0.0}, **SWAG, device="cpu"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("dist_worker.py")), "train", f"--data={gpt2_data}", f"--out={tmp_path / 'two'}",
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=sigint_default,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = records(one, "eval"), records(tmp_path / "two", "eval")
    for s in (0, 4, 8):
        assert b[s]["hellaswag_items"] == 6  # 3 per rank, summed
        assert b[s]["hellaswag_acc_norm"] == a[s]["hellaswag_acc_norm"]
