"""`gptforge bench`: training throughput on synthetic tokens, with compile and warm-up kept out of the timing.

Runs the training loop's own step (train/step.py: the same host reads, prefetch and staging buffers) and
reports ms/iteration, tokens/s, MFU by the honest formula (6 x matmul parameters + 12·L·d·T per token,
against the device's dense bf16 peak), peak memory, and how much of each step went to making data.
Defaults to GPT-2 124M at block 1024, the model of nanoGPT's bench.py. Under torchrun it runs DDP and
reports the total and the share of each process.
"""

from __future__ import annotations

import dataclasses
import resource
import time

import torch

from gptforge.config import Config
from gptforge.data.tokenizers import GPT2_VOCAB
from gptforge.errors import UserError
from gptforge.model.gpt import GPT
from gptforge.train import devices, dist, parallel
from gptforge.train.devices import mfu, peak_flops
from gptforge.train.feed import HostToDevice
from gptforge.train.fit import micro_batching
from gptforge.train.guard import LossGuard
from gptforge.train.loader import StepBatches
from gptforge.train.optim import build_optimizer
from gptforge.train.step import train_step


class SyntheticBatches:
    """Random tokens made on the host, as a loader would read them; the training step copies them to the
    device. `seconds` is the host time spent making them: an upper bound on the device's wait for data
    (the step reads the next micro-batch while the device runs the current forward)."""

    def __init__(self, block: int, vocab: int, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.block, self.vocab = block, vocab
        self.seconds = 0.0

    def next_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        started = time.perf_counter()
        tokens = torch.randint(0, self.vocab, (size, self.block + 1), generator=self.generator)
        batch = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        self.seconds += time.perf_counter() - started
        return batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GPU memory allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process RSS"  # kB on Linux


def bench(cfg: Config, steps: int = 20, warmup: int = 5) -> dict:
    """Train `steps` timed iterations after `warmup` untimed ones with the training loop's own step
    (train/step.py); returns the figures it prints. Under torchrun: DDP over the processes, figures in
    total and per process."""
    if steps <= 0 or warmup < 0:
        raise UserError(f"--steps must be positive and --warmup >= 0 (got {steps} and {warmup})")
    if cfg.train.batch_size == "auto":
        raise UserError("bench measures one micro-batch size: give --batch_size=N (and gradient_accumulation_steps)")
    device = devices.resolve_device(cfg.train.device)
    created = dist.setup(device)
    try:
        return _bench(cfg, device, steps, warmup)
    finally:
        dist.cleanup(created)


def _bench(cfg: Config, device: torch.device, steps: int, warmup: int) -> dict:
    tc, world = cfg.train, dist.world_size()
    dtype, autocast, scaler = devices.set_up_precision(tc.dtype, device, tc.seed, tc.deterministic)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size or GPT2_VOCAB)
    model = GPT(model_cfg)
    accum = micro_batching(cfg, model, device, autocast, fsdp=False, first_step=0).accum  # (checks the split)
    use_compile = devices.use_compile(tc.compile, device)
    step_model, _ = parallel.wrap(model, fsdp=False, device=device, dtype=dtype, compile_model=use_compile)
    optimizer = build_optimizer(model, cfg.optim, device.type)
    data = SyntheticBatches(model_cfg.block_size, model_cfg.vocab_size, tc.seed + dist.rank())
    guard, feed = LossGuard(spike_sigma=0.0, max_nan_skips=steps + warmup, after_step=0), HostToDevice(device)

    def one_step(i: int) -> float:
        return train_step(model, optimizer, StepBatches(data, accum, tc.batch_size), step=i, guard=guard, device=device,
                          step_model=step_model, scaler=scaler, autocast=autocast, grad_clip=cfg.optim.grad_clip,
                          to_device=feed).loss

    dist.print0(f"bench: {model.num_params():,} parameters on {devices.device_name(device)}, "
                f"{str(dtype).replace('torch.', '')}, compile {use_compile}; batch {tc.batch_size} x block "
                f"{model_cfg.block_size} x accumulation {tc.gradient_accumulation_steps}"
                + (f" over {world} processes (DDP)" if world > 1 else ""))
    started = time.perf_counter()
    first_loss = None
    for i in range(warmup):  # includes compilation; reported apart from the timed steps
        loss = one_step(i)
        first_loss = first_loss if first_loss is not None else loss
    _sync(device)
    warmup_seconds = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data.seconds = 0.0
    dist.barrier()
    started = time.perf_counter()
    for i in range(steps):
        last_loss = one_step(warmup + i)
    _sync(device)
    seconds = time.perf_counter() - started
    return _report(cfg, model, device, world, steps, seconds, warmup, warmup_seconds, data.seconds, first_loss,
                   last_loss)


def _report(cfg, model, device, world, steps, seconds, warmup, warmup_seconds, data_seconds, first_loss,
            last_loss) -> dict:
    """The figures of every process, gathered; printed by rank 0: in total and per process."""
    memory, memory_kind = _peak_memory_gib(device)
    mine = {"seconds": seconds, "peak_memory_gib": memory, "data_share": data_seconds / seconds}
    ranks = dist.all_gather_object(mine)
    seconds = max(r["seconds"] for r in ranks)  # the step is as slow as the slowest process
    tok_per_s = cfg.tokens_per_iter * steps / seconds  # all processes together
    peak = peak_flops(devices.device_name(device), cfg.train.peak_flops)
    utilisation = mfu(model.flops_per_token(), tok_per_s / world, peak)  # per process = the job's fraction
    result = {
        "ms_per_iter": 1000 * seconds / steps, "tokens_per_s": tok_per_s, "tokens_per_s_per_process": tok_per_s / world,
        "mfu": utilisation, "peak_memory_gib": max(r["peak_memory_gib"] for r in ranks),
        "peak_memory_gib_per_process": [r["peak_memory_gib"] for r in ranks], "warmup_seconds": warmup_seconds,
        "data_share": max(r["data_share"] for r in ranks), "first_loss": first_loss, "last_loss": last_loss,
        "flops_per_token": model.flops_per_token(), "processes": world,
    }
    per = f" ({tok_per_s / world:,.0f} per process)" if world > 1 else ""
    dist.print0(f"warm-up {warmup} steps (compile included): {warmup_seconds:.1f}s")
    dist.print0(f"{steps} timed steps: {result['ms_per_iter']:.2f} ms/iter, {tok_per_s:,.0f} tokens/s{per}, mfu "
                + (f"{100 * utilisation:.1f}% of {peak / 1e12:.0f} TFLOP/s" if utilisation is not None
                   else "n/a (unknown peak)"))
    dist.print0(f"peak {memory_kind} {result['peak_memory_gib']:.2f} GiB{' (the largest process)' if world > 1 else ''}"
                f"; data wait at most {100 * result['data_share']:.2f}% of step time; loss "
                f"{first_loss if first_loss is not None else float('nan'):.3f} -> {last_loss:.3f}")
    return result


def bench_command(cfg: Config, steps: int = 20, warmup: int = 5) -> None:
    bench(cfg, steps=steps, warmup=warmup)
