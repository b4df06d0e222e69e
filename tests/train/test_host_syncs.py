"""Host-device hygiene of the training step, checked on the CPU by counting what would make a GPU's host wait.

On CUDA, reading a device value on the host (`.item()`, `.tolist()`, `.cpu()`, `float(t)`, `bool(t)`, ...)
blocks the host until every queued kernel has run, so the host cannot queue the next work meanwhile. The
step does it once: the loss and the gradient norm, read together, which the loss guard and the
non-finite check need before they decide whether the optimizer steps. These tests patch every such
read and count them by the gptforge line that made them.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
import torch

from gptforge.config import build_config
from gptforge.data.dataset import open_dataset
from gptforge.model.gpt import GPT
from gptforge.train.feed import HostToDevice
from gptforge.train.guard import LossGuard
from gptforge.train.loader import TrainLoader
from gptforge.train.optim import build_optimizer
from gptforge.train.step import train_step

CPU = torch.device("cpu")
PACKAGE = str(Path(__import__("gptforge").__file__).parent)
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


class HostReads:
    """Every host read of a tensor (and every explicit synchronize), by the gptforge function that asked."""

    def __init__(self):
        self.by_site = collections.Counter()  # "module.py:function" of the nearest gptforge frame
        self.torch_internal = []  # (tensor, torch file) for reads made inside torch itself

    def record(self, tensor, what):
        frame = sys._getframe(2)
        caller = frame.f_code.co_filename
        while frame is not None and not frame.f_code.co_filename.startswith(PACKAGE):
            frame = frame.f_back
        if not caller.startswith(PACKAGE) and "/torch/" in caller:
            self.torch_internal.append((tensor, caller, what))
            return
        if frame is not None:
            self.by_site[f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"] += 1

    def install(self, monkeypatch):
        for name in READS:
            original = getattr(torch.Tensor, name)

            def read(self_, *args, _original=original, _name=name, **kwargs):
                counter.record(self_, _name)
                return _original(self_, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, read)
        counter = self
        for owner, name in ((torch.cuda, "synchronize"), (torch.cuda.Event, "synchronize"),
                            (torch.cuda.Stream, "synchronize")):
            original = getattr(owner, name)

            def synchronize(*args, _original=original, **kwargs):
                counter.record(None, "synchronize")
                return _original(*args, **kwargs)

            monkeypatch.setattr(owner, name, synchronize)
        return self


def parts(char_data, **overrides):
    torch.manual_seed(0)
    values = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=25, dropout=0.0, learning_rate=1e-2,
                  warmup_iters=0)
    values.update(overrides)
    cfg = build_config(values)
    model = GPT(cfg.model)
    loader = TrainLoader(open_dataset(char_data), batch_size=4, block_size=16, seed=3)
    return model, build_optimizer(model, cfg.optim, "cpu"), loader


def step_counters(optimizer) -> set[int]:
    """ids of the optimizer's per-parameter step counters: CPU tensors, also in a GPU run (fused AdamW keeps
    them on the device and reads none), so torch's `.item()` on them does not wait for the device."""
    return {id(s["step"]) for s in optimizer.state.values() if isinstance(s.get("step"), torch.Tensor)}


@pytest.mark.parametrize("setup", ["adamw-fp32", "muon-modern", "fp16-scaler"])
def test_a_training_step_reads_the_device_once(char_data, monkeypatch, setup):
    extra = dict(arch="modern", optimizer="muon") if setup == "muon-modern" else {}
    model, opt, loader = parts(char_data, **extra)
    scaler = torch.amp.GradScaler("cpu", enabled=setup == "fp16-scaler")
    reads = HostReads().install(monkeypatch)
    steps = 4
    for step in range(steps):
        result = train_step(model, opt, loader.step_batches(3), step=step, guard=LossGuard(6.0, 5, 0), device=CPU,
                            scaler=scaler, grad_clip=1.0)
        assert result.outcome.updated
    assert reads.by_site == {"step.py:train_step": steps}  # the loss and the gradient norm, read together
    counters = step_counters(opt)
    assert all(id(t) in counters for t, _, _ in reads.torch_internal), \
        [(f, w) for t, f, w in reads.torch_internal if id(t) not in counters]


def test_the_loop_reads_the_device_once_per_step_outside_evals_and_saves(char_data, tmp_path, monkeypatch):
    from gptforge.train.loop import train

    from helpers import tiny_config

    reads = HostReads().install(monkeypatch)
    train(tiny_config(char_data, tmp_path / "run", max_iters=12, eval_interval=6, log_interval=4))
    per_step = {site: n for site, n in reads.by_site.items() if site != "step.py:evaluate"
                and not site.startswith("checkpoint.py:")}
    assert per_step == {"step.py:train_step": 12}  # log steps (4, 8, 12) add nothing: the values are floats already
    assert reads.by_site["step.py:evaluate"] == 3 * 2  # evals at 0, 6, 12: train and val, one read each


def test_batches_go_through_two_reused_staging_buffers_not_a_pinned_copy_each(char_data, monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(self) or self)
    loader = TrainLoader(open_dataset(char_data), batch_size=4, block_size=16, seed=3)
    feed = HostToDevice(CPU, stage=True)  # what CUDA does, with unpinned buffers
    staging = set()
    for _ in range(20):
        x, y = loader.next_batch()
        x_dev, y_dev = feed(x, y)
        assert torch.equal(x_dev, x) and torch.equal(y_dev, y)
        staging |= {s.x.data_ptr() for slots in feed.slots.values() for s in slots}
        assert x_dev.data_ptr() not in staging  # the model never gets a buffer that is refilled under it
    assert feed.buffers_made == 2 and len(staging) == 2 and not pinned
    feed(*TrainLoader(open_dataset(char_data), batch_size=2, block_size=16, seed=3).next_batch())
    assert feed.buffers_made == 4  # a new shape (a smaller micro-batch after an out-of-memory retry) gets its own


def test_the_next_batch_is_read_after_the_forward_is_queued_and_before_the_backward(char_data):
    model, opt, loader = parts(char_data)
    events = []

    class Recorded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x, y):
            events.append("forward")
            logits, loss = self.model(x, y)
            loss.register_hook(lambda grad: events.append("backward"))
            return logits, loss

    class Batches:
        def __len__(self):
            return 3

        def __iter__(self):
            for _ in range(3):
                events.append("read")
                yield loader.next_batch()

    train_step(model, opt, Batches(), step=0, guard=LossGuard(6.0, 5, 0), device=CPU, step_model=Recorded())
    assert events == ["read", "forward", "read", "backward", "forward", "read", "backward", "forward", "backward"]
