"""`gptforge bench`: training throughput on synthetic tokens, with compile and warm-up kept out of the timing.

Reports ms/iteration, tokens/s, MFU by the honest formula (6 x matmul parameters + 12·L·d·T per token,
against the device's dense bf16 peak), peak memory, and how much of each step went to fetching data.
Defaults to GPT-2 124M at block 1024, the model of nanoGPT's bench.py.
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
from gptforge.train import devices
from gptforge.train.devices import mfu, peak_flops
from gptforge.train.optim import build_optimizer


class SyntheticBatches:
    """Random tokens prepared in pinned CPU memory and copied without blocking, as real data would be."""

    def __init__(self, batch: int, block: int, vocab: int, device: torch.device, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.shape, self.vocab, self.device = (batch, block + 1), vocab, device
        self.pin = device.type == "cuda"
        self.seconds = 0.0  # time the training loop waited for data

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        started = time.perf_counter()
        tokens = torch.randint(0, self.vocab, self.shape, generator=self.generator)
        if self.pin:
            tokens = tokens.pin_memory()
        tokens = tokens.to(self.device, non_blocking=True)
        self.seconds += time.perf_counter() - started
        return tokens[:, :-1], tokens[:, 1:]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GPU memory allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process RSS"  # kB on Linux


def bench(cfg: Config, steps: int = 20, warmup: int = 5) -> dict:
    """Train `steps` timed iterations after `warmup` untimed ones; returns the figures it prints."""
    if steps <= 0 or warmup < 0:
        raise UserError(f"--steps must be positive and --warmup >= 0 (got {steps} and {warmup})")
    tc = cfg.train
    device = devices.resolve_device(tc.device)
    dtype = devices.resolve_dtype(tc.dtype, device)
    torch.manual_seed(tc.seed)
    torch.set_float32_matmul_precision("high")
    model_cfg = dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size or GPT2_VOCAB)
    model = GPT(model_cfg).to(device)
    optimizer = build_optimizer(model, cfg.optim, device.type)
    use_compile = tc.compile == "true" or (tc.compile == "auto" and device.type == "cuda")
    step_model = torch.compile(model) if use_compile else model
    autocast = devices.autocast(device, dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    accum = tc.gradient_accumulation_steps
    data = SyntheticBatches(tc.batch_size, model_cfg.block_size, model_cfg.vocab_size, device, tc.seed)

    def one_step() -> torch.Tensor:
        for _ in range(accum):
            x, y = data.next()
            with autocast:
                _, loss = step_model(x, y)
            scaler.scale(loss / accum).backward()
        if cfg.optim.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    print(f"bench: {model.num_params():,} parameters on {devices.device_name(device)}, "
          f"{str(dtype).replace('torch.', '')}, compile {use_compile}; batch {tc.batch_size} x block "
          f"{model_cfg.block_size} x accumulation {accum}")
    started = time.perf_counter()
    first_loss = None
    for _ in range(warmup):  # includes compilation; reported apart from the timed steps
        loss = one_step()
        first_loss = first_loss if first_loss is not None else loss.item()
    _sync(device)
    warmup_seconds = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data.seconds = 0.0
    started = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
    _sync(device)
    seconds = time.perf_counter() - started
    last_loss = loss.item()

    tokens_per_iter = cfg.tokens_per_iter
    tok_per_s = tokens_per_iter * steps / seconds
    peak = peak_flops(devices.device_name(device), tc.peak_flops)
    utilisation = mfu(model.flops_per_token(), tok_per_s, peak)
    memory, memory_kind = _peak_memory_gib(device)
    result = {
        "ms_per_iter": 1000 * seconds / steps, "tokens_per_s": tok_per_s, "mfu": utilisation,
        "peak_memory_gib": memory, "warmup_seconds": warmup_seconds, "data_share": data.seconds / seconds,
        "first_loss": first_loss, "last_loss": last_loss, "flops_per_token": model.flops_per_token(),
    }
    print(f"warm-up {warmup} steps (compile included): {warmup_seconds:.1f}s")
    print(
        f"{steps} timed steps: {result['ms_per_iter']:.2f} ms/iter, {tok_per_s:,.0f} tokens/s, mfu "
        + (
            f"{100 * utilisation:.1f}% of {peak / 1e12:.0f} TFLOP/s"
            if utilisation is not None
            else "n/a (unknown peak)"
        )
    )
    print(f"peak {memory_kind} {memory:.2f} GiB; data wait {100 * result['data_share']:.2f}% of step time; "
          f"loss {first_loss if first_loss is not None else float('nan'):.3f} -> {last_loss:.3f}")
    return result


def bench_command(cfg: Config, steps: int = 20, warmup: int = 5) -> None:
    bench(cfg, steps=steps, warmup=warmup)
