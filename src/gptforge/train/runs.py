"""A run directory read back: the model of one of its checkpoints (the newest that verifies unless one is named),
and its tokenizer. The checkpoint may be named by RUN_DIR and a step, or given as RUN_DIR/checkpoints/step_N."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gptforge.config import build_config
from gptforge.data.tokenizers import load_tokenizer
from gptforge.errors import UserError
from gptforge.model.gpt import GPT
from gptforge.train.checkpoint import (
    CHECKPOINTS,
    check_marker,
    is_step_dir,
    latest_checkpoint,
    load_checkpoint,
    newest_valid,
    step_dirs,
    step_name,
    step_of,
)


def _choices(run_dir: Path) -> str:
    steps = [step_of(p) for p in step_dirs(run_dir / CHECKPOINTS) if check_marker(p) is None]
    return f"complete ones: --step {', '.join(map(str, steps))}" if steps else "it has no complete checkpoint"


def find_checkpoint(path, step: int | None = None) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) for RUN_DIR (its latest complete checkpoint, or that of `step`) or
    RUN_DIR/checkpoints/step_N; a UserError names an incomplete or missing one and the complete ones."""
    path = Path(path)
    if not path.is_dir():
        run_dir = path.parent.parent
        if is_step_dir(path) and path.parent.name == CHECKPOINTS and run_dir.is_dir():  # e.g. pruned by keep_last
            raise UserError(f"checkpoint {path} does not exist; {_choices(run_dir)}")
        raise UserError(f"run directory {path} does not exist")
    if is_step_dir(path):
        run_dir, ckpt = (path.parent.parent if path.parent.name == CHECKPOINTS else path.parent), path
        if step is not None and step != step_of(path):
            raise UserError(f"--step {step} does not match the checkpoint given, {path}")
    elif step is not None:
        run_dir, ckpt = path, path / CHECKPOINTS / step_name(step)
        if not ckpt.is_dir():
            raise UserError(f"{path} has no checkpoint at step {step}; {_choices(path)}")
    else:
        run_dir, ckpt = path, latest_checkpoint(path)
        if ckpt is None:
            raise UserError(f"{path} has no complete checkpoint (checkpoints/step_*/ with a COMPLETE marker)")
    problem = check_marker(ckpt)
    if problem:
        raise UserError(f"checkpoint {ckpt} is incomplete ({problem}: its save was interrupted); {_choices(run_dir)}")
    return run_dir, ckpt


def load_run(path, device: torch.device, step: int | None = None):
    """(model in eval mode on `device`, tokenizer or None, checkpoint state): of the checkpoint named (by `step` or
    a step_N path), else of the newest that verifies; a newer one that does not (corrupt, non-finite weights) is
    skipped with a line on stderr."""
    path = Path(path)
    if step is not None or is_step_dir(path):
        run_dir, path = find_checkpoint(path, step)
        ckpt = load_checkpoint(path)
    else:
        if not path.is_dir():
            raise UserError(f"run directory {path} does not exist")
        run_dir = path
        path, ckpt, skipped = newest_valid(run_dir)
        for line in skipped:
            print(line, file=sys.stderr)
    saved = ckpt["state"]["config"]
    cfg = build_config({k: v for k, v in saved.items() if v is not None}, where=str(path / "state.json"))
    model = GPT(cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # shapes that do not fit: a state.json edited after the save
        raise UserError(f"checkpoint {path}: its weights do not fit the model its state.json describes "
                        f"({str(e).strip().splitlines()[-1].strip()})") from None
    model.to(device).eval()
    tok_dir = run_dir / "tokenizer"
    tokenizer = load_tokenizer(tok_dir) if tok_dir.is_dir() else None
    return model, tokenizer, ckpt["state"]
