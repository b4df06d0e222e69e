"""The numbers a diagnosis rests on, gathered from a run's records (metrics.jsonl), its resolved config and
the dataset's size: one typed `Facts` that the findings (findings.py) and the report (report.py) read.
Pure, so each classic case is tested on a synthetic log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gptforge.analysis import curves
from gptforge.analysis.diagnose.growth import Growth, VersionSpan, growths, version_spans
from gptforge.analysis.diagnose.standing import SwagTrend, hellaswag_trend, where_it_stands
from gptforge.analysis.runlog import RunLog, finite, val_parts
from gptforge.train.devices import NANOGPT_MFU_PEAK
from gptforge.train.events import Spike

PER_SEQUENCE_LOSS_SPREAD = 0.4  # typical std of a sequence's mean loss on web text (nats), for eval noise
SPIKE_RUN_GAP = 5  # spike reports at most this many steps apart belong to one run of reports
LEVEL_SHIFT_SPIKES = 10  # a run of this many reports is the loss moving to a new level, not spikes
AFTER_BOUNDARY = 50  # steps after a growth or resume in which a run of spike reports is the new level


@dataclass(frozen=True)
class SpikeRun:
    """Spike reports close together: after a growth or a resume, or this many in a row, the loss moved to a
    new level that the spike guard's window had not caught up with."""

    first: int
    last: int
    count: int
    after: str | None  # "the data grew at step N" / "the resume at step N"


@dataclass(frozen=True)
class Schedule:
    """The LR schedule at the last step, from the optimizer's own pure schedule function."""

    multiplier: float  # of the peak, now
    peak: float
    now: float
    min_lr: float
    schedule: str  # cosine, wsd, constant
    warmup_iters: int
    optimizer: str
    muon_lr: float


@dataclass(frozen=True)
class Facts:
    # where the run is, and how much it has trained on
    last_step: int
    max_iters: int
    tokens_per_iter: int
    tokens_seen: int
    dataset_train_tokens: int | None
    epochs: float | None  # over the current dataset
    params: int | None
    params_non_embedding: int | None
    tokens_per_param: float | None
    chars_per_token: float | None
    end_reason: str | None  # None: still running, or crashed
    progress: float | None  # last_step / max_iters
    versions: list[VersionSpan]  # one per dataset version trained on
    growths: list[Growth]
    since: int | None  # the step the current dataset version began (None: one version)
    device: str | None
    device_name: str | None
    checkpoint_steps: list[int]
    # the losses
    evals: int
    train_now: float | None
    val_now: float | None
    first_loss: float | None
    gap: float | None  # val - train at the last eval
    ppl: float | None
    gap_trend: curves.Trend | None
    curve: str  # "val" or "train": the curve whose trend matters
    trend: curves.Trend
    # instability
    rebound: curves.Rebound | None
    blowup: curves.Rebound | None  # the largest climb over all steps (warmup included) that did not come back
    nonfinite_losses: int  # logged losses that were nan or inf (a trainer without NaN skips logs them)
    first_nonfinite_step: int | None
    level_shifts: list[SpikeRun]
    oscillation: float
    spikes: int
    isolated_spikes: list[Spike]  # the spikes that are not part of a level shift
    spikes_after_warmup: int  # of those
    nan_skips: int
    max_consecutive_nan: int
    max_nan_skips: int
    first_nan_step: int | None
    grad_norm_median: float | None
    grad_norm_max: float | None
    # the learning rate
    schedule: Schedule | None
    lr_logged_now: float | None
    lr_logged_max: float | None
    warmup_iters: int
    warmup_tokens: int
    # speed and the evals' precision
    throughput: curves.Stability | None
    mfu: curves.Stability | None  # against the device's own peak
    mfu_a100: curves.Stability | None  # nanoGPT's convention: against an A100's 312 TFLOPS
    peak_flops: float | None
    trainer: str
    step_ms: float | None  # median time of a step that times only itself
    inflated_steps: list[tuple[int, float, str]]  # (log step, ms, what else it counts): nanoGPT's iterations
    eval_sequences: int
    eval_tokens: int
    eval_error: float | None  # standard error of the val loss from the choice of sequences
    # the best val since the current dataset version (None without evals)
    val_parts_now: dict | None = None  # the last eval's val loss per dataset part, when logged
    val_min: float | None = None
    val_min_step: int | None = None
    train_at_val_min: float | None = None
    # beyond the loss: HellaSwag through the run, and the val loss beside published runs (standing.py)
    hellaswag: SwagTrend | None = None
    standing: str | None = None


