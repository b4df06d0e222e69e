"""How many sequences go into one micro-batch: `batch_size = "auto"` and the out-of-memory retry.

An optimizer step is S = tokens_per_iter / block_size sequences, split into micro-batches of b sequences
and S / b accumulation steps (divisible by the processes). The loader hands out blocks in an order that
does not depend on b (loader.py), so every split trains each step on the same blocks, and with dropout
off the losses agree to rounding: the micro-batch is a speed and memory choice, never a training choice.

auto: before training (and before compile and DDP wrap the model), one forward and backward per candidate
b, largest first, with the memory of the optimizer's future state held aside; the first that runs wins.
On CUDA an allocation that does not fit raises torch.OutOfMemoryError, which is caught and the next size
tried. On CPU and MPS running out of memory kills the process instead of raising, so there a candidate
is tried only when an estimate (activations measured at 1 and 2 sequences) fits the available RAM.
The processes of a torchrun job take the smallest of their choices.

Retry: an out-of-memory error in the forward or backward of the first OOM_RETRY_STEPS steps of a launch
(one process) moves to the next smaller split and runs the step again on the same sequences: nothing was
updated yet. The compiled graph (sized for the first shape) is recompiled once for the new one.
"""

from __future__ import annotations

import dataclasses
import gc
import os

import torch

from gptforge.config import Config
from gptforge.errors import UserError
from gptforge.train import dist

OOM_RETRY_STEPS = 10  # the first steps of a launch: the optimizer's state and the compiled graph appear in them
OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError since 2.5
OPTIMIZER_BYTES_PER_PARAM = 8  # AdamW's two fp32 moments (Muon keeps one for its matrices: less)


