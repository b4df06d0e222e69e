"""A training run in and out of checkpoints: which checkpoint a launch continues, whether it fits this
config, putting every piece back (weights, optimizer, fp16 scaler, RNG streams, data position, loss guard,
TrainState), and saving them all (`Saver`).

Under torchrun every rank takes part: rank 0 picks the checkpoint and the others load the same one; a save
gathers the model and optimizer to rank 0 (FSDP: from every rank's shards), which writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import torch

from gptforge.config import Config, diff_configs
from gptforge.errors import UserError
from gptforge.fsutil import WriteFailed
from gptforge.train import dist, parallel
from gptforge.train.checkpoint import (
    NonFiniteState,
    latest_checkpoint,
    load_checkpoint,
    newest_valid,
    save_checkpoint,
)
from gptforge.train.console import Console
from gptforge.train.events import Checkpoint, MetricsLog
from gptforge.train.guard import LossGuard
from gptforge.train.loader import TrainLoader
from gptforge.train.state import TrainState

# keys that fix the shapes (or the function) of the weights: changing them on resume is an error
MODEL_KEYS = ["arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "logit_softcap", "rope_base"]


@dataclasses.dataclass
class Resume:
    """A checkpoint as loaded to continue from (model and optimizer are None on ranks that FSDP feeds from 0)."""

    path: Path
    state: TrainState
    model: dict | None
    optimizer: dict | None
    tensors: dict  # RNG streams, the fp16 scaler


def load_resume(run_dir: Path, init_from: str, fsdp: bool, console: Console) -> Resume | None:
    """The newest valid checkpoint of `run_dir` when init_from is resume (None for a fresh run), saying which newer
    ones it skipped; refuses a fresh run into a directory that already holds one."""
    main = dist.is_main()
    if init_from != "resume":
        path = dist.broadcast_object(latest_checkpoint(run_dir) if main else None)
        if path is not None:
            raise UserError(f"{run_dir} already holds a run (checkpoint {path.name}); continue it with "
                            "--init_from=resume, or choose another --out")
        return None
    found = None
    if main:
        try:
            found = newest_valid(run_dir, weights=True)
        except UserError as e:
            found = e
    path = dist.broadcast_object(found[0] if isinstance(found, tuple) else found)  # every rank loads rank 0's choice
    if isinstance(path, UserError):
        raise UserError(f"init_from=resume: {path}")
    if main:
        loaded = found[1]
        for line in found[2]:
            console.print(line)
    elif not path.is_dir():
        raise UserError(f"rank {dist.rank()} cannot see {path}, the checkpoint rank 0 resumes from: a multi-machine "
                        "run needs --out on a filesystem that every machine shares")
    else:
        loaded = load_checkpoint(path, weights=not fsdp)  # FSDP: rank 0 reads, then broadcasts
    try:
        state = TrainState.from_state_dict(loaded["state"])
    except ValueError as e:
        raise UserError(f"checkpoint {path}: state.json {e}") from None
    return Resume(path, state, loaded["model"], loaded["optimizer"], loaded["tensors"])


def check_resume(saved: TrainState, cfg: Config, tokenizer_identity: dict | None) -> list[str]:
    """Refuse a changed model or tokenizer; return the other changed keys so the user sees what this resume
    alters."""
    changed = diff_configs(saved.config, cfg.flat(), MODEL_KEYS)
    if changed:
        raise UserError("cannot resume: the model differs from the checkpoint's (" + "; ".join(changed) +
                        "); restore these keys or start a new run with another --out")
    saved_tok = saved.tokenizer
    if saved_tok and tokenizer_identity and saved_tok.get("hash") != tokenizer_identity.get("hash"):
        raise UserError(f"cannot resume: the dataset's tokenizer ({tokenizer_identity.get('name')}) is not the one the "
                        f"checkpoint was trained with ({saved_tok.get('name')})")
    ignore = set(MODEL_KEYS) | {"init_from"}
    if cfg.train.batch_size == "auto":  # chosen at each launch (train/fit.py); the start report says how
        ignore |= {"batch_size", "gradient_accumulation_steps"}
    return diff_configs(saved.config, cfg.flat(), [k for k in sorted(saved.config) if k not in ignore])


def restore(resume: Resume, state: TrainState, *, model, optimizer, scaler, loader: TrainLoader, guard: LossGuard,
            fsdp: bool, device: torch.device, seed: int, console: Console, data_order: bool = True) -> TrainState:
    """Put the checkpoint's state into the freshly built pieces; the TrainState to continue with: the saved
    counters with this launch's config, tokenizer, world size and dataset (those of `state`). data_order=False:
    the loader starts afresh (training moves to another dataset)."""
    parallel.load_model_state(model, resume.model, fsdp)
    parallel.load_optimizer_state(model, optimizer, resume.optimizer, fsdp)
    if "scaler" in resume.tensors and scaler.is_enabled():
        scaler.load_state_dict(resume.tensors["scaler"])
    saved = resume.state
    if saved.loader is None:  # e.g. imported from nanoGPT, whose random batches cannot be replayed
        console.print("the checkpoint holds no data position (imported from nanoGPT?): the data order starts a "
                      "fresh permutation at epoch 0")
    elif data_order:
        loader.load_state_dict(saved.loader)  # a global position: valid at any number of processes
    if saved.guard is not None:
        guard.load_state_dict(saved.guard)
    restore_rng(resume.tensors, saved.world_size, device, seed, saved.step, console)
    return dataclasses.replace(saved, config=state.config, tokenizer=state.tokenizer, world_size=state.world_size,
                               dataset=state.dataset)


def restore_rng(tensors: dict, saved_world: int, device, seed: int, step: int, console: Console) -> None:
    """Dropout continues exactly where it stopped when the world size is the same; after a change, the
    ranks other than 0 start fresh streams (the data order is still exact; dropout is then statistical)."""
    rank, world = dist.rank(), dist.world_size()
    per_rank = tensors.get("rank_rng")
    if per_rank and len(per_rank) == world:
        dist.set_rng_state(per_rank[rank], device)
        return
    dist.set_rng_state(tensors, device)  # rank 0's streams
    if rank:
        torch.manual_seed(seed + 1_000_003 * rank + step)
    if saved_world != world:
        console.print(f"the checkpoint was written by {saved_world} process(es), this run has {world}: the data "
                      "order continues exactly; dropout draws other random masks from here on")


@dataclasses.dataclass
class Saver:
    """Saves the run: every rank calls `save` at the same step; rank 0 writes, prints and logs it."""

    run_dir: Path
    keep_last: int
    model: torch.nn.Module  # plain state-dict keys (FSDP shards it in place)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: TrainLoader
    guard: LossGuard
    fsdp: bool
    device: torch.device
    console: Console
    log: MetricsLog | None  # rank 0's

    def save(self, state: TrainState, is_best: bool) -> Path | None:
        """The checkpoint's path (on rank 0; None on the others)."""
        t0 = time.time()
        state = dataclasses.replace(state, epoch=self.loader.epoch_float, loader=self.loader.state_dict(),
                                    guard=self.guard.state_dict())
        extra = dist.rng_state(self.device)
        if dist.world_size() > 1:  # every rank's dropout streams, for an exact resume at the same world size
            extra["rank_rng"] = dist.all_gather_object({k: v.cpu() for k, v in extra.items()})
        if self.scaler.is_enabled():
            extra["scaler"] = self.scaler.state_dict()
        # DDP: rank 0 holds everything; FSDP: every rank takes part in gathering the shards to rank 0
        main = dist.is_main()
        model_state = parallel.model_state(self.model, self.fsdp) if main or self.fsdp else None
        optimizer_state = parallel.optimizer_state(self.model, self.optimizer, self.fsdp) if main or self.fsdp else None
        path, failure = None, None
        if main:
            try:  # refused: disk full, another OS error, non-finite weights (one line each)
                path = save_checkpoint(self.run_dir, state.step, model_state=model_state,
                                       optimizer_state=optimizer_state, extra_tensors=extra, state=state.state_dict(),
                                       keep_last=self.keep_last, is_best=is_best)
            except UserError as e:
                failure = ("nan" if isinstance(e, NonFiniteState) else "checkpoint_failed", str(e))
        failure = dist.broadcast_object(failure)  # every rank stops together rather than wait on rank 0
        if failure:
            if self.log:
                with contextlib.suppress(OSError, WriteFailed):  # (on a full disk, the line above is what matters)
                    self.log.end(state.step, failure[0])
            raise UserError(failure[1])
        if main:
            seconds = time.time() - t0
            self.console.print(f"saved checkpoint {path} in {seconds:.2f}s (not counted in iteration time)")
            if self.log:
                self.log.write(Checkpoint(step=state.step, path=str(path), seconds=round(seconds, 3)))
        dist.barrier()
        return path
