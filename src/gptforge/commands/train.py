"""`gptforge train`: the training loop, started from scratch, from a checkpoint, or from Hugging Face weights."""

from __future__ import annotations

import os
import sys
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


# a run a signal stopped exits as a shell reports a process that signal ended, once its checkpoint is saved
SIGNAL_EXIT = {"signal SIGINT": 130, "signal SIGTERM": 143, "signal (received by another rank)": 143}


def exit_code(result: dict) -> int:
    """0 for a run that ended by itself (or had nothing to do); 130 / 143 for one stopped by SIGINT / SIGTERM,
    with the "interrupted" line (once, from rank 0 under torchrun)."""
    code = SIGNAL_EXIT.get(result["reason"], 0)
    if code and os.environ.get("RANK", "0") == "0":
        print(f"gptforge train: interrupted ({result['reason']}) after saving the checkpoint of step {result['step']}; "
              "continue with --init_from=resume", file=sys.stderr)
    return code
