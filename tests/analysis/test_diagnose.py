"""gptforge diagnose: the classic cases from synthetic logs, the numbers behind them, resume folding,
damaged logs, and one short real training run."""

import json
import math

import pytest

from gptforge.analysis import curves
from gptforge.analysis.diagnose.findings import analyse
from gptforge.analysis.diagnose.report import diagnose_command
from gptforge.analysis.runlog import fold, parse_events, read_run
from gptforge.cli import main
from gptforge.errors import UserError

import synthetic_runs as runs

PROBLEMS = {"diverged", "overfitting", "lr_too_high", "data_limited", "plateau", "nan_skips", "unfinished",
            "throughput_unstable", "low_mfu", "eval_noise", "undertrained"}


def test_healthy_run_still_improving(tmp_path, capsys):
    d = diagnose_command(runs.healthy(tmp_path / "healthy"))
    f = d.facts
    assert d.kinds() == ["still_improving"] and not PROBLEMS & set(d.kinds())
    assert f.tokens_seen == 5000 * 491_520 and f.epochs == pytest.approx(0.24576)
    assert f.params == 124_475_904 and f.tokens_per_param == pytest.approx(2_457_600_000 / 124_475_904)
    assert f.trend.status == "improving" and f.trend.change < -0.1
    assert f.val_now == pytest.approx(3.0 + 4 / math.sqrt(26) + 0.02, abs=0.02)
    assert f.ppl == pytest.approx(math.exp(f.val_now))
    assert f.schedule.multiplier == pytest.approx(0.1) and f.warmup_tokens == 200 * 491_520
    assert f.mfu.median == pytest.approx(0.41) and f.throughput.cv < 0.05
    out = capsys.readouterr().out
    assert "1. Still improving" in out and "--max_iters=10000 --lr_decay_iters=5000" in out


def test_data_limited_plateau_seen_in_the_wild(tmp_path):
    run_dir = runs.data_limited(tmp_path / "wild")
    d = diagnose_command(run_dir)
    f = d.facts
    assert d.kinds()[0] == "data_limited"
    assert {"overfitting", "lr_too_high", "diverged"}.isdisjoint(d.kinds())
    assert f.params == 38_890_496 and f.tokens_per_iter == 524_288
    assert f.tokens_seen == 14_500 * 524_288 == 7_602_176_000
    assert f.epochs == pytest.approx(7_602_176_000 / 300_000_000)  # 25.3 epochs
    assert abs(f.gap) < 0.1 and 3.6 < f.train_now < 3.7 and 3.6 < f.val_now < 3.7
    assert f.trend.status == "plateau"
    top = d.findings[0]
    assert top.title.startswith("Many epochs over too little data (25.3 epochs)")
    assert "25.3 epochs" in top.evidence[0]
    assert any("146 FineWeb-Edu shards" in a for a in top.advice)  # 7.6B tokens x 4.8 chars / 250M
    # Chinchilla's split of the same compute: N = sqrt(6 x 38.9M x 7.6B / 120), D = 20 N
    assert any("~121.6M parameters on ~2.43B tokens" in a for a in top.advice)
    report = (run_dir / "diagnosis.md").read_text()
    assert "### 1. Many epochs over too little data (25.3 epochs)" in report and "![loss" in report


def test_overfitting_names_the_step_of_the_minimum(tmp_path):
    run_dir = runs.overfitting(tmp_path / "shakespeare")
    d = diagnose_command(run_dir)
    f = d.facts
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [(e["val_loss"], e["step"]) for e in events if e["event"] == "eval"]
    best_val, best_step = min(vals)
    assert d.kinds()[0] == "overfitting" and "data_limited" not in d.kinds()
    assert f.val_min_step == best_step and 1250 <= best_step <= 1750 and f.val_min == best_val
    assert f.val_now - f.val_min > 0.15 and f.gap_trend.change > 0.05
    top = d.findings[0]
    assert f"at step {best_step:,}" in top.evidence[0]
    assert any("81.6 epochs" in e for e in top.evidence)
    assert top.advice[0].startswith(f"use the best checkpoint (step {best_step:,})")


def test_small_batch_noise_is_not_a_learning_rate_problem(tmp_path):
    """Single small-batch losses logged every 18 steps swing ±0.12: the smoothed curve climbs by chance
    (0.2-0.4 in the demo's runs), which must not read as an LR too high."""
    for seed in range(5):
        d = diagnose_command(runs.small_batch_cpu(tmp_path / f"demo{seed}", seed=seed))
        rb = d.facts.rebound
        assert 0.08 < rb.noise < 0.2  # the logged points' noise, found from the points alone
        assert "lr_too_high" not in d.kinds() and "diverged" not in d.kinds(), (seed, rb)
        assert d.kinds()[0] == "undertrained"


