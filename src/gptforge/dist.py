"""Process and device helpers that work the same with and without torch.distributed initialised.

The training loop asks these instead of torch.distributed directly, so a single process (tests, the
demo, one GPU) and a torchrun job go through the same code: rank 0 prints and writes, everyone trains.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.distributed as dist

from gptforge.errors import UserError


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all processes (the value itself in a single process)."""
    if not is_initialized() or world_size() == 1:
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if not is_initialized() or world_size() == 1:
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when `flag` is true on any rank (e.g. a stop signal seen by one process)."""
    if not is_initialized() or world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: cuda (this process's local rank), then mps, then cpu; an unavailable choice is a UserError."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    kind = name.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r}: CUDA is not available on this machine (use --device=cpu or auto)")
        if name == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    elif kind == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UserError(f"device {name!r}: MPS is not available on this machine (use --device=cpu or auto)")
    elif kind != "cpu":
        raise UserError(f"device {name!r} is not one of auto, cuda, cuda:N, mps, cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPUs that have it, fp16 (with a GradScaler) on older ones, fp32 on CPU and MPS."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # CPU autocast is slower than fp32 for small models; MPS autocast is incomplete
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def rng_state(device: torch.device) -> dict:
    """Every RNG the training step draws from (dropout), as tensors safe for torch.load(weights_only=True)."""
    state = {"cpu_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        state["mps_rng"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    if device.type == "mps" and "mps_rng" in state:
        torch.mps.set_rng_state(state["mps_rng"])
