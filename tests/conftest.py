"""Shared fixtures: a tiny character-level DATA_DIR made by the real prepare, a finished tiny run, ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import SHARED_DATA, make_char_data, tiny_config

# The tests train tiny models, for which extra threads cost more in synchronisation than they gain (on
# 2 shared cores this cut the training tests' time about 3x). A test that needs threads sets its own.
# Subprocesses (`gptforge train` in a fresh process, torchrun workers) get the same count through the
# environment: a matmul split over another number of threads rounds differently, and the resume tests
# compare an in-process run with a fresh-process one bit for bit.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def char_data(tmp_path_factory) -> Path:
    """A prepared character-level DATA_DIR (about 33k train tokens); read-only for tests."""
    return make_char_data(tmp_path_factory.mktemp("chardata"))


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