def test_learning_rate_too_high(tmp_path):
    d = diagnose_command(runs.lr_too_high(tmp_path / "hot"))
    assert d.kinds()[0] == "lr_too_high" and "overfitting" not in d.kinds() and "diverged" not in d.kinds()
    top = d.findings[0]
    assert top.evidence[0] == "6 loss spike(s) after warmup (steps 400, 800, 1300, 1700, 2100, 2500)"
    assert any(e.startswith("the smoothed train loss climbed") for e in top.evidence)
    assert top.advice[0] == "lower the learning rate 2-3x (now 0.006, try 0.0024)"


def test_divergence_to_nan(tmp_path):
    d = diagnose_command(runs.diverged(tmp_path / "nan"))
    f = d.facts
    assert d.kinds() == ["diverged"]
    assert f.nan_skips == 5 and f.max_consecutive_nan == 5 and f.end_reason == "nan"
    top = d.findings[0]
    began = int(top.title.rsplit(" ", 1)[1])
    assert 750 <= began <= 850
    assert "5 steps skipped for a non-finite loss or gradient from step 1200" in " ".join(top.evidence)
    assert top.advice[0].startswith("restart from the checkpoint of step 750")


def test_trend_verdicts():
    flat = [(float(i), 3.0 + 0.001 * ((-1) ** i)) for i in range(30)]
    falling = [(float(i), 3.0 - 0.05 * i) for i in range(30)]
    rising = [(float(i), 3.0 + 0.01 * i) for i in range(30)]
    noisy = [(float(i), 3.0 + (0.5 if i % 2 else -0.5)) for i in range(8)]
    assert [curves.trend(p).status for p in (flat, falling, rising, noisy)] == ["plateau", "improving", "rising",
                                                                              "uncertain"]
    assert curves.trend(falling).change == pytest.approx(-0.05 * (29 - 21))  # the last 30% of the x range: 21..29
    assert curves.trend(flat[:2]).status == "unknown"


def test_resume_drops_records_after_the_checkpoint_and_torn_lines():
    lines = [json.dumps(e) for e in [
        {"event": "start", "step": 0, "resumed_from": None},
        {"event": "log", "step": 10, "loss": 5.0}, {"event": "log", "step": 20, "loss": 4.0},
        {"event": "log", "step": 30, "loss": 3.9}, {"event": "spike", "step": 25, "loss": 9, "mean": 4, "std": 0.1},
        {"event": "start", "step": 20, "resumed_from": 20},
        {"event": "log", "step": 30, "loss": 3.5}, {"event": "end", "step": 30, "reason": "max_iters"},
    ]] + ['{"event": "log", "step": 40, "lo']
    events, skipped = parse_events(lines)
    run = fold(events, None)
    assert skipped == 1
    assert [(e.step, e.loss) for e in run.logs] == [(10, 5.0), (20, 4.0), (30, 3.5)]
    assert run.spikes == [] and len(run.starts) == 2 and run.end_reason == "max_iters"


def test_missing_or_empty_metrics_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="metrics.jsonl does not exist"):
        read_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["diagnose", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gptforge diagnose: error: ") and "holds no events" in err and err.count("\n") == 1


def test_data_flag_counts_epochs_against_that_dataset(tmp_path, char_data):
    run_dir = runs.healthy(tmp_path / "h")
    manifest = json.loads((char_data / "manifest.json").read_text())
    d = diagnose_command(run_dir, data=str(char_data))
    assert d.facts.dataset_train_tokens == manifest["totals"]["train_tokens"]
    assert d.facts.epochs == pytest.approx(5000 * 491_520 / manifest["totals"]["train_tokens"])


def test_a_short_real_run(tmp_path, char_data):
    from conftest import tiny_config
    from gptforge.train.loop import train

    run_dir = tmp_path / "real"
    train(tiny_config(char_data, run_dir, max_iters=30, eval_interval=10, always_save_checkpoint=False))
    d = diagnose_command(run_dir)
    run = read_run(run_dir)
    f = d.facts
    assert f.last_step == 30 and f.tokens_seen == 30 * 4 * 16 * 2 == run.logs[-1].tokens
    assert f.epochs == pytest.approx(run.logs[-1].epoch)
    assert f.params == run.start.params and f.val_now == run.evals[-1].val_loss
    assert f.eval_sequences == 2 * 4 and "eval_noise" in d.kinds()  # eval_iters=2 x batch 4: far too few
    assert f.first_loss > f.train_now  # it learned something
    assert (run_dir / "diagnosis.md").stat().st_size > 500
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert analyse(run, run.config).kinds() == d.kinds()  # the config.toml and the start event agree


def test_a_run_stopped_early_has_an_unfinished_schedule(tmp_path):
    cfg = dict(runs.GPT2_124M, batch_size=12, gradient_accumulation_steps=40, max_iters=5000, warmup_iters=200,
               eval_interval=250, eval_iters=200, log_interval=10)
    curve = lambda s: 3.0 + 4.0 / (1 + s / 200) ** 0.5  # noqa: E731
    run_dir = runs.write_run(tmp_path / "cut", cfg, dataset_train_tokens=10**10, train=curve, val=curve,
                             stop_at=3000, end_reason=None)
    d = diagnose_command(run_dir)
    unfinished = d.finding("unfinished")
    assert unfinished.evidence[0] == "still running or crashed (no end event) at step 3,000 of 5,000 (60%)"
    assert d.facts.schedule.multiplier == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2800 / 4800)))


