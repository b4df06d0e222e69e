"""The findings of `gptforge diagnose`: each classic case (divergence, overfitting, too little data, a
plateau, an LR too high, a level shift, an unfinished schedule, a grown dataset; speed and eval noise in
speed.py) as a function of the run's Facts, with its evidence and what to try; `analyse` ranks those that apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gptforge.analysis import curves
from gptforge.analysis.diagnose import speed
from gptforge.analysis.diagnose.facts import Facts, gather_facts
from gptforge.analysis.diagnose.finding import Finding
from gptforge.analysis.diagnose.growth import finding_parts
from gptforge.analysis.diagnose.standing import hellaswag_finding
from gptforge.analysis.runlog import RunLog, finite
from gptforge.fmt import count

MANY_EPOCHS = 4.0  # beyond ~4 passes repeated tokens are worth much less than fresh ones (Muennighoff et al. 2023)
CHINCHILLA = 20.0


@dataclass
class Diagnosis:
    facts: Facts
    findings: list[Finding]

    def kinds(self) -> list[str]:
        return [f.kind for f in self.findings]

    def finding(self, kind: str) -> Finding | None:
        return next((f for f in self.findings if f.kind == kind), None)


def _lr_at(run: RunLog, step: float) -> float | None:
    logged = [e for e in run.logs if finite(e.lr)]
    if not logged:
        return None
    return min(logged, key=lambda e: abs(e.step - step)).lr


def compute_optimal(params: float, tokens: float) -> tuple[float, float]:
    """Chinchilla's split of the same compute (6 N D): N = sqrt(C / 120), D = 20 N."""
    n = math.sqrt(6 * params * tokens / (6 * CHINCHILLA))
    return n, CHINCHILLA * n


def _diverged(f: Facts, run: RunLog, cfg: dict) -> Finding | None:
    bu = f.blowup
    nan_at_end = f.nonfinite_losses > 0 and not finite(run.logs[-1].loss)
    stopped = f.end_reason == "nan" or f.max_consecutive_nan >= f.max_nan_skips > 0
    if not (bu or stopped or nan_at_end):
        return None
    ev, began = [], None
    if bu:
        began = bu.min_x
        first = run.logs and bu.min_x <= run.logs[0].step  # it never fell: rising from the first log line
        low = (f"was already {bu.min_value:.3f} at step {bu.min_x:,.0f}, the first logged step" if first
               else f"fell to {bu.min_value:.3f} by step {bu.min_x:,.0f}")
        ev.append(f"the train loss {low}, then climbed to {bu.min_value + bu.rise:.4g} by step {bu.peak_x:,.0f} "
                  "and did not come back"
                  + (" (during warmup, while the LR was still rising)" if bu.min_x < f.warmup_iters else ""))
    if f.nonfinite_losses:
        ev.append(f"{f.nonfinite_losses} logged loss(es) were nan or inf, from step {f.first_nonfinite_step:,}")
        began = began if began is not None else f.first_nonfinite_step
    if f.nan_skips:
        ev.append(f"{f.nan_skips} steps skipped for a non-finite loss or gradient from step {f.first_nan_step} "
                  f"(at most {f.max_consecutive_nan} in a row; the run stops at {f.max_nan_skips})")
        began = began if began is not None else f.first_nan_step
    if f.end_reason == "nan":
        ev.append("the run stopped on non-finite losses or gradients (end reason 'nan')")
    lr = _lr_at(run, began) if began is not None else None
    if lr:
        ev.append(f"the learning rate there was {lr:.3g}")
    if f.grad_norm_max:
        ev.append(f"gradient norm: median {f.grad_norm_median:.3g}, max {f.grad_norm_max:.3g}")
    safe = [s for s in f.checkpoint_steps if began is None or s <= began]
    peak, clip = cfg.get("learning_rate"), cfg.get("grad_clip")
    advice = [f"lower the learning rate 2-3x (now {peak:g}, try {peak / 2.5:.2g})" if peak
              else "lower the learning rate 2-3x",
              f"warm up longer (warmup_iters={max(2 * f.warmup_iters, 100)})",
              f"keep gradient clipping on (grad_clip={clip:g}): it bounds each update, but a too-high LR still "
              "diverges" if clip else "turn gradient clipping on (--grad_clip=1.0)"]
    if safe:
        advice.insert(0, f"restart from the checkpoint of step {safe[-1]} (saved before the divergence) with the "
                         "lower LR; later checkpoints hold the diverged weights")
    if cfg.get("dtype") == "float16":
        advice.append("use --dtype=bfloat16 (fp16 overflows where bf16 does not)")
    title = "The run diverged" + (f" around step {began:.0f}" if began is not None else "")
    return Finding("diverged", 100, title, ev, advice)


