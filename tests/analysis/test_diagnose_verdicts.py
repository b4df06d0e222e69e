"""diagnose says the right thing where it used to say the wrong one (issue 14): many epochs with a widening
gap, a loss that blew up during warmup, spike reports that are a level shift after growth, and growths judged
by the val split that can judge them. Each synthetic run reproduces a case a user met."""

import math

import pytest

from gptforge.analysis.diagnose.report import diagnose_command

import synthetic_runs as runs


def all_advice(d) -> list[str]:
    return [a for f in d.findings for a in f.advice]


def test_many_epochs_with_a_widening_gap_is_too_little_data_not_train_longer(tmp_path):
    """20.6 epochs at 1.9 tokens per parameter, loss still falling: the old diagnosis said "under-trained,
    --max_iters=13178" (about 212 epochs) and "train longer"."""
    d = diagnose_command(runs.widening_gap(tmp_path / "sc"))
    f = d.facts
    assert f.epochs == pytest.approx(1262 * 16384 / 1_003_854) and f.trend.status == "improving"
    assert f.gap_trend.status == "rising" and 0.15 < f.gap < 0.25
    top = d.findings[0]
    assert top.kind == "data_limited" and top.title == (
        "Many epochs over too little data (20.6 epochs): the train/val gap is widening")
    assert top.evidence[1].startswith("the val - train gap widened +0.")
    assert top.advice[0].startswith("more data: seeing each token about once at this budget takes 20.7M tokens")
    assert top.advice[1] == ("or a smaller model: 4 epochs of these 1.00M tokens at 20 tokens per parameter suit "
                             "~200.8K parameters (this one has 10.8M)")
    assert "undertrained" not in d.kinds()
    assert not [a for a in all_advice(d) if "train longer" in a or "--max_iters" in a]
    assert d.finding("still_improving").advice == [
        "it still falls, but over 20.6 epochs of the same data: fresh data, not more steps"]


def test_a_loss_that_blew_up_during_warmup_is_divergence(tmp_path):
    """fp16, no clipping, 2,000 warmup steps: the loss went to 1.7e9 at step 600 and stayed; the old
    diagnosis missed it (everything before the end of warmup was left out) and said the schedule had not
    finished."""
    d = diagnose_command(runs.blew_up(tmp_path / "boom"))
    top = d.findings[0]
    assert top.kind == "diverged" and top.title == "The run diverged around step 400"
    assert top.evidence[0].startswith("the train loss fell to 6.101 by step 400")
    assert "then climbed to 1.7e+09 by step" in top.evidence[0] and "during warmup" in top.evidence[0]
    assert top.advice[0].startswith("restart from the checkpoint of step 250 (saved before the divergence)")
    assert top.advice[1] == "lower the learning rate 2-3x (now 0.0006, try 0.00024)"
    assert "turn gradient clipping on (--grad_clip=1.0)" in top.advice
    assert "use --dtype=bfloat16 (fp16 overflows where bf16 does not)" in top.advice
    assert {"undertrained", "still_improving", "lr_too_high"}.isdisjoint(d.kinds())


@pytest.mark.parametrize("skip", [False, True])
def test_spike_reports_after_growth_are_a_level_shift_not_a_high_lr(tmp_path, skip):
    """New text lifts the loss at the growth; the guard reported 39 spikes in a row. The old diagnosis said
    "learning rate too high (39 spikes)"."""
    d = diagnose_command(runs.grown(tmp_path / "g", after="level_shift", skip_spikes=skip))
    assert {"lr_too_high", "spikes", "overfitting"}.isdisjoint(d.kinds())
    (shift,) = d.facts.level_shifts
    assert (shift.first, shift.last, shift.count, shift.after) == (8000, 8038, 39, "the data grew at step 8,000")
    assert d.facts.spikes == 39 and d.facts.spikes_after_warmup == 0
    finding = d.finding("level_shift")
    assert finding.title == "A level shift, not spikes: 39 report(s) from step 8,000"
    assert finding.evidence[0].startswith("39 spike report(s) at steps 8,000-8,038, right after the data grew")
    if skip:
        assert finding.score == 58 and finding.advice[0].startswith("resume with --skip_spikes=false")
        assert "the model did not train on them, so it could not follow the new level" in finding.evidence[1]
    else:
        assert finding.advice[0].startswith("nothing is wrong with the learning rate")


