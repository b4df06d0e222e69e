"""One optimizer step and one evaluation, as plain functions of what they use.

`train_step` runs the micro-batches (forward, backward, gradients accumulated), asks the loss guard about
the loss, and updates the parameters or skips the update; it returns a `StepResult` that says which, for
the loop to report. Under DDP/FSDP every decision is taken from all-reduced values (the mean loss, the
global gradient norm), so all ranks take the same one.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from enum import Enum

import torch

from gptforge.train import dist, parallel
from gptforge.train.guard import LossGuard


class Outcome(Enum):
    OK = "ok"  # the optimizer stepped
    SPIKE_KEPT = "spike-kept"  # the loss was a spike; the optimizer stepped anyway (skip_spikes=false)
    SPIKE_SKIPPED = "spike-skipped"  # the loss was a spike; the update was skipped (skip_spikes=true)
    NAN_SKIPPED = "nan-skipped"  # the loss or the gradient norm was not finite: the update was skipped
    FP16_OVERFLOW = "fp16-overflow"  # the fp16 gradients overflowed: the scaler skipped the update

    @property
    def updated(self) -> bool:
        return self in (Outcome.OK, Outcome.SPIKE_KEPT)


@dataclass(frozen=True)
class StepResult:
    step: int  # the step that ran (numbered from 0: the steps done before it)
    loss: float  # the mean over the micro-batches and ranks (the same number on every rank)
    grad_norm: float | None  # before clipping; None when the loss alone skipped the update (NaN, spike skipped)
    outcome: Outcome
    spike: tuple[float, float] | None = None  # (mean, std) of the recent losses when the guard saw a spike
    loss_scale: tuple[float, float] | None = None  # fp16: (before, after) when an overflow lowered the scale


def train_step(model: torch.nn.Module, optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]], *, step: int,
               guard: LossGuard, device: torch.device, step_model: torch.nn.Module | None = None,
               scaler: torch.amp.GradScaler | None = None, autocast=contextlib.nullcontext(), grad_clip: float = 0.0,
               skip_spikes: bool = False, fsdp: bool = False) -> StepResult:
    """Accumulate the gradients of `batches` (the micro-batches), then update or skip.

    `model` holds the plain parameters (clipped, measured); `step_model` is what forward and backward run
    through (DDP, compiled; default `model`). The learning rate is set by the caller."""
    scaler = scaler if scaler is not None and scaler.is_enabled() else None
    loss = _accumulate(step_model or model, batches, device, autocast, scaler)
    verdict = guard.check(step, loss)
    spike = (guard.last_mean, guard.last_std) if verdict == "spike" else None
    if verdict == "nan" or (spike and skip_spikes):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(step, loss, None, Outcome.NAN_SKIPPED if verdict == "nan" else Outcome.SPIKE_SKIPPED, spike)
    if scaler:
        scaler.unscale_(optimizer)
    # of the all-reduced (DDP) or all-reduced shard (FSDP) gradients: the same on every rank
    grad_norm = parallel.clip_gradients(model, grad_clip if grad_clip > 0 else math.inf, fsdp)
    outcome, loss_scale = Outcome.SPIKE_KEPT if spike else Outcome.OK, None
    if scaler:
        # fp16: the scaler skips steps with inf gradients and lowers the scale; under DDP the gradients it
        # checks are already averaged over ranks, so an overflow on one rank is seen by all
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() < before:
            outcome, loss_scale = Outcome.FP16_OVERFLOW, (before, scaler.get_scale())
    elif math.isfinite(grad_norm):
        optimizer.step()
    else:
        guard.non_finite(step)
        outcome = Outcome.NAN_SKIPPED
    optimizer.zero_grad(set_to_none=True)
    return StepResult(step, loss, grad_norm, outcome, spike, loss_scale)


def _accumulate(step_model, batches, device: torch.device, autocast, scaler) -> float:
    """Forward and backward over the micro-batches; the mean loss over them and over the ranks."""
    accum = len(batches)
    loss_sum = torch.zeros((), device=device)
    for i, (x, y) in enumerate(batches):
        if device.type == "cuda":  # pinned memory lets the copy overlap the previous micro-step
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        else:
            x, y = x.to(device), y.to(device)
        with parallel.gradient_sync(step_model, last_micro_step=i == accum - 1):
            with autocast:
                _, loss = step_model(x, y)
            loss = loss / accum
            loss_sum += loss.detach()
            (scaler.scale(loss) if scaler else loss).backward()
    # the same value on every rank, so every guard decision is the same on every rank
    return dist.all_reduce_mean(loss_sum).item()  # .item() is a CPU-GPU sync point


def evaluate(model: torch.nn.Module, splits: list, device: torch.device, eval_model: torch.nn.Module | None = None,
             autocast=contextlib.nullcontext()) -> list[float]:
    """The mean loss over each split's fixed batches (ValBatches): each rank evaluates its share and the sums
    are all-reduced. `model` is switched to eval mode and back; `eval_model` (default `model`) runs them."""
    model.eval()
    losses = []
    with torch.no_grad():
        for batches in splits:
            total = torch.zeros(2, device=device)
            for x, y, counted in batches.lockstep():
                with autocast:
                    _, loss = (eval_model or model)(x.to(device), y.to(device))
                if counted:
                    total += torch.stack([loss.detach().float(), torch.ones((), device=device)])
            total = dist.all_reduce_sum(total)
            losses.append((total[0] / total[1]).item())
    model.train()
    return losses
