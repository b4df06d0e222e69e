"""What the loop tells the user (console) and the run's records (metrics.jsonl) about a launch and its
steps: the start report, a step that went wrong (NaN, spike, fp16 overflow), the stop on repeated NaNs,
and the log record with its nanoGPT-shaped line. Only rank 0 prints and writes (the others pass no log
and a disabled console).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gptforge.config import Config
from gptforge.data.dataset import Dataset
from gptforge.train import devices
from gptforge.train.console import Console, iter_line
from gptforge.train.devices import mfu, peak_flops
from gptforge.train.events import LevelShift, Log, MetricsLog, NanSkip, Spike, Start
from gptforge.train.guard import MAX_SPIKES_IN_A_ROW, LossGuard
from gptforge.train.step import Outcome, StepResult


def start_record(cfg: Config, dataset: Dataset, device: torch.device, world: int, fsdp: bool, *, params: int,
                 params_non_embedding: int, flops_per_token: float, resumed_from: int | None, step: int,
                 lr_segments: list | None = None) -> Start:
    """The launch as metrics.jsonl keeps it: the model's size, the budget, the dataset, the devices."""
    tokens_per_iter, max_iters = cfg.tokens_per_iter, cfg.train.max_iters
    planned = max_iters * tokens_per_iter
    name = devices.device_name(device)
    return Start(step=step, config=cfg.flat(), params=params, params_non_embedding=params_non_embedding,
                 tokens_per_iter=tokens_per_iter, max_iters=max_iters, planned_tokens=planned,
                 tokens_per_param=planned / params, dataset_train_tokens=dataset.train_tokens,
                 dataset_val_tokens=dataset.val_tokens, dataset_version=dataset.version,
                 planned_epochs=planned / dataset.train_tokens, device=device.type, device_name=name,
                 world_size=world, fsdp=fsdp, peak_flops=peak_flops(name, cfg.train.peak_flops),
                 flops_per_token=flops_per_token, resumed_from=resumed_from, lr_segments=lr_segments)


def start_lines(start: Start, cfg: Config, dtype: torch.dtype, compiled: bool, grew: dict | None) -> list[str]:
    """The console's summary of a launch."""
    tc, world = cfg.train, start.world_size
    parallelism = ", FSDP (parameters, gradients and optimizer state sharded)" if start.fsdp else \
        ", DDP" if world > 1 else ""
    lines = [f"device {start.device_name}, {str(dtype).replace('torch.', '')}, compile {compiled}, {world} process(es)"
             + parallelism]
    lines.append(mfu_basis(start, tc.peak_flops))
    if tc.fsdp and not start.fsdp:
        lines.append("fsdp=true with one process: nothing to shard, training unsharded")
    if world > 1:
        lines.append(f"gradient_accumulation_steps {tc.gradient_accumulation_steps} is global: "
                     f"{tc.gradient_accumulation_steps // world} micro-batch(es) of {tc.batch_size} per process per "
                     "step")
    lines.append(f"parameters {start.params:,} total, {start.params_non_embedding:,} non-embedding; "
                 f"{start.flops_per_token:,.0f} FLOPs/token")
    lines.append(f"tokens per iteration {start.tokens_per_iter:,} ({tc.batch_size} x {cfg.model.block_size} x "
                 f"{tc.gradient_accumulation_steps}); max_iters {start.max_iters:,}; planned tokens "
                 f"{start.planned_tokens:,} ({start.tokens_per_param:.1f} tokens/param); {start.planned_epochs:.2f} "
                 f"epochs over {start.dataset_train_tokens:,} train tokens")
    if grew:
        lines.append(f"the dataset grew since the checkpoint: {grew['old_train_tokens']:,} -> "
                     f"{grew['new_train_tokens']:,} train tokens (version {grew['version']}); training continues on "
                     "the larger dataset")
    return lines


def mfu_basis(start: Start, override: float = 0.0) -> str:
    """Which peak the log line's mfu is against, and how it compares with nanoGPT's figure."""
    if not start.peak_flops:
        return (f"mfu: n/a, no peak FLOP/s known for {start.device_name} (set peak_flops to measure against one)")
    source = "the peak_flops setting" if override else "its dense bf16 peak (train/devices.py)"
    return (f"mfu: against {start.peak_flops / 1e12:g} TFLOPS per GPU, {source}; nanoGPT's mfu is against an A100's "
            f"312 whatever the GPU: x {start.peak_flops / devices.NANOGPT_MFU_PEAK:.2f} gives that figure")


