"""One optimizer step, driven alone: train_step on a tiny model, optimizer and loader, and what the loop
reports about a step that went wrong (the step named is the one that was bad)."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch

from gptforge.config import build_config
from gptforge.data.dataset import open_dataset
from gptforge.model.gpt import GPT
from gptforge.train.console import Console
from gptforge.train.events import MetricsLog
from gptforge.train.guard import MAX_SPIKES_IN_A_ROW, LossGuard
from gptforge.train.loader import TrainLoader, ValBatches
from gptforge.train.optim import build_optimizer
from gptforge.train.reports import report_step
from gptforge.train.step import Outcome, StepResult, evaluate, train_step

CPU = torch.device("cpu")


class Scaled(torch.nn.Module):
    """The model with its loss multiplied by `factor`: NaN, a spike or an fp16 overflow on demand."""

    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x, y):
        logits, loss = self.model(x, y)
        return logits, loss * self.factor


@pytest.fixture
def parts(char_data):
    torch.manual_seed(0)
    cfg = build_config(dict(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=25, dropout=0.0,
                            learning_rate=1e-2, warmup_iters=0))
    model = GPT(cfg.model)
    loader = TrainLoader(open_dataset(char_data), batch_size=4, block_size=16, seed=3)
    batches = [loader.next_batch() for _ in range(2)]
    return model, build_optimizer(model, cfg.optim, "cpu"), batches


def params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def guard():
    return LossGuard(spike_sigma=6.0, max_nan_skips=5, after_step=0)


def test_an_ok_step_returns_the_mean_loss_and_the_gradient_norm_and_updates(parts):
    model, opt, batches = parts
    twin = copy.deepcopy(model)  # the same step by hand
    losses = [twin(x, y)[1] / 2 for x, y in batches]
    sum(losses).backward()
    expected_norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), math.inf).item()
    before = params_of(model)
    result = train_step(model, opt, batches, step=7, guard=guard(), device=CPU, grad_clip=1.0)
    assert result.step == 7 and result.outcome is Outcome.OK and result.outcome.updated
    assert result.loss == pytest.approx(sum(v.item() for v in losses), rel=1e-6)
    assert result.grad_norm == pytest.approx(expected_norm, rel=1e-5)
    assert result.spike is None and result.loss_scale is None
    after = params_of(model)
    assert not same(before, after)
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step
    assert len(opt.state) > 0


def test_a_nan_loss_skips_the_update_and_counts(parts):
    model, opt, batches = parts
    before, g = params_of(model), guard()
    result = train_step(model, opt, batches, step=3, guard=g, device=CPU, step_model=Scaled(model, float("nan")))
    assert result.step == 3 and result.outcome is Outcome.NAN_SKIPPED and not result.outcome.updated
    assert math.isnan(result.loss) and result.grad_norm is None
    assert same(before, params_of(model)) and len(opt.state) == 0
    assert all(p.grad is None for p in model.parameters())
    assert (g.nan_skips, g.consecutive) == (1, 1)


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped_too(parts):
    model, opt, batches = parts
    before, g = params_of(model), guard()
    hook = model.transformer.h[0].mlp.c_fc.weight.register_hook(lambda grad: grad * math.inf)
    result = train_step(model, opt, batches, step=0, guard=g, device=CPU)
    hook.remove()
    assert result.outcome is Outcome.NAN_SKIPPED and math.isfinite(result.loss) and not math.isfinite(result.grad_norm)
    assert same(before, params_of(model)) and len(opt.state) == 0 and g.nan_skips == 1


def test_non_finite_gradients_in_a_row_count_in_a_row_though_the_losses_are_finite(parts):
    """A run whose LR blew the weights up has finite losses and inf gradients step after step: they are
    skips in a row (max_nan_skips stops it), not "1 in a row" each."""
    model, opt, batches = parts
    g = guard()
    hook = model.transformer.h[0].mlp.c_fc.weight.register_hook(lambda grad: grad * math.inf)
    outcomes = [train_step(model, opt, batches, step=s, guard=g, device=CPU).outcome for s in range(3)]
    hook.remove()
    assert outcomes == [Outcome.NAN_SKIPPED] * 3 and (g.nan_skips, g.consecutive) == (3, 3)
    assert train_step(model, opt, batches, step=3, guard=g, device=CPU).outcome is Outcome.OK
    assert (g.nan_skips, g.consecutive) == (3, 0)  # an update ends the run of skips


@pytest.mark.parametrize("skip", [True, False])
def test_a_spike_is_skipped_or_kept_as_configured(parts, skip):
    model, opt, batches = parts
    g = guard()
    g.window = [3.0 + 0.01 * (i % 3) for i in range(20)]  # a recent history around 3.0
    before = params_of(model)
    result = train_step(model, opt, batches, step=40, guard=g, device=CPU, step_model=Scaled(model, 50.0),
                        skip_spikes=skip)
    mean = sum(g.window) / len(g.window)
    assert result.spike == (pytest.approx(mean), pytest.approx(g.last_std)) and result.loss > 100
    assert result.outcome is (Outcome.SPIKE_SKIPPED if skip else Outcome.SPIKE_KEPT)
    assert same(before, params_of(model)) == skip
    assert (result.grad_norm is None) == skip and g.spikes == 1


def test_a_loss_that_stays_high_is_kept_after_a_few_skips_and_reported_as_a_level_shift(parts, tmp_path):
    model, opt, batches = parts
    g = guard()
    g.window = [3.0 + 0.01 * (i % 3) for i in range(20)]
    high = Scaled(model, 50.0)
    results = [train_step(model, opt, batches, step=40 + i, guard=g, device=CPU, step_model=high, skip_spikes=True)
               for i in range(MAX_SPIKES_IN_A_ROW)]
    assert [r.outcome for r in results] == [Outcome.SPIKE_SKIPPED] * MAX_SPIKES_IN_A_ROW
    before = params_of(model)
    shift = train_step(model, opt, batches, step=43, guard=g, device=CPU, step_model=high, skip_spikes=True)
    assert shift.outcome is Outcome.LEVEL_SHIFT and shift.outcome.updated and shift.grad_norm is not None
    assert not same(before, params_of(model))  # kept: the optimizer stepped
    text, events = lines_and_events(tmp_path, shift, g, skip_spikes=True)
    assert text == (f"step 43: the loss stayed high for 4 steps in a row ({shift.loss:.4f}, {shift.spike[0]:.4f} "
                    "before): the level moved (new data or another learning rate?), not a spike; step kept, and "
                    f"spikes are judged against the new level {g.level:.4f} from here\n")
    assert [(e["event"], e["step"], e["loss"], e["mean"], e["level"]) for e in events] == [
        ("level_shift", 43, shift.loss, shift.spike[0], g.level)]


def test_an_fp16_overflow_skips_the_update_and_lowers_the_scale(parts):
    model, opt, batches = parts
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    before = params_of(model)
    # a finite loss (about 3e34) whose scaled gradients overflow
    result = train_step(model, opt, batches, step=2, guard=guard(), device=CPU, step_model=Scaled(model, 1e34),
                        scaler=scaler)
    assert math.isfinite(result.loss) and result.outcome is Outcome.FP16_OVERFLOW
    assert result.loss_scale == (65536.0, 32768.0) and scaler.get_scale() == 32768.0
    assert same(before, params_of(model))


def test_evaluate_is_the_mean_loss_of_the_fixed_batches_and_restores_train_mode(parts, char_data):
    model, _, _ = parts
    val = ValBatches(open_dataset(char_data), 4, 16, n_batches=3)
    model.train()
    (loss,) = evaluate(model, [val], CPU)
    model.eval()
    with torch.no_grad():
        expected = sum(model(x, y)[1].item() for x, y in val) / len(val)
    assert loss == pytest.approx(expected, rel=1e-6)
    model.train()
    evaluate(model, [val], CPU)
    assert model.training


def lines_and_events(tmp_path, result, g, skip_spikes=False):
    out = io.StringIO()
    log = MetricsLog(tmp_path, fresh=True)
    report_step(result, g, skip_spikes, Console(stream=out), log)
    log.close()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return out.getvalue(), events


def test_reports_name_the_step_that_was_bad(tmp_path):
    g = guard()
    g.non_finite(11)
    text, events = lines_and_events(tmp_path, StepResult(11, float("nan"), None, Outcome.NAN_SKIPPED), g)
    assert text == "step 11: non-finite loss (nan), step skipped (1 in a row, 1 in total)\n"
    assert [(e["event"], e["step"], e["count"], e["consecutive"]) for e in events] == [("nan_skip", 11, 1, 1)]

    text, events = lines_and_events(tmp_path, StepResult(4, 2.5, math.inf, Outcome.NAN_SKIPPED), g)
    assert text.startswith("step 4: non-finite gradient norm (inf), step skipped")

    spike = StepResult(9, 9.5, None, Outcome.SPIKE_SKIPPED, spike=(3.0, 0.1))
    text, events = lines_and_events(tmp_path, spike, g, skip_spikes=True)
    assert text == "step 9: loss spike 9.5000 vs recent mean 3.0000 ± 0.1000; optimizer step skipped\n"
    assert [(e["event"], e["step"], e["loss"], e["mean"], e["std"]) for e in events] == [("spike", 9, 9.5, 3.0, 0.1)]

    # a kept spike whose fp16 gradients then overflowed: both are said, for step 5
    both = StepResult(5, 9.5, math.inf, Outcome.FP16_OVERFLOW, spike=(3.0, 0.1), loss_scale=(1024.0, 512.0))
    text, events = lines_and_events(tmp_path, both, g)
    assert text.splitlines() == ["step 5: fp16 overflow, step skipped; loss scale 1024 -> 512",
                                 "step 5: loss spike 9.5000 vs recent mean 3.0000 ± 0.1000; kept (set "
                                 "--skip_spikes=true to skip)"]
    assert [(e["event"], e["step"]) for e in events] == [("spike", 5)]

    text, events = lines_and_events(tmp_path, StepResult(6, 2.0, 0.5, Outcome.OK), g)
    assert text == "" and events == []
