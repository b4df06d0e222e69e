"""The GPT model: shapes, causality, KV-cache generation, padded vocabulary, FLOPs, overfitting."""

import pytest
import torch

from gptforge.config import ModelConfig
from gptforge.errors import UserError
from gptforge.model.gpt import GPT, ReLUSquared, apply_rotary, padded_vocab, rotary_tables, sample_token

ARCHS = ["gpt2", "modern"]


def tiny(arch="gpt2", **kw):
    values = dict(arch=arch, n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=70, dropout=0.0)
    values.update(kw)
    return ModelConfig(**values)


def randomised(model: GPT, seed=0) -> GPT:
    """Non-trivial weights: the modern arch starts with zero output projections (blocks = identity),
    which would make causality and cache tests pass for the wrong reason."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def test_padded_vocab():
    assert [padded_vocab(v) for v in (1, 64, 65, 50257, 50304)] == [64, 64, 128, 50304, 50304]


def test_rotary_is_the_textbook_rotation_of_each_half_pair():
    x = torch.randn(2, 16, 2, 3, 8)  # [B, T, q|k, H, D]
    cos, sin = rotary_tables(8, 16, 10_000.0)
    angle = torch.arange(16.0)[:, None] * 10_000.0 ** (-torch.arange(0, 8, 2) / 8)  # [T, D/2]
    c, s = angle.cos()[:, None, None, :], angle.sin()[:, None, None, :]
    x1, x2 = x[..., :4], x[..., 4:]
    expected = torch.cat((x1 * c + x2 * s, x2 * c - x1 * s), dim=-1)
    assert torch.allclose(apply_rotary(x, cos, sin), expected, atol=1e-6)
    assert torch.equal(apply_rotary(x, cos, sin)[:, 0], x[:, 0])  # position 0: no rotation


def test_relu_squared_backward_is_autograds_bit_for_bit():
    x = torch.randn(4, 64, requires_grad=True)
    grad = torch.randn(4, 64)
    r = torch.relu(x)
    (r * r).backward(grad)
    expected, x.grad = x.grad, None
    out = ReLUSquared.apply(x)
    out.backward(grad)
    assert torch.equal(out, torch.relu(x) ** 2) and torch.equal(x.grad, expected)
    assert (x.grad[x < 0] == 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_padded_logits(arch):
    torch.manual_seed(0)
    model = GPT(tiny(arch))
    idx = torch.randint(0, 70, (3, 16))
    logits, loss = model(idx)
    assert loss is None and logits.shape == (3, 16, 128) and logits.dtype == torch.float32
    assert torch.isinf(logits[..., 70:]).all() and (logits[..., 70:] < 0).all()
    assert torch.isfinite(logits[..., :70]).all()
    none, loss = model(idx, torch.randint(0, 70, (3, 16)))
    assert none is None and loss.dim() == 0 and loss.dtype == torch.float32
    # at init the predictions are near uniform over the REAL vocabulary (padded ids take no mass)
    assert abs(loss.item() - torch.log(torch.tensor(70.0)).item()) < 0.1


def test_too_long_sequence_is_refused():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_invalid_vocab_is_a_user_error():
    with pytest.raises(UserError, match="vocab_size"):
        GPT(tiny(vocab_size=0))


def test_ignore_index_and_mean():
    torch.manual_seed(0)
    model = randomised(GPT(tiny()))
    idx = torch.randint(0, 70, (2, 8))
    targets = torch.randint(0, 70, (2, 8))
    logits, _ = model(idx)
    per_token = torch.nn.functional.cross_entropy(
        logits[..., :70].reshape(-1, 70), targets.reshape(-1), reduction="none"
    )
    masked = targets.clone()
    masked[0, :5] = -1
    _, loss = model(idx, masked)
    expected = per_token.reshape(2, 8)[masked != -1].mean()
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_label_smoothing_applies_to_the_training_loss_over_the_real_vocabulary_only(arch, dtype):
    torch.manual_seed(0)
    model = randomised(GPT(tiny(arch))).to(dtype)
    idx, targets = torch.randint(0, 70, (2, 8)), torch.randint(0, 70, (2, 8))
    targets[0, :3] = -1
    logits = model(idx)[0][..., :70].float().reshape(-1, 70)  # (soft-capped for the modern arch)

    def ce(smoothing):
        return torch.nn.functional.cross_entropy(logits, targets.reshape(-1), ignore_index=-1,
                                                 label_smoothing=smoothing).item()

    model.label_smoothing = 0.1
    tol = 1e-5 if dtype == torch.float32 else 1e-3  # (bf16: the same logits, summed in another order)
    assert abs(model(idx, targets)[1].item() - ce(0.0)) < tol  # eval mode: plain cross-entropy
    model.train()
    smoothed = model(idx, targets)[1].item()
    assert abs(smoothed - ce(0.1)) < tol and abs(ce(0.1) - ce(0.0)) > 5 * tol
    model.label_smoothing = 0.0
    assert abs(model(idx, targets)[1].item() - ce(0.0)) < tol


def test_chunked_bf16_loss_matches_plain():
    """The low-precision path upcasts logits chunk by chunk; it must equal a plain fp32 CE of them."""
    import gptforge.model.gpt as model_module

    torch.manual_seed(0)
    model = randomised(GPT(tiny("modern", logit_softcap=5.0))).to(torch.bfloat16)
    idx = torch.randint(0, 70, (4, 16))
    old = model_module.CE_CHUNK_ROWS
    model_module.CE_CHUNK_ROWS = 7  # several uneven chunks
    try:
        _, loss = model(idx, idx)
        loss.backward()
    finally:
        model_module.CE_CHUNK_ROWS = old
    raw = model.lm_head(model._hidden(idx, None, False)).float()[..., :70]
    capped = 5.0 * torch.tanh(raw / 5.0)
    expected = torch.nn.functional.cross_entropy(capped.reshape(-1, 70), idx.reshape(-1))
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected.item()) < 1e-4
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_causality(arch):
    torch.manual_seed(0)
    model = randomised(GPT(tiny(arch)))
    idx = torch.randint(0, 70, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 70
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def generate_without_cache(model: GPT, prompt: list[int], n: int, temperature=0.0, seed=0) -> list[int]:
    """The obvious loop: rerun the model on the last block_size tokens for every new token."""
    g = torch.Generator().manual_seed(seed)
    context, out = list(prompt), []
    for _ in range(n):
        logits, _ = model(torch.tensor([context[-model.cfg.block_size:]]))
        token = sample_token(logits[0, -1], temperature, None, None, g)
        out.append(token)
        context.append(token)
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_generation_equals_full_recompute(arch, temperature):
    torch.manual_seed(0)
    model = randomised(GPT(tiny(arch)), seed=3)
    prompt = [5, 17, 33]
    # 30 new tokens run past block_size (16): the window slides, as without a cache
    g = torch.Generator().manual_seed(11)
    cached = list(model.generate(torch.tensor(prompt), 30, temperature=temperature, generator=g))
    assert cached == generate_without_cache(model, prompt, 30, temperature, seed=11)
    assert len(cached) == 30
    if temperature:
        assert len(set(cached)) > 5


def test_generation_stops_after_eot_and_is_seeded():
    torch.manual_seed(0)
    model = randomised(GPT(tiny()))
    first = list(model.generate([1, 2], 12, temperature=1.0, generator=torch.Generator().manual_seed(7)))
    again = list(model.generate([1, 2], 12, temperature=1.0, generator=torch.Generator().manual_seed(7)))
    assert first == again and len(first) == 12
    eot = first[4]
    stopped = list(model.generate([1, 2], 12, temperature=1.0, eot_id=eot, generator=torch.Generator().manual_seed(7)))
    assert stopped == first[:first.index(eot) + 1]


def test_generation_ignores_dropout_and_train_mode():
    torch.manual_seed(0)
    model = randomised(GPT(tiny(dropout=0.5)))
    eval_tokens = list(model.generate([3], 10, temperature=0))
    model.train()
    assert list(model.generate([3], 10, temperature=0)) == eval_tokens


def test_padded_ids_are_never_sampled():
    torch.manual_seed(0)
    model = randomised(GPT(tiny(vocab_size=65)))
    hidden = model._hidden(torch.tensor([[1]]), None, False)[0, -1].detach()
    with torch.no_grad():  # make the padded ids the most likely by far, were they not masked
        model.lm_head.weight[65:] = 10.0 * hidden
    raw = model.lm_head(model._hidden(torch.tensor([[1]]), None, False))[0, -1]
    assert raw.argmax() >= 65  # the masking is what keeps them out
    g = torch.Generator().manual_seed(0)
    tokens = []
    for temperature, top_k, top_p in [(0, None, None), (1.0, None, None), (5.0, None, None), (2.0, 100, 0.99)]:
        tokens += list(model.generate([1], 40, temperature=temperature, top_k=top_k, top_p=top_p, generator=g))
    assert max(tokens) < 65


def test_sample_token_top_k_and_top_p():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, float("-inf")])
    g = torch.Generator().manual_seed(0)
    assert sample_token(logits, 0, None, None, g) == 0
    assert {sample_token(logits, 1.0, 2, None, g) for _ in range(200)} == {0, 1}
    # probabilities ~ .64 .24 .09 .03: top_p 0.8 keeps the two first (0.64 < 0.8 <= 0.88)
    assert {sample_token(logits, 1.0, None, 0.8, g) for _ in range(200)} == {0, 1}
    assert {sample_token(logits, 1.0, None, 0.1, g) for _ in range(50)} == {0}
    assert {sample_token(logits, 1.0, None, None, g) for _ in range(500)} == {0, 1, 2, 3}


def test_num_params_and_flops_by_hand():
    L, d, T = 2, 32, 16
    Vp = 128  # the vocabulary of 70, padded
    gpt2 = GPT(tiny())
    block = (2 * d) * 2 + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert gpt2.num_params() == Vp * d + T * d + L * block + 2 * d
    assert gpt2.num_params(non_embedding=True) == L * block + 2 * d
    matmul = L * 12 * d * d + Vp * d  # c_attn 3d², c_proj d², c_fc 4d², mlp c_proj 4d², plus the head
    assert gpt2.flops_per_token() == 6 * matmul + 12 * L * d * T
    modern = GPT(tiny("modern"))
    assert modern.num_params() == Vp * d + L * 12 * d * d + Vp * d  # untied head, no norms weights, no biases
    assert modern.num_params(non_embedding=True) == L * 12 * d * d + Vp * d
    assert modern.flops_per_token() == 6 * matmul + 12 * L * d * T


def test_gpt2_124m_figures():
    """GPT-2 small: the familiar 124M parameters and ~0.87 GFLOP per token at block 1024."""
    with torch.device("meta"):
        model = GPT(ModelConfig(vocab_size=50257))
    assert model.padded_vocab_size == 50304
    assert model.num_params() == 124_475_904  # nanoGPT's 50304-vocab GPT-2 124M
    assert model.flops_per_token() == 6 * (12 * 12 * 768 * 768 + 50304 * 768) + 12 * 12 * 768 * 1024


def test_state_dict_uses_nanogpt_names():
    keys = set(GPT(tiny()).state_dict())
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.attn.c_attn.weight",
            "transformer.h.0.mlp.c_proj.bias", "transformer.ln_f.weight", "lm_head.weight"} <= keys
    assert not any("_orig_mod" in k for k in keys)
    modern = set(GPT(tiny("modern")).state_dict())
    assert "transformer.wpe.weight" not in modern and not any(k.endswith("bias") for k in modern)


def test_init_is_deterministic_and_nanogpt_scaled():
    torch.manual_seed(1)
    a = GPT(tiny(n_layer=8, n_embd=256, n_head=4))
    torch.manual_seed(1)
    b = GPT(tiny(n_layer=8, n_embd=256, n_head=4))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    std_fc = a.transformer.h[0].mlp.c_fc.weight.std().item()
    std_proj = a.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std_fc - 0.02) < 0.001 and abs(std_proj - 0.02 / 4) < 0.0005
    modern = GPT(tiny("modern"))
    assert modern.transformer.h[0].attn.c_proj.weight.abs().sum() == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_overfits_a_fixed_batch(arch):
    torch.manual_seed(0)
    model = GPT(tiny(arch))
    model.train()
    x = torch.randint(0, 70, (4, 16))
    y = torch.randint(0, 70, (4, 16))  # random targets: only memorisation brings the loss down
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5  # from ln(70) = 4.25


def test_crop_block_size():
    torch.manual_seed(0)
    model = randomised(GPT(tiny()))
    idx = torch.randint(0, 70, (1, 8))
    before, _ = model(idx)
    model.crop_block_size(8)
    after, _ = model(idx)
    assert model.transformer.wpe.weight.shape == (8, 32) and torch.equal(before, after)
    with pytest.raises(UserError):
        model.crop_block_size(9)