def report_step(result: StepResult, guard: LossGuard, skip_spikes: bool, console: Console,
                log: MetricsLog | None) -> None:
    """Say what went wrong in the step, naming that step (result.step): an out-of-memory retry, an fp16
    overflow, a non-finite loss or gradient, a loss spike. A step that went well says nothing here."""
    step = result.step
    if result.shrunk:
        console.print(f"step {step}: out of memory at a micro-batch of {result.shrunk[0]} sequences; continuing with "
                      f"{result.shrunk[1]} and more accumulation steps (the same sequences per step)")
    if result.loss_scale:
        console.print(f"step {step}: fp16 overflow, step skipped; loss scale {result.loss_scale[0]:g} -> "
                      f"{result.loss_scale[1]:g}")
    if result.outcome is Outcome.NAN_SKIPPED:
        what = f"non-finite loss ({result.loss})" if not math.isfinite(result.loss) else \
            f"non-finite gradient norm ({result.grad_norm})"
        console.print(f"step {step}: {what}, step skipped ({guard.consecutive} in a row, {guard.nan_skips} in total)")
        if log:
            log.write(NanSkip(step=step, count=guard.nan_skips, consecutive=guard.consecutive))
    elif result.outcome is Outcome.LEVEL_SHIFT:
        mean, _ = result.spike
        console.print(f"step {step}: the loss stayed high for {MAX_SPIKES_IN_A_ROW + 1} steps in a row "
                      f"({result.loss:.4f}, {mean:.4f} before): the level moved (new data or another learning rate?), "
                      f"not a spike; step kept, and spikes are judged against the new level {guard.level:.4f} from "
                      "here")
        if log:
            log.write(LevelShift(step=step, loss=result.loss, mean=mean, level=guard.level))
    elif result.spike:
        mean, std = result.spike
        action = "optimizer step skipped" if skip_spikes else "kept (set --skip_spikes=true to skip)"
        console.print(f"step {step}: loss spike {result.loss:.4f} vs recent mean {mean:.4f} ± {std:.4f}; {action}")
        if log:
            log.write(Spike(step=step, loss=result.loss, mean=mean, std=std))


def nan_stop_message(steps_done: int, guard: LossGuard, learning_rate: float, checkpoint: Path) -> str:
    """`checkpoint`: the one just saved (its weights are finite: a save refuses any others)."""
    return (f"stopped at step {steps_done}: {guard.consecutive} steps in a row skipped for a non-finite loss or "
            f"gradient. Likely causes: the learning rate is too high (now {learning_rate:g}; try half), fp16 "
            "overflow (use --dtype=bfloat16 or float32), no gradient clipping (--grad_clip=1.0), or bad data. The "
            f"parameters from before the bad steps are in {checkpoint}; resume with --init_from=resume after the "
            "change")


def log_step(result: StepResult, start: Start, steps_done: int, tokens_seen: int, epoch: float, lr: float,
             dt: float, gpu: bool) -> tuple[Log, str]:
    """The log record of a step and its console line (nanoGPT's `iter` line; with several processes, each
    one's share after it)."""
    world, flops_per_token = start.world_size, start.flops_per_token
    tok_per_s = start.tokens_per_iter / dt  # all processes together
    per_gpu = tok_per_s / world
    # the job's model FLOP/s over the job's peak: the same fraction as each GPU's, on average
    fraction = mfu(flops_per_token, tok_per_s, start.peak_flops * world if start.peak_flops else None)
    line = iter_line(steps_done, result.loss, dt * 1000, fraction, tok_per_s, lr)
    if world > 1:
        unit = "GPU" if gpu else "process"
        line += (f" | {world} processes: tok/s is the total; per {unit} {per_gpu:,.0f} tok/s, "
                 f"{flops_per_token * per_gpu / 1e12:.3g} TFLOP/s; mfu is per {unit}")
    record = Log(step=steps_done, tokens=tokens_seen, epoch=epoch, loss=result.loss, lr=lr, dt_ms=round(dt * 1000, 3),
                 tok_per_s=round(tok_per_s, 1), mfu=fraction, grad_norm=result.grad_norm,
                 tok_per_s_per_gpu=round(per_gpu, 1), tflops_per_gpu=round(flops_per_token * per_gpu / 1e12, 4))
    return record, line
