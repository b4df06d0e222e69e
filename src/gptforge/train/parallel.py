"""Data-parallel (DDP) and sharded (FSDP2) training, with checkpoints in one format at any world size.

DDP: every rank holds the whole model and optimizer; backward averages gradients across ranks, and only
on the last micro-step of an optimizer step (`no_sync` skips the all-reduce on the others).
FSDP2 (`fully_shard` per transformer block, then the root): parameters, gradients and AdamW state are
split across ranks; each forward/backward gathers one block's weights and frees them after, so a model
too big for one GPU trains. Gradients are reduce-scattered on every micro-step (skipping that would keep
whole unsharded gradients, the memory FSDP exists to save).

Checkpoints hold the whole model and optimizer, gathered to rank 0 on the CPU with the
torch.distributed.checkpoint state-dict helpers and written in the same single-file format a single
process writes (plain state-dict keys; optimizer state keyed by parameter index). So any checkpoint
loads into FSDP at any world size, into DDP, into one process, and into `gptforge sample` / `export`.
"""

from __future__ import annotations

import contextlib

import torch

from gptforge.errors import UserError
from gptforge.train import dist


def use_fsdp(requested: bool, world: int, optimizer: str, dtype: torch.dtype) -> bool:
    """Whether to shard; the combinations FSDP cannot do are refused with the fix."""
    if not requested or world == 1:
        return False  # one process: nothing to shard (train() says so)
    if optimizer == "muon":
        raise UserError("fsdp=true with optimizer=muon: Muon orthogonalises whole matrices, which FSDP splits across "
                        "processes; use --optimizer=adamw with fsdp, or fsdp=false")
    if dtype == torch.float16:
        raise UserError("fsdp=true with float16: the fp16 loss scaler would decide per shard; use --dtype=bfloat16 "
                        "(or float32 on GPUs without bf16)")
    return True


def wrap(model: torch.nn.Module, *, fsdp: bool, device: torch.device, dtype: torch.dtype, compile_model: bool):
    """(step_model, eval_model): the module the training step runs through and the one evaluation uses.

    `model` itself keeps plain state-dict keys (FSDP2 shards it in place; compile and DDP wrap it)."""
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # explicit, so --device=cpu shards on the CPU even where CUDA exists (the default mesh prefers CUDA)
        mesh = init_device_mesh(device.type, (dist.world_size(),))
        # gather and compute in bf16, average gradients in fp32 (autocast still runs the loss in fp32)
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32 \
            else MixedPrecisionPolicy()
        for block in model.transformer.h:
            if compile_model:
                block.compile()  # per block, in place: keys stay plain (torchtitan's way with FSDP2)
            # the model is still on the CPU: each block moves to the device as it is sharded, so the whole
            # model never has to fit on one GPU
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        return model, model
    model.to(device)
    compiled = torch.compile(model) if compile_model else model
    if dist.world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(compiled, device_ids=[device.index] if device.type == "cuda" else None)
        return ddp, compiled  # evaluation skips DDP: no gradients, and no buffer broadcast per forward
    return compiled, compiled


def gradient_sync(step_model: torch.nn.Module, last_micro_step: bool):
    """DDP averages gradients only on the last micro-step; the others accumulate locally."""
    if last_micro_step or not hasattr(step_model, "no_sync"):
        return contextlib.nullcontext()
    return step_model.no_sync()


def gradient_norm(model: torch.nn.Module, fsdp: bool) -> torch.Tensor:
    """The global gradient norm as a device tensor (no sync), the same on every rank: of the all-reduced
    gradients (DDP), or of the shards reduced over the ranks (FSDP)."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if fsdp and hasattr(norm, "full_tensor"):  # a DTensor holding this rank's partial norm: reduce it
        norm = norm.full_tensor()
    return norm


def clip_to_norm(model: torch.nn.Module, max_norm: float, norm: torch.Tensor) -> None:
    """Scale the gradients down to `max_norm` given their norm (what clip_grad_norm_ does after measuring)."""
    torch.nn.utils.clip_grads_with_norm_([p for p in model.parameters() if p.grad is not None], max_norm, norm)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def model_state(model: torch.nn.Module, fsdp: bool) -> dict:
    """The whole model's plain state dict (FSDP: gathered to rank 0 on the CPU, {} on other ranks; every
    rank must call this)."""
    if not fsdp:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def _names_in_optimizer_order(model: torch.nn.Module, optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}  # a tied weight under its first name
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(model: torch.nn.Module, optimizer, fsdp: bool) -> dict:
    """optimizer.state_dict() of the whole optimizer (FSDP: gathered to rank 0, {} on other ranks)."""
    if not fsdp:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not full:
        return {}
    # DCP keys parameters by name; the file keeps torch's index keys, as a single process writes them
    index = {name: i for i, name in enumerate(_names_in_optimizer_order(model, optimizer))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]
    return {"state": {index[n]: s for n, s in full["state"].items()}, "param_groups": groups}


def load_model_state(model: torch.nn.Module, state: dict | None, fsdp: bool) -> None:
    """Load a whole plain state dict (FSDP: rank 0's copy is broadcast and sharded; others pass None)."""
    if not fsdp:
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state if dist.is_main() else {}, options=_options(broadcast_from_rank0=True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict | None, fsdp: bool) -> None:
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    by_name = {}
    if dist.is_main():
        names = _names_in_optimizer_order(model, optimizer)
        if len(state["param_groups"]) != len(optimizer.param_groups) or \
                sum(len(g["params"]) for g in state["param_groups"]) != len(names):
            raise UserError("the checkpoint's optimizer state does not match this model's parameters")
        groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
        by_name = {"state": {names[int(i)]: s for i, s in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, by_name, options=_options(broadcast_from_rank0=True))