def _nan_skips(f: Facts) -> Finding | None:
    if not f.nan_skips:
        return None
    return Finding(
        "nan_skips",
        55,
        f"{f.nan_skips} non-finite loss(es) skipped",
        [
            f"first at step {f.first_nan_step}, at most {f.max_consecutive_nan} in a row; the steps were "
            "skipped with the weights untouched"
        ],
        ["isolated skips are harmless; if they recur, lower the learning rate or use bf16 instead of fp16"],
    )


def _overfitting(f: Facts, cfg: dict) -> Finding | None:
    if f.evals < 3 or f.val_min_step >= f.last_step:
        return None
    if f.growths and f.growths[-1].verdict in ("blind", "forgetting", "worse"):
        return None  # val rising after new text came in is the model moving to it: the growth finding says so
    rise = f.val_now - f.val_min
    noise = f.trend.noise if math.isfinite(f.trend.noise) else 0.0
    if rise <= max(0.02, 2 * noise, 0.01 * f.val_min):
        return None
    train_then, train_now = f.train_at_val_min, f.train_now
    if train_then is not None and train_now is not None and train_now >= train_then - 0.01:
        return None  # train rising too: instability, not memorisation
    ev = [
        f"val loss bottomed at {f.val_min:.4f} at step {f.val_min_step:,} and is {f.val_now:.4f} now "
        f"(+{rise:.3f}) at step {f.last_step:,}"
    ]
    if train_then is not None:
        ev.append(f"meanwhile the train loss kept falling, {train_then:.4f} -> {train_now:.4f}; "
                  f"the gap is {f.gap:.3f}")
    if f.epochs:
        ev.append(f"{f.epochs:.1f} epochs over {count(f.dataset_train_tokens or 0)} train tokens")
    drop = cfg.get("dropout", 0.0)
    advice = [f"use the best checkpoint (step {f.val_min_step:,}) or stop there: more steps only memorise",
              "more (or fresh) data: every extra epoch repeats what the model has already memorised",
              f"more regularisation: dropout {drop:g} -> {min(0.3, drop + 0.1):g}, weight_decay up",
              "or a smaller model for this much data"]
    return Finding("overfitting", 90, "Overfitting: the val loss is rising while the train loss falls", ev, advice)


def _plateau_evidence(f: Facts) -> str:
    t = f.trend
    why = ("within its noise" if abs(t.change) <= 2 * t.change_se else
           f"under the {curves.PLATEAU_FLOOR * 100:.0f}% of the loss ({curves.PLATEAU_FLOOR * t.level:.3f}) "
           "that counts as progress")
    return (f"{f.curve} loss {t.level:.4f}, changed {t.change:+.4f} (± {t.change_se:.4f}) over the last "
            f"{t.end - t.start:,.0f} steps ({t.points} points, noise {t.noise:.4f}): {why}")


def _widening(f: Facts) -> bool:
    """The val - train gap grows beyond its noise: the model starts to memorise the train split."""
    return f.gap is not None and f.gap > 0 and f.gap_trend is not None and f.gap_trend.status == "rising"


def _smaller_model(f: Facts) -> str | None:
    """A model sized to the data: about MANY_EPOCHS passes at Chinchilla's tokens per parameter."""
    if not f.dataset_train_tokens or not f.params:
        return None
    fits = MANY_EPOCHS * f.dataset_train_tokens / CHINCHILLA
    return (f"or a smaller model: {MANY_EPOCHS:.0f} epochs of these {count(f.dataset_train_tokens)} tokens at "
            f"{CHINCHILLA:.0f} tokens per parameter suit ~{count(fits)} parameters (this one has {count(f.params)})")