def _points(events: list, key: str, x: str = "step") -> list[tuple[float, float]]:
    pairs = [(getattr(e, x), getattr(e, key)) for e in events]
    return [(float(a), float(b)) for a, b in pairs if finite(a) and finite(b)]


_OPTIM_KEYS = ("optimizer", "learning_rate", "min_lr", "schedule", "warmup_iters", "lr_decay_iters", "decay_fraction",
               "muon_lr")


def lr_schedule(config: dict, step: int, max_iters: int, segments: list | None = None) -> Schedule | None:
    """`segments`: those a resume with another learning rate began (the start event's lr_segments)."""
    try:
        from gptforge.config import build_config
        from gptforge.train.optim import Schedule as LRSchedule
        from gptforge.train.optim import Segment

        optim = build_config({k: v for k, v in config.items() if k in _OPTIM_KEYS}).optim
        mult = LRSchedule(optim, max_iters, [Segment.from_dict(d) for d in segments or []]).multiplier(
            min(step, max_iters))
    except Exception:  # an old or foreign config: fall back to the logged values only
        return None
    return Schedule(mult, optim.learning_rate, optim.learning_rate * mult, optim.min_lr, optim.schedule,
                    optim.warmup_iters, optim.optimizer, optim.muon_lr)


def _size(run: RunLog, config: dict, dataset_train_tokens: int | None, chars_per_token: float | None) -> dict:
    """How far the run got, in steps, tokens and epochs, over which dataset versions."""
    start, logs, evals = run.start, run.logs, run.evals
    last_step = max([e.step for e in logs + evals] or [0])
    tokens_per_iter = start.tokens_per_iter or (
        config.get("batch_size", 0) * config.get("gradient_accumulation_steps", 0) * config.get("block_size", 0))
    tokens_seen = max([e.tokens for e in logs + evals if finite(e.tokens)] or [last_step * tokens_per_iter])
    data_tokens = dataset_train_tokens or start.dataset_train_tokens
    spans = version_spans(run, last_step, tokens_seen)
    epochs = next((e.epoch for e in reversed(logs + evals) if finite(e.epoch) and e.step == last_step), None)
    if (epochs is None or len(spans) > 1) and data_tokens:
        epochs = tokens_seen / data_tokens  # the loader's count restarts its epoch when the data grows
    if dataset_train_tokens and start.dataset_train_tokens not in (None, dataset_train_tokens):
        epochs = tokens_seen / dataset_train_tokens  # --data names a different (grown) dataset: count against it
    params = start.params
    max_iters = start.max_iters or config.get("max_iters") or last_step
    return dict(last_step=last_step, max_iters=max_iters, tokens_per_iter=tokens_per_iter, tokens_seen=tokens_seen,
                dataset_train_tokens=data_tokens, epochs=epochs, params=params,
                params_non_embedding=start.params_non_embedding,
                tokens_per_param=tokens_seen / params if params else None, chars_per_token=chars_per_token,
                end_reason=run.end_reason, progress=last_step / max_iters if max_iters else None,
                versions=spans, growths=growths(run, spans),
                # comparisons on the val curve stay after the last change of dataset (the val split may differ)
                since=spans[-1].start_step if len(spans) > 1 else None,
                device=start.device, device_name=start.device_name, checkpoint_steps=[e.step for e in run.checkpoints])


