"""The micro-batch is a memory choice, never a training choice: every split of a step sees the same blocks and
gives the same losses; batch_size="auto" picks the largest that fits and an out-of-memory error in the first
steps shrinks it, both tested by injecting torch.OutOfMemoryError on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from gptforge.config import build_config, load_config
from gptforge.data.dataset import open_dataset
from gptforge.errors import UserError
from gptforge.model.gpt import GPT
from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint
from gptforge.train.fit import OOM, MicroBatching, micro_batching, probe
from gptforge.train.guard import LossGuard
from gptforge.train.loader import TrainLoader
from gptforge.train.loop import train
from gptforge.train.optim import build_optimizer
from gptforge.train.step import train_step

from helpers import tiny_config

CPU = torch.device("cpu")
SPLITS = [(8, 1), (4, 2), (2, 4)]  # (micro-batch, accumulation): 8 sequences per step each


def step_blocks(loader: TrainLoader, accum: int, size: int) -> list[tuple]:
    return [tuple(row.tolist()) for x, _ in loader.step_batches(accum, size) for row in x]


@pytest.mark.parametrize("world", [1, 2])
def test_every_split_of_a_step_sees_the_same_blocks(char_data, world):
    ds = open_dataset(char_data)
    seen = {}
    for size, accum in SPLITS:
        loaders = [TrainLoader(ds, size, 16, seed=5, rank=r, world_size=world) for r in range(world)]
        per_process = accum // world if accum >= world else None
        if per_process is None:
            continue  # 8 x 1 cannot be split over 2 processes
        seen[size] = [sorted(sum((step_blocks(ld, per_process, size) for ld in loaders), [])) for _ in range(5)]
    first = next(iter(seen.values()))
    assert all(steps == first for steps in seen.values()) and len(seen) == (3 if world == 1 else 2)
    assert all(len(step) == 8 for step in first) and len({b for step in first for b in step}) > 30


def log_losses(run) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "log"]


def config(char_data, run, **overrides):
    values = dict(max_iters=4, eval_interval=100, dropout=0.0, gradient_accumulation_steps=1, batch_size=8)
    values.update(overrides)
    return tiny_config(char_data, run, **values)


@pytest.fixture(scope="module")
def reference(char_data, tmp_path_factory):
    """Losses and final weights of the same 4 steps at 8 x 1, 4 x 2 and 2 x 4."""
    out = {}
    for size, accum in SPLITS:
        run = tmp_path_factory.mktemp("split") / "run"
        train(config(char_data, run, batch_size=size, gradient_accumulation_steps=accum))
        out[size] = (log_losses(run), load_checkpoint(latest_checkpoint(run))["model"])
    return out


def close(a, b):
    # (Adam's first steps move a weight by ~lr whatever its gradient's size: rounding in the ~0 gradient of a
    # key bias becomes ~1e-6 there)
    return all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)


def test_every_split_gives_the_same_losses_and_weights(reference):
    (losses8, weights8) = reference[8]
    assert len(losses8) == 4
    for size in (4, 2):
        losses, weights = reference[size]
        assert losses == pytest.approx(losses8, rel=1e-5)
        assert close(weights, weights8)


def fail_above(monkeypatch, limit: int, calls: list | None = None):
    """GPT.forward raises CUDA's out-of-memory error for micro-batches of more than `limit` sequences when it
    keeps activations for a backward (evaluation, without gradients, fits)."""
    real = GPT.forward

    def forward(self, idx, targets=None):
        if calls is not None and torch.is_grad_enabled():
            calls.append(idx.size(0))
        if idx.size(0) > limit and torch.is_grad_enabled():
            raise OOM(f"CUDA out of memory. Tried to allocate {idx.size(0)} sequences")
        return real(self, idx, targets)

    monkeypatch.setattr(GPT, "forward", forward)


def test_auto_takes_the_largest_micro_batch_that_fits_and_keeps_the_step(char_data, tmp_path, monkeypatch, capsys,
                                                                         reference):
    fail_above(monkeypatch, 2)
    run = tmp_path / "run"
    train(config(char_data, run, batch_size="auto", tokens_per_iter=8 * 16))
    out = capsys.readouterr().out
    assert 'batch_size "auto": micro-batch 2 x 4 accumulation step(s) per process (8 sequences of 16 per step; ' \
           "too large: 8, 4)" in out
    saved = load_config(str(run / "config.toml"))
    assert (saved.train.batch_size, saved.train.gradient_accumulation_steps, saved.tokens_per_iter) == (2, 4, 128)
    assert log_losses(run) == pytest.approx(reference[8][0], rel=1e-5)  # the configured step's losses


def test_an_out_of_memory_error_in_the_first_steps_shrinks_the_micro_batch(char_data, tmp_path, monkeypatch, capsys,
                                                                           reference):
    calls = []
    fail_above(monkeypatch, 2, calls)
    run = tmp_path / "run"
    train(config(char_data, run))  # batch_size 8: fits nowhere here
    out = capsys.readouterr().out
    assert ("step 0: out of memory at a micro-batch of 8 sequences; continuing with 2 and more accumulation steps "
            "(the same sequences per step)") in out
    assert out.count("out of memory") == 1
    assert calls == [8, 4] + [2] * 16  # step 0 tried at 8 and 4, then every step as 4 micro-batches of 2
    assert log_losses(run) == pytest.approx(reference[8][0], rel=1e-5)
    saved = load_config(str(run / "config.toml"))
    assert (saved.train.batch_size, saved.train.gradient_accumulation_steps) == (2, 4)
    state = load_checkpoint(latest_checkpoint(run))["state"]
    assert (state["config"]["batch_size"], state["config"]["gradient_accumulation_steps"]) == (2, 4)
    assert close(load_checkpoint(latest_checkpoint(run))["model"], reference[8][1])


def tiny_parts(char_data, dropout=0.0):
    torch.manual_seed(0)
    cfg = build_config(dict(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=25, dropout=dropout))
    model = GPT(cfg.model)
    return cfg, model, build_optimizer(model, cfg.optim, "cpu"), TrainLoader(open_dataset(char_data), 8, 16, seed=3)


def test_out_of_memory_after_the_first_steps_is_one_clear_error(char_data, monkeypatch):
    _, model, opt, loader = tiny_parts(char_data)
    fail_above(monkeypatch, 2)
    fit = MicroBatching(sequences=8, world=1, size=8, retry_until=3)
    with pytest.raises(UserError, match=r"^out of memory on cpu in step 3 at a micro-batch of 8 sequences x 16 tokens: "
                                        r"use --batch_size=auto"):
        train_step(model, opt, loader.step_batches(1, 8), step=3, guard=LossGuard(6, 5, 0), device=CPU, fit=fit)
    assert all(p.grad is None for p in model.parameters())


def test_the_probe_leaves_random_streams_and_gradients_as_they_were(char_data, monkeypatch):
    _, model, _, _ = tiny_parts(char_data, dropout=0.1)
    fail_above(monkeypatch, 3)
    before = torch.get_rng_state()
    chosen, tried = probe(model, [8, 4, 2, 1], 16, CPU, torch.autocast("cpu", enabled=False))
    assert (chosen, tried) == (2, [8, 4])
    assert torch.equal(torch.get_rng_state(), before) and all(p.grad is None for p in model.parameters())


def test_off_cuda_a_size_over_the_ram_estimate_is_not_even_tried(char_data, monkeypatch):
    _, model, _, _ = tiny_parts(char_data)
    calls = []
    fail_above(monkeypatch, 10**6, calls)
    monkeypatch.setattr("gptforge.train.fit.available_ram", lambda: 10**9)
    chosen, tried = probe(model, [10**6, 4], 16, CPU, torch.autocast("cpu", enabled=False))
    assert (chosen, tried) == (4, [10**6]) and 10**6 not in calls  # (1 and 2: the activation measurement)


def test_auto_needs_tokens_per_iter_and_refuses_fsdp(char_data):
    with pytest.raises(UserError, match='batch_size\' = "auto" needs tokens_per_iter'):
        build_config(dict(batch_size="auto"))
    cfg = load_config(None, ["--batch_size=auto", "--tokens_per_iter=4096", "--block_size=64"])
    assert (cfg.train.batch_size, cfg.tokens_per_iter) == ("auto", 4096)
    fixed = load_config(None, ["--batch_size=8", "--tokens_per_iter=4096", "--block_size=64"])
    assert fixed.train.gradient_accumulation_steps == 8  # derived: 64 sequences in micro-batches of 8
    for bad, message in ((dict(batch_size=3), "is 64 sequences of 64, not a multiple of batch_size"),
                         (dict(batch_size=8, gradient_accumulation_steps=4), "means gradient_accumulation_steps 8"),
                         (dict(tokens_per_iter=100), "must be a multiple of block_size"),
                         (dict(batch_size="many"), "'many' is not a valid int")):
        with pytest.raises(UserError, match=message):
            build_config({"tokens_per_iter": 4096, "block_size": 64, **bad})
    cfg, model, _, _ = tiny_parts(char_data)
    auto = build_config(dict(batch_size="auto", tokens_per_iter=128, block_size=16))
    with pytest.raises(UserError, match='batch_size = "auto" does not work with fsdp=true'):
        micro_batching(auto, model, CPU, torch.autocast("cpu", enabled=False), fsdp=True, first_step=0)