def _data_limited(f: Facts) -> Finding | None:
    """Many epochs, and the loss has stopped paying for them: a plateau, or a gap that widens while it falls."""
    if not f.epochs or f.epochs < MANY_EPOCHS or not (f.trend.status == "plateau" or _widening(f)):
        return None
    from gptforge.analysis.plan.sizing import download_need

    tokens = f.tokens_seen
    ev = [f"{count(tokens)} tokens seen over a dataset of {count(f.dataset_train_tokens or 0)} train tokens: "
          f"{f.epochs:.1f} epochs"]
    if f.trend.status == "plateau":
        ev.append(_plateau_evidence(f))
        if f.gap is not None:
            ev.append(f"train {f.train_now:.3f} vs val {f.val_now:.3f} (gap {f.gap:.3f}): not memorising, but "
                      "each pass over the same tokens teaches less")
        what = "the loss has plateaued"
    else:
        gt = f.gap_trend
        ev.append(f"the val - train gap widened {gt.change:+.3f} over the last {gt.end - gt.start:,.0f} steps to "
                  f"{f.gap:.3f} (train {f.train_now:.3f}, val {f.val_now:.3f}): the model is starting to memorise")
        ev.append(f"{f.curve} loss still falling ({f.trend.change:+.4f} over the last "
                  f"{f.trend.end - f.trend.start:,.0f} steps), but more passes over the same text buy less each time")
        what = "the train/val gap is widening"
    need = download_need(tokens, f.chars_per_token)
    src = "measured" if need["measured"] else "assumed"
    advice = [f"more data: seeing each token about once at this budget takes {count(tokens)} tokens = "
              f"{count(need['chars'])} characters ({need['chars_per_token']:.1f} chars/token, {src}) = about "
              f"{need['shards']:,} FineWeb-Edu shards (gptforge download ... --shards {need['shards']}, then prepare)"]
    smaller = _smaller_model(f)
    if smaller:
        advice.append(smaller)
    if f.params:
        n_opt, d_opt = compute_optimal(f.params, tokens)
        ev.append(f"{count(f.params)} parameters trained on {f.tokens_per_param:.1f} tokens each "
                  f"(Chinchilla: {CHINCHILLA:.0f})")
        advice.append(f"for the same compute Chinchilla suggests ~{count(n_opt)} parameters on ~{count(d_opt)} tokens "
                      "(a larger model, fewer steps), which also needs the fresh data")
    if f.trend.status == "plateau":
        advice.append(f"until then, stop earlier: the last {f.trend.end - f.trend.start:,.0f} steps bought "
                      f"{-f.trend.change:.3f}")
    else:
        advice.append("not more steps on this data: the gap keeps widening until the val loss turns up (overfitting)")
    return Finding("data_limited", 85, f"Many epochs over too little data ({f.epochs:.1f} epochs): {what}", ev, advice)


def _plateau(f: Facts) -> Finding | None:
    if f.trend.status != "plateau" or (f.epochs and f.epochs >= MANY_EPOCHS):
        return None
    ev, advice = [_plateau_evidence(f)], []
    sched = f.schedule
    if sched and sched.multiplier > 0.5 and (f.progress or 0) < 0.9:
        ev.append(f"the LR is still {sched.multiplier * 100:.0f}% of its peak ({sched.schedule} schedule, "
                  f"{(f.progress or 0) * 100:.0f}% through)")
        advice.append(
            "the loss usually drops again while the LR decays: let the schedule finish, or use "
            "--schedule=wsd and decay now"
        )
    tpp = f.tokens_per_param
    if tpp and tpp > 5 * CHINCHILLA:
        n_opt, d_opt = compute_optimal(f.params, f.tokens_seen)
        ev.append(f"{tpp:.0f} tokens per parameter, {tpp / CHINCHILLA:.0f}x Chinchilla's {CHINCHILLA:.0f}")
        advice.append(f"the model is small for this budget: ~{count(n_opt)} parameters on ~{count(d_opt)} tokens "
                      "would use the same compute better")
    if not advice:
        advice.append(
            "this is as low as this model, data and schedule go: a larger model, more data, or a lower "
            "final LR (min_lr) to squeeze the rest"
        )
    return Finding("plateau", 70, "The loss has plateaued", ev, advice)


