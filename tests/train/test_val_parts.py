"""Val loss per dataset part: each part's val batches come from its own val tokens, eval_iters batches in all; the
val loss weighs the parts by their val tokens; the eval line, metrics.jsonl and diagnose show them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gptforge.data.dataset import open_dataset
from gptforge.model.gpt import GPT
from gptforge.train.evalsets import eval_sets, shares
from gptforge.train.loop import train
from gptforge.train.step import evaluate

from helpers import tiny_config, tiny_text, two_part_char_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def two_parts(tmp_path_factory):
    return two_part_char_data(tmp_path_factory.mktemp("parts"))


def test_shares_are_even_and_at_least_one_each():
    assert shares(20, 2) == [10, 10] and shares(20, 3) == [7, 7, 6] and shares(2, 3) == [1, 1, 1]
    assert sum(shares(7, 4)) == 7


def test_each_parts_batches_come_from_its_own_val_tokens_at_the_cost_of_one_val_loss(two_parts):
    ds = open_dataset(two_parts)
    sets = eval_sets(ds, batch_size=4, block_size=16, eval_iters=6)
    assert [p.name for p in sets.parts] == ["corpus", "backwards"] and sets.val_batches == 6
    for part, (name, stream) in zip(sets.parts, ds.val_part_streams()):
        assert part.name == name and part.tokens == len(stream) and len(part.batches) == 3
        tokens = stream.read(0, len(stream))
        for x, y in part.batches:
            for row in x.numpy():  # every block is a piece of that part's val tokens
                assert any(np.array_equal(tokens[i:i + 16], row) for i in range(0, len(tokens) - 16, 16))
    # the val loss is the parts' losses weighted by their val tokens
    train_loss, val, parts = sets.combine([5.0, 2.0, 4.0])
    a, b = (p.tokens for p in sets.parts)
    assert train_loss == 5.0 and parts == {"corpus": 2.0, "backwards": 4.0}
    assert val == pytest.approx((2.0 * a + 4.0 * b) / (a + b))


def test_a_single_part_evaluates_the_whole_val_split_as_before_under_its_name(char_data):
    sets = eval_sets(open_dataset(char_data), batch_size=4, block_size=16, eval_iters=3)
    assert len(sets.parts) == 1 and len(sets.parts[0].batches) == 3 and sets.note() is None
    assert sets.combine([3.0, 2.5]) == (3.0, 2.5, {"corpus": 2.5})


def test_the_loop_reports_val_loss_per_part(two_parts, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(two_parts, run, max_iters=4, eval_interval=4, eval_iters=4, dropout=0.0))
    out = capsys.readouterr().out
    assert ("val loss by part (corpus, backwards): 4 val batches shared between them; the val loss weighs each by its "
            "val tokens") in out
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["event"] == "eval"]
    ds = open_dataset(two_parts)
    weights = {name: len(s) for name, s in ds.val_part_streams()}
    for e in evals:
        assert set(e["val_parts"]) == {"corpus", "backwards"} and e["eval_batches"] == 4
        assert e["val_loss"] == pytest.approx(sum(e["val_parts"][k] * w for k, w in weights.items()) /
                                              sum(weights.values()), rel=1e-6)
        parts = e["val_parts"]
        assert (f"step {e['step']}: train loss {e['train_loss']:.4f}, val loss {e['val_loss']:.4f}, val ppl "
                f"{e['val_ppl']:.2f} (corpus {parts['corpus']:.4f} | backwards {parts['backwards']:.4f}) (eval") in out
    # each part's loss is the model's loss on that part's batches alone
    from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint

    ck = load_checkpoint(latest_checkpoint(run))
    model = GPT(tiny_config(two_parts, run, vocab_size=ds.vocab_size).model)
    model.load_state_dict(ck["model"])
    sets = eval_sets(ds, 4, 16, 4)
    assert evaluate(model, [p.batches for p in sets.parts], CPU) == pytest.approx(
        [evals[-1]["val_parts"]["corpus"], evals[-1]["val_parts"]["backwards"]], rel=1e-6)

    from gptforge.analysis.diagnose.report import diagnose_command

    assert diagnose_command(run).facts.val_parts_now == pytest.approx(evals[-1]["val_parts"])


def test_a_single_part_run_prints_as_before_and_logs_its_part_for_after_a_growth(char_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(char_data, run, max_iters=2, eval_interval=2))
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["event"] == "eval"]
    assert evals and all(e["val_parts"] == {"corpus": e["val_loss"]} for e in evals)
    out = capsys.readouterr().out
    assert "val loss by part" not in out and "(corpus " not in out
    assert f"val ppl {evals[-1]['val_ppl']:.2f} (eval " in out


def test_after_growth_diagnose_compares_the_old_part_with_its_loss_before(tmp_path):
    """The old part's val loss before the growth (logged under its name) and after: diagnose can tell whether
    the old data is kept or forgotten."""
    from gptforge.analysis.diagnose.report import diagnose_command
    from gptforge.analysis.runlog import read_run
    from gptforge.data.prepare import prepare

    from helpers import backwards_text, make_char_data

    data = make_char_data(tmp_path, tiny_text(1500, seed=0))
    run = tmp_path / "run"
    train(tiny_config(data, run, max_iters=30, eval_interval=10, dropout=0.0, lr_decay_iters=60))
    (tmp_path / "backwards.txt").write_text(backwards_text(600, seed=5), encoding="utf-8")
    prepare([str(tmp_path / "backwards.txt")], data, val_fraction=0.1, split="tail")
    train(tiny_config(data, run, max_iters=60, eval_interval=10, dropout=0.0, lr_decay_iters=60,
                      init_from="resume"))
    (growth,) = diagnose_command(run).facts.growths
    parts = {p.name: p for p in growth.parts}
    assert not parts["corpus"].new and parts["backwards"].new
    # the growth step's eval is the checkpoint measured on the grown val split: every part has its "before"
    evals = read_run(run).evals
    at_growth = next(e for e in evals if e.step == 30)
    assert set(at_growth.val_parts) == {"corpus", "backwards"}
    assert (parts["corpus"].before, parts["backwards"].before) == (at_growth.val_parts["corpus"],
                                                                   at_growth.val_parts["backwards"])
    assert parts["backwards"].change == pytest.approx(evals[-1].val_parts["backwards"] - parts["backwards"].before)
