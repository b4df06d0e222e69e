"""A run directory read back: the model of its latest complete checkpoint, and its tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from gptforge.config import build_config
from gptforge.data.tokenizers import load_tokenizer
from gptforge.errors import UserError
from gptforge.model.gpt import GPT
from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint


def load_run(run_dir, device: torch.device):
    """(model in eval mode on `device`, tokenizer or None, checkpoint state) from the latest checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    path = latest_checkpoint(run_dir)
    if path is None:
        raise UserError(f"{run_dir} has no complete checkpoint (checkpoints/step_*/ with a COMPLETE marker)")
    ckpt = load_checkpoint(path)
    saved = ckpt["state"]["config"]
    cfg = build_config({k: v for k, v in saved.items() if v is not None}, where=str(path / "state.json"))
    model = GPT(cfg.model)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    tok_dir = run_dir / "tokenizer"
    tokenizer = load_tokenizer(tok_dir) if tok_dir.is_dir() else None
    return model, tokenizer, ckpt["state"]