def _lr_too_high(f: Facts, run: RunLog, cfg: dict) -> Finding | None:
    rb, spikes, osc = f.rebound, f.spikes_after_warmup, f.oscillation
    # a climb five times the smoothed curve's noise is no longer batch-to-batch chance
    climbed = rb is not None and rb.rise > max(0.1, 0.03 * rb.min_value, 5 * rb.noise)
    shaky = osc > 0.05
    if not (spikes >= 3 or climbed or (shaky and spikes >= 1)):
        return None
    ev = []
    if spikes:
        steps = ", ".join(str(e.step) for e in run.spikes[:6]) + (" ..." if len(run.spikes) > 6 else "")
        ev.append(f"{spikes} loss spike(s) after warmup (steps {steps})")
    if climbed:
        lr = _lr_at(run, rb.min_x)
        ev.append(f"the smoothed train loss climbed {rb.rise:.3f} from {rb.min_value:.3f} (step {rb.min_x:.0f}) "
                  f"to step {rb.peak_x:.0f}" + (f", at LR {lr:.3g}" if lr else ""))
    if shaky:
        ev.append(f"the loss swings {osc * 100:.0f}% around its trend from one log to the next")
    if f.grad_norm_max:
        ev.append(f"gradient norm: median {f.grad_norm_median:.3g}, max {f.grad_norm_max:.3g}")
    peak = cfg.get("learning_rate")
    advice = [
        f"lower the learning rate 2-3x (now {peak:g}, try {peak / 2.5:.2g})"
        if peak
        else "lower the learning rate 2-3x",
        f"a longer warmup (now {f.warmup_iters} iterations = {count(f.warmup_tokens)} tokens)",
        "a larger batch (more gradient_accumulation_steps) smooths the updates",
    ]
    if not cfg.get("grad_clip"):
        advice.append("gradient clipping (--grad_clip=1.0)")
    return Finding("lr_too_high", 80, "The learning rate looks too high: the loss oscillates and spikes", ev, advice)


def _spikes(f: Facts) -> Finding | None:
    spikes = f.isolated_spikes
    if not spikes:
        return None
    e = spikes[0]
    return Finding("spikes", 35, f"{len(spikes)} loss spike(s)",
                   [f"e.g. step {e.step}: {e.loss:.3f} against a recent {e.mean:.3f} ± {e.std:.3f}"],
                   ["occasional spikes that recover are common; if they repeat, lower the LR or set "
                    "--skip_spikes=true"])


def _still_improving(f: Facts) -> Finding | None:
    t = f.trend
    if t.status != "improving":
        return None
    ev = [
        f"{f.curve} loss fell {-t.change:.4f} (± {t.change_se:.4f}) over the last {t.end - t.start:,.0f} steps, "
        f"to {t.level:.4f}"
    ]
    tpp = f.tokens_per_param
    if tpp is not None:
        ev.append(f"{tpp:.1f} tokens per parameter (Chinchilla-optimal: {CHINCHILLA:.0f})")
    if f.epochs and f.epochs >= MANY_EPOCHS:
        advice = [f"it still falls, but over {f.epochs:.1f} epochs of the same data: fresh data, not more steps"]
    elif f.end_reason == "max_iters" or (f.progress or 0) >= 1:
        more = 2 * f.max_iters
        advice = [f"train longer: --init_from=resume --max_iters={more} --lr_decay_iters={f.max_iters} "
                  "keeps the LR at min_lr (without lr_decay_iters the cosine is stretched and the LR rises again), "
                  "or start a longer run"]
    else:
        advice = ["nothing to fix: let it run"]
    return Finding("still_improving", 10, "Still improving", ev, advice)


def _undertrained(f: Facts) -> Finding | None:
    tpp, t = f.tokens_per_param, f.trend
    if tpp is None or tpp >= CHINCHILLA / 2 or t.status in ("plateau", "rising"):
        return None
    if f.epochs and f.epochs >= MANY_EPOCHS:
        return None  # the data is what runs out first: _data_limited says what to do
    target_tokens = CHINCHILLA * f.params
    target = math.ceil(target_tokens / f.tokens_per_iter) if f.tokens_per_iter else None
    ev = [f"{tpp:.2g} tokens per parameter ({count(f.tokens_seen)} tokens for {count(f.params)} parameters); "
          f"compute-optimal is about {CHINCHILLA:.0f}"]
    if f.first_loss is not None and f.train_now is not None:
        ev.append(f"the loss went {f.first_loss:.3f} -> {f.train_now:.3f} and was still "
                  f"{'falling' if t.status == 'improving' else 'moving'} at the end")
    data = f.dataset_train_tokens
    if data and target_tokens / data > MANY_EPOCHS:
        ev.append(f"{CHINCHILLA:.0f} tokens per parameter is {count(target_tokens)} tokens = "
                  f"{target_tokens / data:.0f} epochs of this {count(data)}-token dataset")
        most = math.ceil(MANY_EPOCHS * data / f.tokens_per_iter) if f.tokens_per_iter else None
        advice = [(f"train longer, but only up to about {MANY_EPOCHS:.0f} epochs of this data (--max_iters={most}); "
                   "beyond that, more data" if most and most > f.last_step else
                   "more data: training longer on this data would repeat it too often"),
                  _smaller_model(f) or "or a smaller model"]
    else:
        advice = [f"train longer: about {target:,} iterations reach 20 tokens per parameter (--max_iters={target}, or "
                  "drop max_iters and keep tokens_per_param=20)" if target else "train longer",
                  "or a smaller model if the budget is fixed"]
    return Finding("undertrained", 40, "Under-trained: far fewer tokens than the model can use", ev, advice)


