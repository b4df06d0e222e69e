"""The GPU configs say what plan's memory model says: the RTX 4070 recipe fits 12 GB (and the next larger
micro-batch, which its comment rules out, does not); the shakespeare-char GPU recipe's comments match its keys."""

from __future__ import annotations

import re

import pytest

from gptforge.analysis.plan.sizing import make_plan
from gptforge.config import load_config

from helpers import REPO

RTX4070 = REPO / "configs" / "gpt2_124m_rtx4070.toml"
SHAKESPEARE_GPU = REPO / "configs" / "shakespeare_char_gpu.toml"


def needed_gib(path, **overrides) -> dict:
    cfg = load_config(str(path), [f"--{k}={v}" for k, v in overrides.items()])
    return make_plan(cfg, gpu="RTX 4070")["fit"]


def test_the_rtx4070_recipe_fits_12_gb_with_the_margin_its_comment_gives():
    fit = needed_gib(RTX4070)
    assert fit["mode"] == "compiled" and fit["capacity_gib"] == pytest.approx(11.94, abs=0.01)
    assert fit["fits"] and fit["needed_gib"] == pytest.approx(7.5, abs=0.05)  # "7.5 of 11.9 GiB"
    assert fit["sequences"] * 1024 == 524_288  # "524,288 tokens per step"
    bigger = needed_gib(RTX4070, batch_size=16, gradient_accumulation_steps=32)
    assert not bigger["fits"] and bigger["needed_gib"] == pytest.approx(12.5, abs=0.05)  # "16 needs 12.5 GiB"
    # what batch_size = "auto" would start from on this card, by the same model
    auto = needed_gib(RTX4070, batch_size="auto", tokens_per_iter=524_288)
    assert auto["best_split"] == (8, 64)
    # eager (compile=false) needs a little less at micro-batch 8, and fits too
    assert needed_gib(RTX4070, compile="false")["fits"]
    no_card = make_plan(load_config(str(RTX4070), ["--batch_size=auto", "--tokens_per_iter=524288"]))
    assert no_card["config"].train.batch_size == 1 and "chosen at launch by trying the device" in no_card["notes"][-1]
    text = RTX4070.read_text()
    assert "7.5 of 11.9 GiB" in text and "micro-batch 16 needs 12.5 GiB" in text


def test_the_shakespeare_gpu_recipe_is_what_its_reasoning_says():
    cfg = load_config(str(SHAKESPEARE_GPU))
    m, t = cfg.model, cfg.train
    assert (m.arch, m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == ("modern", 6, 6, 384, 256, 0.2)
    assert cfg.tokens_per_iter == 32_768 and t.compile == "false" and cfg.optim.optimizer == "muon"
    val_blocks = (111_488 - 1) // m.block_size  # tinyshakespeare's last 10% (docs/performance.md)
    assert t.eval_iters * t.batch_size >= val_blocks  # "evals on the whole val split"
    assert t.max_iters * cfg.tokens_per_iter >= 14e6  # "~14M tokens"
    text = SHAKESPEARE_GPU.read_text()
    assert "UNMEASURED ESTIMATE" in text and re.search(r"every 30 steps", text) and t.eval_interval == 30
    plan = make_plan(cfg, gpu="H100", vocab_size=65)
    assert plan["fit"]["fits"] and plan["total_params"] == pytest.approx(10.7e6, rel=0.02)