def test_val_without_the_new_data_is_not_read_as_overfitting(tmp_path):
    """The added part got no val tokens: the val loss (old text only) rose while the model learned the new
    text. The old diagnosis called it overfitting."""
    d = diagnose_command(runs.grown(tmp_path / "g", after="val_rises", val_tokens=3_000_000))
    (g,) = d.facts.growths
    assert g.verdict == "blind" and g.val_has_new_data is False and g.change > 0.1
    assert "overfitting" not in d.kinds() and d.kinds()[0] == "data_grew"
    top = d.findings[0]
    assert top.title == "The data grew at step 8,000, but the val split holds none of the new data"
    assert any("the added text got no val tokens" in e for e in top.evidence)
    assert any("which is not overfitting" in e for e in top.evidence)
    assert top.advice[0].startswith("score the new data itself: `gptforge eval RUN_DIR --data DIR`")


def test_per_part_val_shows_the_new_data_helped(tmp_path, capsys):
    d = diagnose_command(runs.grown(tmp_path / "g", after="helped", parts=True))
    (g,) = d.facts.growths
    assert g.verdict == "helped"
    wiki = next(p for p in g.parts if p.name == "wikipedia")
    assert wiki.new and wiki.first == pytest.approx(6.50, abs=0.02) and wiki.last == pytest.approx(5.64, abs=0.02)
    assert d.finding("data_grew").title.startswith(
        "Adding data helped: the model learns the new data (wikipedia (new) 6.50 -> 5.6")
    assert d.facts.val_parts_now.keys() == {"fineweb", "wikipedia"}
    out = capsys.readouterr().out
    assert "val by part" in out and "| wikipedia 5.6" in out


def test_per_part_val_shows_forgetting(tmp_path):
    """New data learned while the old part's val rises: not 'helped', and not overfitting."""
    run_dir = runs.grown(tmp_path / "g", after="val_rises", parts=True)
    d = diagnose_command(run_dir)
    (g,) = d.facts.growths
    assert g.verdict == "worse"  # the new part (flat at 5.6 here) is not learned while the old one rises
    assert d.finding("data_grew").title.startswith("Val got worse after the data grew at step 8,000: fineweb 3.69 ->")
    assert "overfitting" not in d.kinds()


def test_a_run_that_blew_up_at_once_and_froze_is_only_diverged(tmp_path, capsys):
    """learning_rate=3 without clipping on a small dataset (walked in the issue-14 journey): the loss is 55 at
    the first logged step and 270 from then on (every update skipped: inf gradients), over 10 epochs. The
    diagnosis said the loss "fell to 55" and added "many epochs ... the loss has plateaued" to the divergence."""
    cfg = dict(runs.GPT2_124M, batch_size=12, gradient_accumulation_steps=40, max_iters=1000, warmup_iters=100,
               eval_interval=100, eval_iters=20, log_interval=10, learning_rate=3.0, min_lr=0.3, grad_clip=0.0)

    def train(s):
        return 4.1 if s == 0 else 55.0 if s <= 10 else 270.0

    d = diagnose_command(runs.write_run(tmp_path / "lr3", cfg, dataset_train_tokens=50_000_000, train=train,
                                        val=lambda s: train(s) - 1.0))
    assert d.facts.epochs > 9
    top = d.findings[0]
    assert top.kind == "diverged" and "turn gradient clipping on (--grad_clip=1.0)" in top.advice
    assert top.evidence[0].startswith("the train loss was already 54.987 at step 10, the first logged step, then")
    assert {"data_limited", "plateau", "undertrained", "still_improving"}.isdisjoint(d.kinds())
    assert f"(perplexity {math.exp(d.facts.val_now):.3g})" in capsys.readouterr().out  # not 117 digits
