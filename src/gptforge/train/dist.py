"""Process and device helpers that work the same with and without torch.distributed initialised.

The training loop asks these instead of torch.distributed directly, so a single process (tests, the
demo, one GPU) and a torchrun job go through the same code: rank 0 prints and writes, everyone trains.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) `setup` joins the process group:
nccl for CUDA, gloo for CPU. Failure design: torchrun watches its workers and, when one exits with an
error or is killed, stops the others (SIGTERM, then SIGKILL 30 s later) and exits non-zero naming the
failed rank; a collective whose peer is gone raises on the survivors (`lost_peer_error` turns that into
one line). The process-group timeout (GPTFORGE_DIST_TIMEOUT seconds, 600 by default) bounds the rest: a
rank stuck in a collective that its peers never join fails after that long instead of hanging.
"""

from __future__ import annotations

import datetime
import os

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


DEFAULT_TIMEOUT_S = 600.0  # NCCL's own default; long enough for a rank-0 checkpoint write of a large model


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def timeout_seconds() -> float:
    text = os.environ.get("GPTFORGE_DIST_TIMEOUT", "")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UserError(f"environment variable GPTFORGE_DIST_TIMEOUT={text!r} is not a positive number of seconds")
    return value


def setup(device: torch.device) -> bool:
    """Join torchrun's process group (True when this call created it, so `cleanup` should end it)."""
    if is_initialized() or not launched_by_torchrun():
        return False
    world = int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        if device.index != local_rank():
            raise UserError(f"under torchrun each process uses the GPU of its LOCAL_RANK ({local_rank()}), not "
                            f"{device}: use --device=cuda or auto")
        if local_rank() >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank()} but this machine has {torch.cuda.device_count()} GPU(s): "
                            "--nproc_per_node must not exceed the GPUs per machine")
        torch.cuda.set_device(device)
        backend, device_id = "nccl", device
    elif device.type == "cpu":
        backend, device_id = "gloo", None
    else:
        raise UserError(f"torchrun with {world} process(es) needs CUDA (nccl) or CPU (gloo); {device.type} has no "
                        "backend: use --device=cuda or cpu")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds()), device_id=device_id)
    return True


def cleanup(created: bool) -> None:
    if created and is_initialized():
        dist.destroy_process_group()


def lost_peer_error(error: BaseException) -> UserError | None:
    """A one-line error for a collective that failed because another rank died or timed out, else None."""
    if not is_initialized() or world_size() == 1 or not isinstance(error, RuntimeError):
        return None
    text = str(error)
    signs = ("Connection closed by peer", "Connection reset", "Broken pipe", "Timed out", "timed out", "timeout",
             "NCCL", "Gloo", "gloo", "DistBackendError", "ProcessGroup", "recvBytes", "Socket")
    if not isinstance(error, getattr(dist, "DistBackendError", ())) and not any(s in text for s in signs):
        return None
    first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    return UserError(f"rank {rank()}: a collective with the other processes failed ({first}); another rank probably "
                     "failed or was killed (see torchrun's report). The newest complete checkpoint is intact: "
                     "continue with --init_from=resume")


def broadcast_object(obj):
    """rank 0's `obj` on every rank (small picklable values: paths, flags)."""
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj) -> list:
    if not is_initialized() or world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


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


def any_true_each(flags: list[bool], device: torch.device | str = "cpu") -> list[bool]:
    """For each flag: true on every rank when it is true on any rank (one collective for all of them)."""
    if not is_initialized() or world_size() == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs)


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