def _losses(run: RunLog, since: int | None) -> dict:
    """Train and val now, their gap, the best val, and the trends."""
    train_pts, val_pts = _points(run.logs, "loss"), _points(run.evals, "val_loss")
    eval_train_pts = _points(run.evals, "train_loss")
    train_now = eval_train_pts[-1][1] if eval_train_pts else (
        curves.smooth([p[1] for p in train_pts], curves.smoothing_span(len(train_pts)))[-1] if train_pts else None)
    val_now = val_pts[-1][1] if val_pts else None
    out = dict(evals=len(val_pts), train_now=train_now, val_now=val_now,
               first_loss=(eval_train_pts or train_pts or [(0, None)])[0][1],
               gap=val_now - train_now if val_pts and eval_train_pts else None,
               ppl=math.exp(val_now) if val_pts and val_now < 700 else None)
    parts = next((val_parts(e) for e in reversed(run.evals) if val_parts(e)), None)
    out.update(val_parts_now=parts)
    same_val = [p for p in val_pts if since is None or p[0] > since] or val_pts
    if val_pts:
        i = min(range(len(same_val)), key=lambda k: same_val[k][1])
        out.update(val_min=same_val[i][1], val_min_step=int(same_val[i][0]),
                   train_at_val_min=next((y for x, y in eval_train_pts if x == same_val[i][0]), None))
    gaps = [(x, v - t) for (x, v), (x2, t) in zip(val_pts, eval_train_pts) if x == x2 and (since is None or x > since)]
    # the curve whose plateau matters: val (what generalises), else the logged train loss
    curve = "val" if len(val_pts) >= curves.MIN_POINTS else "train"
    out.update(gap_trend=curves.trend(gaps) if len(gaps) >= 3 else None, curve=curve,
               trend=curves.trend(val_pts if curve == "val" else train_pts, since=since))
    return out


def _spike_runs(run: RunLog) -> list[SpikeRun]:
    """Spike reports grouped into runs, each said to follow a growth or resume when it starts just after one."""
    boundaries = [(e.step, f"the data grew at step {e.step:,}") for e in run.data_grew]
    boundaries += [(s.step, f"the resume at step {s.step:,}") for s in run.starts if s.resumed_from is not None]
    groups: list[list[int]] = []
    for step in sorted(e.step for e in run.spikes):
        if groups and step - groups[-1][-1] <= SPIKE_RUN_GAP:
            groups[-1].append(step)
        else:
            groups.append([step])
    boundaries.sort(key=lambda x: -x[0])  # the latest first; a growth before its resume at the same step
    out = []
    for g in groups:
        after = next((why for b, why in boundaries if 0 <= g[0] - b <= AFTER_BOUNDARY), None)
        out.append(SpikeRun(g[0], g[-1], len(g), after))
    return out


