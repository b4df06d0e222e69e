"""Shared fixtures: a tiny character-level DATA_DIR made by the real prepare, and a tiny train config."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from gptforge.config import build_config

# The tests train tiny models, for which extra threads cost more in synchronisation than they gain (on
# 2 shared cores this cut the training tests' time about 3x). A test that needs threads sets its own.
# Subprocesses (`gptforge train` in a fresh process, torchrun workers) get the same count through the
# environment: a matmul split over another number of threads rounds differently, and the resume tests
# compare an in-process run with a fresh-process one bit for bit.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


def tiny_text(n_lines: int = 1500, seed: int = 0) -> str:
    """Structured text a tiny model can learn quickly (so losses fall), deterministic."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my king", "the queen", "our lord", "this man"]
    verbs = ["sees", "loves", "fears", "follows", "calls", "knows"]
    objects = ["the moon.", "a rose.", "the sea.", "his crown.", "her hand.", "the night."]
    return "\n".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}" for _ in range(n_lines)) + "\n"


def make_char_data(directory: Path, text: str | None = None, name: str = "corpus.txt") -> Path:
    from gptforge.data.prepare import prepare

    directory.mkdir(parents=True, exist_ok=True)
    src = directory / name
    src.write_text(text if text is not None else tiny_text(), encoding="utf-8")
    out = directory / "data"
    prepare([str(src)], out, tokenizer="char", val_fraction=0.1, split="tail")
    return out


@pytest.fixture(scope="session")
def char_data(tmp_path_factory) -> Path:
    """A prepared character-level DATA_DIR (about 33k train tokens); read-only for tests."""
    return make_char_data(tmp_path_factory.mktemp("chardata"))


def tiny_config(data: Path, out: Path, **overrides):
    values = dict(data=str(data), out=str(out), n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4,
                  max_iters=12, eval_interval=6, eval_iters=2, log_interval=1, learning_rate=3e-3, min_lr=3e-4,
                  warmup_iters=2, dropout=0.1, gradient_accumulation_steps=2, sample_tokens=0, seed=7)
    values.update(overrides)
    return build_config(values)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_run(char_data, tmp_path_factory) -> Path:
    """A finished tiny run (6 steps) on char_data, for sample/eval tests; read-only."""
    from gptforge.train.loop import train

    run = tmp_path_factory.mktemp("tinyrun") / "run"
    train(tiny_config(char_data, run, max_iters=6, dropout=0.0))
    return run