def _level_shifts(f: Facts, cfg: dict) -> list[Finding]:
    """Runs of spike reports after a growth or a resume, or many in a row: the loss moved to a new level."""
    out = []
    skipping = bool(cfg.get("skip_spikes"))
    for r in f.level_shifts:
        where = f"right after {r.after}" if r.after else f"{r.count} in a row"
        ev = [f"{r.count} spike report(s) at steps {r.first:,}-{r.last:,}, {where}: the loss moved to a new level "
              "and the spike guard's window still held the old one"]
        advice = ["nothing is wrong with the learning rate: a new kind of text has a higher loss until the model "
                  "learns it"]
        score = 30
        if skipping:
            ev.append("with skip_spikes=true each of these steps was skipped: the model did not train on them"
                      + (", so it could not follow the new level" if r.count >= 10 else ""))
            advice.insert(0, "resume with --skip_spikes=false (a guard that restarts its window after a growth or "
                             "resume keeps skipping only real spikes)")
            score = 58
        out.append(Finding("level_shift", score, f"A level shift, not spikes: {r.count} report(s) from step "
                           f"{r.first:,}", ev, advice))
    return out


def _warmup_too_long(f: Facts) -> Finding | None:
    """A warmup as long as the run (nanoGPT's default 2,000 iterations on a short run) never reaches the peak LR."""
    if not f.warmup_iters or f.warmup_iters < 0.5 * f.max_iters:
        return None
    peak = f.schedule.peak if f.schedule else f.lr_logged_max
    reached = f.lr_logged_max / peak if f.lr_logged_max and peak else None
    ev = [f"warmup_iters {f.warmup_iters:,} for a run of {f.max_iters:,} iterations"
          + (f": the LR reached {reached * 100:.0f}% of its peak" if reached else "")]
    return Finding("warmup_too_long", 48, "The warmup takes most of the run: the LR barely reaches its peak", ev,
                   [f"--warmup_iters={max(1, round(0.05 * f.max_iters))} (about 5% of the run) for a run this short"])


def _unfinished(f: Facts) -> Finding | None:
    reason, sched = f.end_reason, f.schedule
    if reason == "max_iters" or reason == "nan" or not f.progress or f.progress >= 0.98:
        return None
    state = "still running or crashed (no end event)" if reason is None else f"stopped ({reason})"
    ev = [f"{state} at step {f.last_step:,} of {f.max_iters:,} ({f.progress * 100:.0f}%)"]
    if sched:
        ev.append(f"the LR is at {sched.multiplier * 100:.0f}% of its peak; the final decay usually brings the last "
                  "drop in loss")
    return Finding("unfinished", 45, "The schedule has not finished", ev,
                   ["resume to finish it: gptforge train RUN_DIR/config.toml --init_from=resume"])


def analyse(run: RunLog, config: dict, dataset_train_tokens: int | None = None,
            chars_per_token: float | None = None, identity: tuple = (None, None)) -> Diagnosis:
    f = gather_facts(run, config, dataset_train_tokens, chars_per_token, identity)
    findings = [_diverged(f, run, config), _overfitting(f, config)]
    if findings[0] is None:
        findings += [_lr_too_high(f, run, config), _nan_skips(f)]
    if findings[0] is None and findings[1] is None:  # (a diverged run's epochs and plateau say nothing)
        findings += [_data_limited(f), _plateau(f)]
    findings += [_still_improving(f), _undertrained(f) if findings[0] is None else None, _unfinished(f),
                 _warmup_too_long(f),
                 *speed.throughput(f), speed.step_times(f), speed.eval_noise(f, config), *_level_shifts(f, config)]
    findings += [Finding("data_grew", *finding_parts(g)) for g in f.growths]
    findings.append(hellaswag_finding(f.hellaswag, f.params, f.trend.status))
    if not any(x is not None and x.kind in ("lr_too_high", "diverged") for x in findings):
        findings.append(_spikes(f))
    return Diagnosis(f, sorted((x for x in findings if x is not None), key=lambda x: -x.score))
