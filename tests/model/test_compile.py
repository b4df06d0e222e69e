"""The compiled model: both archs trace into one graph (no graph breaks), forward and backward, and compute
what eager computes, with the loss in fp32 under bf16 autocast. On a GPU, `compile = "auto"` turns this on.

Fast (default suite): torch._dynamo.explain and the aot_eager backend, which trace forward and backward
with AOTAutograd exactly as inductor does, minus code generation. Slow: inductor itself (C++ on the CPU,
about a minute per arch on 2 cores)."""

from __future__ import annotations

import copy

import pytest
import torch

from gptforge.config import ModelConfig
from gptforge.model.gpt import GPT

ARCHS = ["gpt2", "modern"]


def model_and_batch(arch: str, dropout: float = 0.0):
    torch.manual_seed(0)
    model = GPT(ModelConfig(arch=arch, n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65,
                            dropout=dropout))
    x, y = torch.randint(0, 65, (3, 16)), torch.randint(0, 65, (3, 16))
    return model, x, y


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_training_forward_is_one_graph(arch, dropout):
    torch._dynamo.reset()
    model, x, y = model_and_batch(arch, dropout)
    explained = torch._dynamo.explain(model)(x, y)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def forward_backward(model, run, x, y, autocast):
    with autocast:
        _, loss = run(x, y)
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters()}


def compare(arch: str, backend: str, autocast, rtol: float, atol: float):
    torch._dynamo.reset()
    eager, x, y = model_and_batch(arch)
    compiled = copy.deepcopy(eager)
    loss_e, grads_e = forward_backward(eager, eager, x, y, autocast)
    # fullgraph: a graph break anywhere, forward or backward, is an error rather than a silent slow path
    run = torch.compile(compiled, backend=backend, fullgraph=True)
    loss_c, grads_c = forward_backward(compiled, run, x, y, autocast)
    assert loss_c.dtype == torch.float32 and loss_e.dtype == torch.float32  # the loss is fp32 under autocast too
    assert loss_c.item() == pytest.approx(loss_e.item(), rel=rtol, abs=atol)
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_and_backward_trace_without_breaks_and_match_eager(arch):
    compare(arch, "aot_eager", torch.autocast("cpu", enabled=False), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_inductor_matches_eager_in_fp32(arch):
    compare(arch, "inductor", torch.autocast("cpu", enabled=False), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_inductor_matches_eager_under_bf16_autocast(arch):
    # bf16 matmuls round to 8 bits of mantissa; fused kernels round at other points than eager's
    compare(arch, "inductor", torch.autocast("cpu", dtype=torch.bfloat16), rtol=2e-2, atol=2e-3)
