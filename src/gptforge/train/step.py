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
from gptforge.train.feed import HostToDevice
from gptforge.train.fit import OOM, MicroBatching, free_memory, out_of_memory, resplit
from gptforge.train.guard import LossGuard


class Outcome(Enum):
    OK = "ok"  # the optimizer stepped
    SPIKE_KEPT = "spike-kept"  # the loss was a spike; the optimizer stepped anyway (skip_spikes=false)
    SPIKE_SKIPPED = "spike-skipped"  # the loss was a spike; the update was skipped (skip_spikes=true)
    NAN_SKIPPED = "nan-skipped"  # the loss or the gradient norm was not finite: the update was skipped
    FP16_OVERFLOW = "fp16-overflow"  # the fp16 gradients overflowed: the scaler skipped the update
    LEVEL_SHIFT = "level-shift"  # high for several steps in a row: the loss level moved; the optimizer stepped

    @property
    def updated(self) -> bool:
        return self in (Outcome.OK, Outcome.SPIKE_KEPT, Outcome.LEVEL_SHIFT)


@dataclass(frozen=True)
class StepResult:
    step: int  # the step that ran (numbered from 0: the steps done before it)
    loss: float  # the mean over the micro-batches and ranks (the same number on every rank)
    grad_norm: float | None  # before clipping; None when the loss alone skipped the update (NaN, spike skipped)
    outcome: Outcome
    spike: tuple[float, float] | None = None  # (mean, std) of the recent losses when the guard saw a spike or shift
    loss_scale: tuple[float, float] | None = None  # fp16: (before, after) when an overflow lowered the scale
    shrunk: tuple[int, int] | None = None  # (before, after): an out-of-memory error made the micro-batch smaller


def train_step(model: torch.nn.Module, optimizer, batches, *, step: int, guard: LossGuard, device: torch.device,
               step_model: torch.nn.Module | None = None, scaler: torch.amp.GradScaler | None = None,
               autocast=contextlib.nullcontext(), grad_clip: float = 0.0, skip_spikes: bool = False,
               fsdp: bool = False, to_device: HostToDevice | None = None,
               fit: MicroBatching | None = None) -> StepResult:
    """Accumulate the gradients of `batches` (the micro-batches), then update or skip.

    `model` holds the plain parameters (clipped, measured); `step_model` is what forward and backward run
    through (DDP, compiled; default `model`). The learning rate is set by the caller. `batches` is a sized
    iterable of CPU (x, y) pairs, read one at a time: the next is fetched and copied while the device
    works on the current one. With `fit`, an out-of-memory error in the first steps re-splits the same
    sequences into smaller micro-batches (fit.size changes) and runs the step again.

    The host waits for the device once per step: to read the loss (the guard's NaN and spike checks) and
    the gradient norm (a non-finite one skips the update) together."""
    scaler = scaler if scaler is not None and scaler.is_enabled() else None
    to_device = to_device or HostToDevice(device)
    loss_t, shrunk = _accumulate_fitting(step_model or model, optimizer, batches, device, autocast, scaler,
                                         to_device, fit, step)
    norm_t = parallel.gradient_norm(model, fsdp)  # with fp16, of the scaled gradients (a power-of-two multiple)
    scale_t = _scale_of(scaler, norm_t.device) if scaler else None
    # .tolist() is the step's one CPU-GPU sync point: the loss, the norm (and the fp16 scale) read together
    loss, norm, *scale = torch.stack([loss_t.float(), norm_t.float()] + ([scale_t] if scaler else [])).tolist()
    scale = scale[0] if scale else 1.0
    grad_norm = norm / scale  # scales are powers of two: exactly the norm of the unscaled gradients
    verdict = guard.check(step, loss)
    spike = (guard.last_mean, guard.last_std) if verdict in ("spike", "shift") else None
    if verdict == "nan" or (verdict == "spike" and skip_spikes):
        if verdict != "nan":
            guard.stepped()
        optimizer.zero_grad(set_to_none=True)
        return StepResult(step, loss, None, Outcome.NAN_SKIPPED if verdict == "nan" else Outcome.SPIKE_SKIPPED, spike,
                          shrunk=shrunk)
    outcome = Outcome.LEVEL_SHIFT if verdict == "shift" else Outcome.SPIKE_KEPT if spike else Outcome.OK
    loss_scale = None
    if scaler:
        scaler.unscale_(optimizer)  # records whether any gradient is inf/NaN, for update()
    if math.isfinite(grad_norm):
        # of the all-reduced (DDP) or all-reduced shard (FSDP) gradients: the same on every rank
        if grad_clip > 0:  # (0: no clipping, and no pass over the gradients to multiply them by 1)
            parallel.clip_to_norm(model, grad_clip, norm_t / scale_t if scaler else norm_t)
        optimizer.step()
        if scaler:
            scaler.update()
    elif scaler:
        # fp16 overflow: no update, a lower scale; under DDP the norm is of the averaged gradients, so
        # every rank sees the overflow
        scaler.update()
        outcome, loss_scale = Outcome.FP16_OVERFLOW, (scale, scaler.get_scale())
    else:
        outcome = Outcome.NAN_SKIPPED
    if outcome is Outcome.NAN_SKIPPED:
        guard.non_finite(step)  # a finite loss with a non-finite gradient: skipped in a row with NaN losses
    else:
        guard.stepped()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(step, loss, grad_norm, outcome, spike, loss_scale, shrunk)


