"""What a resume finds changed since its checkpoint, and what follows from it.

- The dataset, by content (data/identity.py), whatever its folder is called: the same one or a grown version
  of it continues the data order; another one is refused, naming what differs, unless data_changed=ok (then
  training goes on over it from a fresh data order). Checkpoints written before the identity was kept are
  judged by their shard names and sizes, as then.
- The learning rate: a resume with another learning_rate or min_lr begins a new schedule segment
  (optim.Segment: a short warmup from the LR now to the new peak, then the decay over the steps left), or,
  with lr_schedule_on_resume=continue, keeps its place in the old schedule at the new values.
- The loss guard: its window restarts when the data, the learning rate or the loss itself (dropout, label
  smoothing, tokens per step) changed, so the new level is not taken for a run of spikes; otherwise it
  continues as saved and the resume stays exact.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gptforge.config import Config, OptimConfig, build_config
from gptforge.data.dataset import Dataset
from gptforge.data.identity import compare_identity
from gptforge.errors import UserError
from gptforge.train.guard import MIN_WINDOW, LossGuard
from gptforge.train.loader import shards_mismatch
from gptforge.train.optim import Schedule, Segment, lr_at, new_segment
from gptforge.train.state import TrainState

LOSS_KEYS = ("dropout", "label_smoothing")  # keys that move the loss itself (besides tokens per step)
_OPTIM_KEYS = {f.name for f in dataclasses.fields(OptimConfig)}


@dataclass(frozen=True)
class DataCheck:
    relation: str  # "same", "grown", "other" (allowed by data_changed=ok), "unknown" (no identity in the checkpoint)
    detail: str

    @property
    def fresh_order(self) -> bool:
        return self.relation == "other"


def check_dataset(saved: TrainState, dataset: Dataset, data_changed: str) -> DataCheck:
    """How `dataset` relates to the one the checkpoint was trained on; a UserError for another dataset unless
    data_changed is "ok"."""
    entry = saved.dataset or {}
    if entry.get("identity"):
        check = compare_identity(entry["identity"], dataset.identity)
        relation, detail = check.relation, check.detail
    elif saved.loader and (problem := shards_mismatch(saved.loader, dataset)):
        relation, detail = "other", problem
    else:
        return DataCheck("unknown", "")
    if relation != "other" or data_changed == "ok":
        return DataCheck(relation, detail)
    was = f" ({entry['path']})" if entry.get("path") else ""
    raise UserError(f"cannot resume on {dataset.path}: it is neither the dataset the checkpoint was trained on{was} "
                    f"nor a grown version of it ({detail}); resume with that --data, or pass --data_changed=ok to "
                    "train on this one from a fresh data order")


def _optim_of(config: dict) -> OptimConfig | None:
    """The optimizer/schedule config a checkpoint was trained with (None if this version cannot read it)."""
    try:
        return build_config({k: v for k, v in config.items() if k in _OPTIM_KEYS and v is not None}).optim
    except UserError:
        return None


def _tokens_per_step(config: dict) -> int | None:
    try:
        return int(config["batch_size"]) * int(config["block_size"]) * int(config["gradient_accumulation_steps"])
    except (KeyError, TypeError, ValueError):
        return None


def resumed_schedule(saved: TrainState | None, cfg: Config, max_iters: int, step: int, guard: LossGuard,
                     data: DataCheck | None, grew: bool) -> tuple[Schedule, list[str]]:
    """The run's LR schedule (with a new segment when this resume changes the learning rate) and the console's
    notes; restarts the guard's window when the loss level may have moved (`grew`: the loader found new data)."""
    if saved is None:
        return Schedule(cfg.optim, max_iters), []
    segments = [Segment.from_dict(d) for d in saved.lr_segments or []]
    schedule, notes = Schedule(cfg.optim, max_iters, segments), []
    before = _optim_of(saved.config)
    before_max = int(saved.config.get("max_iters") or max_iters)
    lr_then = lr_at(step, before, before_max, segments) if before else schedule.lr(step)
    peak_changed = before is not None and (before.learning_rate, before.min_lr) != (cfg.optim.learning_rate,
                                                                                    cfg.optim.min_lr)
    if peak_changed and cfg.optim.lr_schedule_on_resume == "restart":
        schedule.segments = segments + [new_segment(step, before, before_max, segments, cfg.optim, max_iters)]
    elif peak_changed:
        notes.append(f"learning_rate {before.learning_rate:g} -> {cfg.optim.learning_rate:g} with "
                     "lr_schedule_on_resume=continue: the LR keeps this step's place in the old schedule")
    if data and data.fresh_order:
        notes.append(f"training continues on another dataset ({data.detail}), as data_changed=ok allows: the data "
                     "order starts over at epoch 0 of it")
    reason = _level_moved(saved.config, cfg, data, grew, peak_changed, lr_then, schedule.lr(step))
    if reason:
        guard.restart()
        notes.append(f"the loss guard's window restarts ({reason}): no spike is called until it holds {MIN_WINDOW} "
                     "losses at the new level")
    return schedule, notes


def _level_moved(saved_config: dict, cfg: Config, data: DataCheck | None, grew: bool, peak_changed: bool,
                 lr_then: float, lr_now: float) -> str | None:
    if data and data.fresh_order:
        return "another dataset"
    if grew or (data and data.relation == "grown"):
        return "the data grew"
    if peak_changed or not math.isclose(lr_then, lr_now, rel_tol=1e-9, abs_tol=0.0):
        return "the learning rate changed"
    now = cfg.flat()
    changed = [k for k in LOSS_KEYS if saved_config.get(k, now[k]) != now[k]]
    if _tokens_per_step(saved_config) not in (None, cfg.tokens_per_iter):
        changed.append("tokens per step")
    return ", ".join(changed) + " changed" if changed else None