def batch_splits(sequences: int, processes: int) -> list[tuple[int, int]]:
    """(micro-batch per process, global accumulation steps) pairs that keep `sequences` per step,
    largest micro-batch first; accumulation must divide evenly over the processes."""
    out = []
    for micro in range(sequences, 0, -1):
        if sequences % micro == 0 and (sequences // micro) % processes == 0:
            out.append((micro, sequences // micro))
    return out


@dataclasses.dataclass
class MicroBatching:
    """This launch's split of a step: `size` sequences per micro-batch, `accum` micro-batches per process."""

    sequences: int  # per optimizer step, all processes together
    world: int
    size: int
    retry_until: int = 0  # steps before this one may shrink the split on an out-of-memory error
    note: str = ""  # what the start report says about the choice

    @property
    def accum(self) -> int:
        """Micro-batches per process per step."""
        return self.sequences // self.size // self.world

    def smaller(self) -> int | None:
        sizes = [b for b, _ in batch_splits(self.sequences, self.world) if b < self.size]
        return sizes[0] if sizes else None

    def may_retry(self, step: int) -> bool:
        return self.world == 1 and step < self.retry_until and self.smaller() is not None

    def applied(self, cfg: Config) -> Config:
        """`cfg` with the chosen split written into batch_size and gradient_accumulation_steps."""
        train = dataclasses.replace(cfg.train, batch_size=self.size,
                                    gradient_accumulation_steps=self.sequences // self.size)
        return dataclasses.replace(cfg, train=train)


def micro_batching(cfg: Config, model: torch.nn.Module, device: torch.device, autocast, fsdp: bool,
                   first_step: int) -> MicroBatching:
    """The split this launch uses: the configured one, or with batch_size "auto" the largest that fits."""
    tc, block, world = cfg.train, cfg.model.block_size, dist.world_size()
    sequences = cfg.tokens_per_iter // block
    retry_until = first_step + OOM_RETRY_STEPS if world == 1 else 0
    if tc.batch_size != "auto":
        if tc.gradient_accumulation_steps % world:
            raise UserError(f"gradient_accumulation_steps ({tc.gradient_accumulation_steps}) must be divisible by the "
                            f"number of processes ({world})")
        return MicroBatching(sequences, world, tc.batch_size, retry_until)
    if fsdp:
        raise UserError('batch_size = "auto" does not work with fsdp=true (every process would have to probe in '
                        "step); set batch_size (`gptforge plan --gpu NAME --processes N` suggests one)")
    sizes = [b for b, _ in batch_splits(sequences, world)]
    if not sizes:
        raise UserError(f"tokens_per_iter {cfg.tokens_per_iter} is {sequences} sequences of {block}, which cannot be "
                        f"split evenly over {world} processes")
    model.to(device)
    chosen, tried = probe(model, sizes, block, device, autocast)
    chosen = min(dist.all_gather_object(chosen))  # every process the same split: the smallest choice
    fit = MicroBatching(sequences, world, chosen, retry_until)
    over = f"; too large: {', '.join(map(str, tried))}" if tried else ""
    fit.note = (f'batch_size "auto": micro-batch {chosen} x {fit.accum} accumulation step(s) per process '
                f"({sequences} sequences of {block} per step{over})")
    return fit


def probe(model: torch.nn.Module, sizes: list[int], block: int, device: torch.device, autocast) -> tuple[int, list]:
    """The first of `sizes` (largest first) whose forward and backward fit on `device`, and the sizes that
    did not. The model's random streams and gradients are as before."""
    reserve = OPTIMIZER_BYTES_PER_PARAM * sum(p.numel() for p in model.parameters())
    tried = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        budget = None if device.type == "cuda" else _host_budget(model, block, device, autocast, reserve)
        for b in sizes:
            if budget is not None and not budget(b):
                tried.append(b)
                continue
            fits = _try(model, b, block, device, autocast, reserve)
            model.zero_grad(set_to_none=True)
            free_memory(device)
            if fits:
                return b, tried
            tried.append(b)
    raise UserError(f'batch_size "auto": not even one sequence of block_size {block} fits in the memory of {device} '
                    "(with the optimizer's state): use a shorter block_size, a smaller model, or fsdp over GPUs")


def _try(model, b: int, block: int, device: torch.device, autocast, reserve: int) -> bool:
    try:
        held = torch.empty(reserve, dtype=torch.uint8, device=device) if device.type == "cuda" else None
        x = torch.zeros((b, block), dtype=torch.long, device=device)
        with autocast:
            _, loss = model(x, x)
        loss.backward()
        del held, x, loss
        return True
    except OOM:
        return False  # (the tensors of the failed attempt are freed when the exception is)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _saved_bytes(model, b: int, block: int, device, autocast) -> int:
    """Bytes autograd keeps for backward in one forward of b sequences."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = torch.zeros((b, block), dtype=torch.long, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(x, x)
    return total


def _host_budget(model, block: int, device, autocast, reserve: int):
    """Without an out-of-memory error to catch: whether b sequences fit the available RAM, estimated as
    weights and gradients, the optimizer's state, and twice the activations (backward holds their
    gradients beside them), the per-sequence activations measured as the difference of 1 and 2."""
    one, two = (_saved_bytes(model, b, block, device, autocast) for b in (1, 2))
    per_sequence = max(two - one, 1)
    fixed = 8 * sum(p.numel() for p in model.parameters()) + reserve + max(2 * one - two, 0)
    available = available_ram()
    return lambda b: fixed + 2 * b * per_sequence <= available


def available_ram() -> int:
    """MemAvailable of /proc/meminfo; elsewhere half the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def resplit(batches: list[tuple[torch.Tensor, torch.Tensor]], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same sequences, in the same order, as micro-batches of `size`."""
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    return list(zip(x.split(size), y.split(size)))


def out_of_memory(device: torch.device, size: int, block: int, step: int) -> UserError:
    return UserError(f"out of memory on {device} in step {step} at a micro-batch of {size} sequences x {block} tokens: "
                     'use --batch_size=auto with --tokens_per_iter, or a smaller batch_size with more '
                     "gradient_accumulation_steps (`gptforge plan --gpu NAME` sizes it)")