def test_grown_dataset_that_helped(tmp_path, capsys):
    run_dir = runs.grown(tmp_path / "helped", after="helped")
    d = diagnose_command(run_dir)
    f = d.facts
    v1, v2 = f.versions
    assert (v1.version, v1.train_tokens, v1.val_tokens, v1.start_step, v1.end_step) == (
        1,
        300_000_000,
        3_000_000,
        0,
        8000,
    )
    assert (v2.version, v2.train_tokens, v2.val_tokens, v2.start_step, v2.end_step) == (
        2,
        3 * 10**9,
        3 * 10**7,
        8000,
        14000,
    )
    assert v1.tokens == 8000 * 524_288 and v1.epochs == pytest.approx(8000 * 524_288 / 300e6)  # 13.98 epochs
    assert v2.tokens == 6000 * 524_288 and v2.epochs == pytest.approx(6000 * 524_288 / 3e9)  # 1.05 epochs
    assert f.epochs == pytest.approx(14000 * 524_288 / 3e9)  # over the current dataset, not the loader's count
    (g,) = f.growths
    assert g.step == 8000 and g.tokens == 8000 * 524_288 and g.verdict == "helped" and g.val_set_changed
    assert g.trend_before.status == "plateau" and g.change == pytest.approx(-0.2 * (1 - math.exp(-4)), abs=0.01)
    top = d.finding("data_grew")
    assert top.title == f"Adding data helped: val fell {-g.change:.2f} after the data grew at step 8,000"
    assert "13.98 epochs before it grew" in top.evidence[1] and top.advice[0].startswith("more data helps this model")
    assert "data_limited" not in d.kinds() and f.trend.start > 8000  # the window stays on the new val set
    report = (run_dir / "diagnosis.md").read_text()
    assert "| 1 | 300,000,000 | 3,000,000 | 0-8,000 | 4,194,304,000 | 13.98 |" in report
    assert "| 2 | 3,000,000,000 | 30,000,000 | 8,000-14,000 | 3,145,728,000 | 1.05 |" in report
    assert (
        "- The data grew at step 8,000 (4,194,304,000 tokens seen): 300,000,000 -> 3,000,000,000 train tokens" in report
    )
    assert "Adding data helped" in capsys.readouterr().out


def test_grown_dataset_that_changed_nothing_says_capacity_only_from_per_part_val(tmp_path):
    d = diagnose_command(runs.grown(tmp_path / "flat", after="flat"))  # no per-part val losses logged
    (g,) = d.facts.growths
    assert g.verdict == "no_change" and abs(g.change) < 0.01
    finding = d.finding("data_grew")
    assert finding.title == "No change in the val loss after adding data at step 8,000"
    assert "capacity-limited" not in finding.title and "only they show a capacity limit" in finding.advice[0]
    assert d.kinds()[0] == "plateau" and "data_limited" not in d.kinds()

    d = diagnose_command(runs.grown(tmp_path / "parts", after="flat", parts=True))
    (g,) = d.facts.growths
    assert g.verdict == "capacity" and [(p.name, p.new) for p in g.parts] == [("fineweb", False), ("wikipedia", True)]
    assert all(abs(p.change) < g.tolerance for p in g.parts)
    finding = d.finding("data_grew")
    assert finding.title == "No change after adding data at step 8,000: the model looks capacity-limited"
    assert "a larger one" in finding.advice[0]
    assert any(e.startswith("val loss per part since the growth: fineweb 3.69 -> 3.69") for e in finding.evidence)


def test_fold_keeps_the_last_resume_from_a_step_and_one_growth_event():
    lines = [json.dumps(e) for e in [
        {"event": "start", "step": 0, "resumed_from": None, "dataset_version": 1, "dataset_train_tokens": 100},
        {"event": "log", "step": 10, "tokens": 640, "loss": 5.0},
        {"event": "start", "step": 10, "resumed_from": 10, "dataset_version": 2, "dataset_train_tokens": 300},
        {"event": "data_grew", "step": 10, "old_train_tokens": 100, "new_train_tokens": 300, "version": 2},
        {"event": "log", "step": 20, "tokens": 1280, "loss": 4.0},
        {"event": "start", "step": 10, "resumed_from": 10, "dataset_version": 2, "dataset_train_tokens": 300,
         "tokens_per_iter": 32},
        {"event": "data_grew", "step": 10, "old_train_tokens": 100, "new_train_tokens": 300, "version": 2},
        {"event": "log", "step": 15, "tokens": 800, "loss": 4.5},
    ]]
    run = fold(parse_events(lines)[0], None)
    assert [s.step for s in run.starts] == [0, 10] and run.starts[1].tokens_per_iter == 32
    assert len(run.data_grew) == 1 and [e.step for e in run.logs] == [10, 15]
    assert run.tokens_at(12) == 640 + 2 * 32 and run.tokens_at(15) == 800
