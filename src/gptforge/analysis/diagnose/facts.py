"""The numbers a diagnosis rests on, gathered from a run's records (metrics.jsonl), its resolved config and
the dataset's size: one typed `Facts` that the findings (findings.py) and the report (report.py) read.
Pure, so each classic case is tested on a synthetic log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gptforge.analysis import curves
from gptforge.analysis.diagnose.growth import Growth, VersionSpan, growths, version_spans
from gptforge.analysis.runlog import RunLog, finite

PER_SEQUENCE_LOSS_SPREAD = 0.4  # typical std of a sequence's mean loss on web text (nats), for eval noise


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
    planned_epochs: float | None
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
    world_size: int
    skipped_lines: int
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
    train_trend: curves.Trend | None
    # instability
    rebound: curves.Rebound | None
    oscillation: float
    spikes: int
    spikes_after_warmup: int
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
    mfu: curves.Stability | None
    eval_sequences: int
    eval_tokens: int
    eval_error: float | None  # standard error of the val loss from the choice of sequences
    # the best val since the current dataset version (None without evals)
    val_min: float | None = None
    val_min_step: int | None = None
    train_at_val_min: float | None = None


def _points(events: list, key: str, x: str = "step") -> list[tuple[float, float]]:
    pairs = [(getattr(e, x), getattr(e, key)) for e in events]
    return [(float(a), float(b)) for a, b in pairs if finite(a) and finite(b)]


_OPTIM_KEYS = ("optimizer", "learning_rate", "min_lr", "schedule", "warmup_iters", "lr_decay_iters", "decay_fraction",
               "muon_lr")


def lr_schedule(config: dict, step: int, max_iters: int) -> Schedule | None:
    try:
        from gptforge.config import build_config
        from gptforge.train.optim import lr_multiplier

        optim = build_config({k: v for k, v in config.items() if k in _OPTIM_KEYS}).optim
    except Exception:  # an old or foreign config: fall back to the logged values only
        return None
    mult = lr_multiplier(min(step, max_iters), optim, max_iters)
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
                dataset_train_tokens=data_tokens, epochs=epochs, planned_epochs=start.planned_epochs, params=params,
                params_non_embedding=start.params_non_embedding,
                tokens_per_param=tokens_seen / params if params else None, chars_per_token=chars_per_token,
                end_reason=run.end_reason, progress=last_step / max_iters if max_iters else None,
                versions=spans, growths=growths(run, spans),
                # comparisons on the val curve stay after the last change of dataset (the val split may differ)
                since=spans[-1].start_step if len(spans) > 1 else None,
                device=start.device, device_name=start.device_name, world_size=start.world_size or 1,
                skipped_lines=run.skipped_lines, checkpoint_steps=[e.step for e in run.checkpoints])


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
    same_val = [p for p in val_pts if since is None or p[0] > since] or val_pts
    if val_pts:
        i = min(range(len(same_val)), key=lambda k: same_val[k][1])
        out.update(val_min=same_val[i][1], val_min_step=int(same_val[i][0]),
                   train_at_val_min=next((y for x, y in eval_train_pts if x == same_val[i][0]), None))
    gaps = [(x, v - t) for (x, v), (x2, t) in zip(val_pts, eval_train_pts) if x == x2 and (since is None or x > since)]
    # the curve whose plateau matters: val (what generalises), else the logged train loss
    curve = "val" if len(val_pts) >= curves.MIN_POINTS else "train"
    out.update(gap_trend=curves.trend(gaps) if len(gaps) >= 3 else None, curve=curve,
               trend=curves.trend(val_pts if curve == "val" else train_pts, since=since),
               train_trend=curves.trend(train_pts, since=since) if len(train_pts) >= 3 else None)
    return out


def _instability(run: RunLog, config: dict, spans: list[VersionSpan], since: int | None) -> dict:
    """Climbs, swings, spikes, non-finite losses and gradient norms, after warmup."""
    warmup = config.get("warmup_iters", 0)
    after_warmup = [p for p in _points(run.logs, "loss") if p[0] > warmup]
    # a jump where new data came in is not instability: look for climbs within each dataset version
    pieces = (
        [[p for p in after_warmup if s.start_step < p[0] <= s.end_step] for s in spans] if since else [after_warmup]
    )
    rebounds = [r for r in map(curves.worst_rebound, pieces) if r is not None]
    grad_norms = [e.grad_norm for e in run.logs if finite(e.grad_norm)]
    return dict(rebound=max(rebounds, key=lambda r: r.rise) if rebounds else None,
                oscillation=curves.oscillation(after_warmup), spikes=len(run.spikes),
                spikes_after_warmup=sum(1 for e in run.spikes if e.step >= warmup), nan_skips=len(run.nan_skips),
                max_consecutive_nan=max([e.consecutive or 1 for e in run.nan_skips] or [0]),
                max_nan_skips=config.get("max_nan_skips", 5),
                first_nan_step=run.nan_skips[0].step if run.nan_skips else None,
                grad_norm_median=sorted(grad_norms)[len(grad_norms) // 2] if grad_norms else None,
                grad_norm_max=max(grad_norms) if grad_norms else None)


def _learning_rate(run: RunLog, config: dict, last_step: int, max_iters: int, tokens_per_iter: int) -> dict:
    warmup = config.get("warmup_iters", 0)
    lrs = [e.lr for e in run.logs if finite(e.lr)]
    return dict(schedule=lr_schedule(config, last_step, max_iters), lr_logged_now=lrs[-1] if lrs else None,
                lr_logged_max=max(lrs or [0.0]) or None, warmup_iters=warmup, warmup_tokens=warmup * tokens_per_iter)


def _speed(run: RunLog, config: dict) -> dict:
    """Throughput and MFU stability, and how precisely the evals measure the val loss."""
    mfus = [e.mfu for e in run.logs if finite(e.mfu)]
    batches = (next((e.eval_batches for e in reversed(run.evals) if e.eval_batches), None)
               or config.get("eval_iters"))
    sequences = (batches or 0) * config.get("batch_size", 0)
    return dict(throughput=curves.stability([e.tok_per_s for e in run.logs]),
                mfu=curves.stability(mfus) if mfus else None, eval_sequences=sequences,
                eval_tokens=sequences * config.get("block_size", 0),
                eval_error=PER_SEQUENCE_LOSS_SPREAD / math.sqrt(sequences) if sequences else None)


def gather_facts(run: RunLog, config: dict, dataset_train_tokens: int | None = None,
                 chars_per_token: float | None = None) -> Facts:
    size = _size(run, config, dataset_train_tokens, chars_per_token)
    return Facts(**size, **_losses(run, size["since"]),
                 **_instability(run, config, size["versions"], size["since"]),
                 **_learning_rate(run, config, size["last_step"], size["max_iters"], size["tokens_per_iter"]),
                 **_speed(run, config))
