"""`gptforge train`: the training loop, started from scratch, from a checkpoint, or from Hugging Face weights."""

from __future__ import annotations

from pathlib import Path

from gptforge.config import Config
from gptforge.errors import UserError
from gptforge.interop.hf import load_hf_gpt2
from gptforge.train.loop import train


def train_command(cfg: Config) -> dict:
    """init_from = scratch | resume | a local Hugging Face GPT-2 directory (converted here, then trained)."""
    init = cfg.train.init_from
    if init in ("scratch", "resume"):
        return train(cfg)
    if not Path(init).is_dir():
        raise UserError(
            f"config key 'init_from': {init!r} is not 'scratch', 'resume' or a Hugging Face GPT-2 directory"
        )
    return train(cfg, pretrained=load_hf_gpt2(init, dropout=cfg.model.dropout))
