"""deterministic=true: torch's deterministic kernels (and cuBLAS's workspace setting) for bit-equal GPU runs;
the model's ops all have deterministic versions, on the CPU at least (the GPU check runs it on CUDA)."""

from __future__ import annotations

import os

import torch

from gptforge.train.loop import train

from helpers import tiny_config


def test_deterministic_runs_turn_on_deterministic_kernels_and_train(char_data, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        for arch in ("gpt2", "modern"):
            result = train(tiny_config(char_data, tmp_path / arch, arch=arch, max_iters=3, eval_interval=3,
                                       deterministic=True))
            assert result["step"] == 3 and torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)  # (process-wide: leave the other tests as they were)
