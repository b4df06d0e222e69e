"""The config a command runs with: gptforge's TOML, or a nanoGPT config .py read as data (interop)."""

from __future__ import annotations

import os

from gptforge.config import Config, load_config


def load_any_config(path: str | None, overrides: list[str] | None = None) -> Config:
    """`train`/`plan`/`bench` CONFIG: a .py file is nanoGPT's (mapped to gptforge's keys, what did not map is
    printed); anything else is TOML."""
    if path and str(path).endswith(".py"):
        from gptforge.interop.nanogpt_config import describe, load_nanogpt_config

        cfg, mapped = load_nanogpt_config(path, overrides)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, say it once
            print("\n".join(describe(path, mapped)))
        return cfg
    return load_config(path, overrides)