def _scale_of(scaler, device: torch.device) -> torch.Tensor:
    """The fp16 loss scale as the scaler's own device tensor, so reading it adds no sync of its own."""
    scale = getattr(scaler, "_scale", None)  # (private, stable since torch 1.6; get_scale() would sync)
    return scale if isinstance(scale, torch.Tensor) else torch.full((), scaler.get_scale(), device=device)


def _accumulate_fitting(step_model, optimizer, batches, device, autocast, scaler, to_device, fit, step):
    """(_accumulate's loss, (old, new) micro-batch size or None): on an out-of-memory error in the first
    steps, the step's sequences again in smaller micro-batches."""
    pending, count, shrunk = iter(batches), len(batches), None
    while True:
        taken = []
        try:
            return _accumulate(step_model, pending, count, taken, autocast, scaler, to_device), shrunk
        except OOM:
            if fit is None or not fit.may_retry(step):
                x = taken[0][0] if taken else None
                raise out_of_memory(device, x.size(0) if x is not None else 0, x.size(1) if x is not None else 0,
                                    step) from None
        optimizer.zero_grad(set_to_none=True)
        free_memory(device)
        shrunk = (shrunk[0] if shrunk else fit.size, fit.smaller())
        fit.size = shrunk[1]
        again = resplit(taken + list(pending), fit.size)
        pending, count = iter(again), len(again)
        if hasattr(step_model, "_orig_mod") or hasattr(getattr(step_model, "module", None), "_orig_mod"):
            torch._dynamo.reset()  # compile the new shape as a static graph, not a dynamic-shape one


def _accumulate(step_model, pending, count: int, taken: list, autocast, scaler, to_device) -> torch.Tensor:
    """Forward and backward over `count` micro-batches from `pending` (each CPU batch read is added to
    `taken`); the mean loss over them and over the ranks, left on the device."""
    def fetch():
        batch = next(pending)
        taken.append(batch)
        return to_device(*batch)

    loss_sum = None
    x, y = fetch()
    for i in range(count):
        with parallel.gradient_sync(step_model, last_micro_step=i == count - 1):
            with autocast:
                _, loss = step_model(x, y)
            loss = loss / count
            if i + 1 < count:
                x, y = fetch()  # prefetch the next batch while the device works on this forward (nanoGPT's way)
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            (scaler.scale(loss) if scaler else loss).backward()
    # the same value on every rank, so every guard decision is the same on every rank
    return dist.all_reduce_mean(loss_sum)


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
