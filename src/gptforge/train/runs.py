"""A run directory read back: the model of its newest valid checkpoint, and its tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gptforge.config import build_config
from gptforge.data.tokenizers import load_tokenizer
from gptforge.errors import UserError
from gptforge.model.gpt import GPT
from gptforge.train.checkpoint import newest_valid


def load_run(run_dir, device: torch.device):
    """(model in eval mode on `device`, tokenizer or None, checkpoint state) from the newest checkpoint that
    verifies; a newer one that does not (corrupt, non-finite weights) is skipped with a line on stderr."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
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