def _blowup(pieces: list[list[tuple[float, float]]]) -> curves.Rebound | None:
    """The largest climb of the loss (warmup included) whose end stays high: the curve did not come back."""
    worst = None
    for piece in pieces:
        rb = curves.worst_rebound(piece)
        if rb is None or rb.rise <= max(1.0, 0.25 * rb.min_value):
            continue
        tail = sorted(y for _, y in piece[-3:])
        if tail[len(tail) // 2] >= rb.min_value + 0.5 * rb.rise and (worst is None or rb.rise > worst.rise):
            worst = rb
    return worst


def _instability(run: RunLog, config: dict, spans: list[VersionSpan], since: int | None) -> dict:
    """Climbs, swings, spikes, non-finite losses and gradient norms, after warmup."""
    warmup = config.get("warmup_iters", 0)
    points = _points(run.logs, "loss")
    after_warmup = [p for p in points if p[0] > warmup]

    def by_version(pts):  # a jump where new data came in is not instability: look within each dataset version
        return [[p for p in pts if s.start_step < p[0] <= s.end_step] for s in spans] if since else [pts]

    rebounds = [r for r in map(curves.worst_rebound, by_version(after_warmup)) if r is not None]
    runs = _spike_runs(run)
    shifts = [r for r in runs if r.after or r.count >= LEVEL_SHIFT_SPIKES]
    isolated = [e for e in run.spikes if not any(r.first <= e.step <= r.last for r in shifts)]
    grad_norms = [e.grad_norm for e in run.logs if finite(e.grad_norm)]
    nonfinite = [e.step for e in run.logs if isinstance(e.loss, float) and not math.isfinite(e.loss)]
    return dict(rebound=max(rebounds, key=lambda r: r.rise) if rebounds else None, blowup=_blowup(by_version(points)),
                nonfinite_losses=len(nonfinite), first_nonfinite_step=nonfinite[0] if nonfinite else None,
                level_shifts=shifts, oscillation=curves.oscillation(after_warmup), spikes=len(run.spikes),
                isolated_spikes=isolated, spikes_after_warmup=sum(1 for e in isolated if e.step >= warmup),
                nan_skips=len(run.nan_skips),
                max_consecutive_nan=max([e.consecutive or 1 for e in run.nan_skips] or [0]),
                max_nan_skips=config.get("max_nan_skips", 5),
                first_nan_step=run.nan_skips[0].step if run.nan_skips else None,
                grad_norm_median=sorted(grad_norms)[len(grad_norms) // 2] if grad_norms else None,
                grad_norm_max=max(grad_norms) if grad_norms else None)


def _learning_rate(run: RunLog, config: dict, last_step: int, max_iters: int, tokens_per_iter: int) -> dict:
    warmup = config.get("warmup_iters", 0)
    lrs = [e.lr for e in run.logs if finite(e.lr)]
    return dict(schedule=lr_schedule(config, last_step, max_iters, run.start.lr_segments),
                lr_logged_now=lrs[-1] if lrs else None,
                lr_logged_max=max(lrs or [0.0]) or None, warmup_iters=warmup, warmup_tokens=warmup * tokens_per_iter)


def _speed(run: RunLog, config: dict) -> dict:
    """Throughput and MFU stability (of the steps timed alone), and how precisely the evals measure the val loss."""
    clean = [e for e in run.logs if e.step not in run.time_includes]
    mfus = [e.mfu for e in clean if finite(e.mfu)]
    peak = run.start.peak_flops
    a100 = [v for s, v in sorted(run.printed_mfu.items()) if s not in run.time_includes] if run.printed_mfu else [
        m * peak / NANOGPT_MFU_PEAK for m in mfus] if peak else []
    times = sorted(e.dt_ms for e in clean if finite(e.dt_ms))
    inflated = [(e.step, e.dt_ms, run.time_includes[e.step]) for e in run.logs
                if e.step in run.time_includes and finite(e.dt_ms)]
    batches = (next((e.eval_batches for e in reversed(run.evals) if e.eval_batches), None)
               or config.get("eval_iters"))
    sequences = (batches or 0) * config.get("batch_size", 0)
    return dict(throughput=curves.stability([e.tok_per_s for e in clean]),
                mfu=curves.stability(mfus) if mfus else None, mfu_a100=curves.stability(a100) if a100 else None,
                peak_flops=run.start.peak_flops, trainer=run.trainer,
                step_ms=times[len(times) // 2] if times else None, inflated_steps=inflated, eval_sequences=sequences,
                eval_tokens=sequences * config.get("block_size", 0),
                eval_error=PER_SEQUENCE_LOSS_SPREAD / math.sqrt(sequences) if sequences else None)


def gather_facts(run: RunLog, config: dict, dataset_train_tokens: int | None = None,
                 chars_per_token: float | None = None, identity: tuple = (None, None)) -> Facts:
    """`identity`: the run's (tokenizer name, data family), for the published runs it compares with."""
    size = _size(run, config, dataset_train_tokens, chars_per_token)
    return Facts(**size, **_losses(run, size["since"]),
                 **_instability(run, config, size["versions"], size["since"]),
                 **_learning_rate(run, config, size["last_step"], size["max_iters"], size["tokens_per_iter"]),
                 **_speed(run, config), hellaswag=hellaswag_trend(run),
                 standing=where_it_stands(run, size["params"], identity))
