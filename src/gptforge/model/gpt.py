"""The GPT: GPT-2 exactly (arch "gpt2") or a modern block (arch "modern"), with KV-cache generation.

gpt2:   learned positions, LayerNorm, GELU (tanh approximation, as GPT-2), tied embedding and head,
        optional biases. Parameter names are nanoGPT's, so nanoGPT and Hugging Face GPT-2 weights load.
modern: rotary positions, RMSNorm (no weights), QK-norm, ReLU², untied head, no biases, logit soft-cap.

The vocabulary is padded to a multiple of 64 for fast matmuls; the padded ids take no part in the loss
and are never sampled.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gptforge.config import ModelConfig
from gptforge.errors import UserError

VOCAB_MULTIPLE = 64
CE_CHUNK_ROWS = 8192  # rows of logits upcast to fp32 at a time in the loss


def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(head_dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [T, 1, 1, head_dim], broadcast over [B, T, (q|k), H, head_dim]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # [T, head_dim/2]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), -1)[:, None, None, :], torch.cat((sin, -sin), -1)[:, None, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the halves (x1, x2) of the last dim to (x1 cos + x2 sin, x2 cos - x1 sin), written as
    x * cos + swap(x) * sin with a signed sin table: the same bits in fewer kernels (it matters on CPU)."""
    half = x.size(-1) // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


class ReLUSquared(torch.autograd.Function):
    """relu(x)². Autograd's own backward of r * r takes four full-size kernels, this one two."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return (grad * r).mul_(2)  # = grad * r + grad * r, autograd's result, bit for bit


class KVCache:
    """Keys and values of every layer for one generation, preallocated to the block size."""

    def __init__(self, cfg: ModelConfig, batch: int, device, dtype):
        head_dim = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, cfg.block_size, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # tokens already cached


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.modern = cfg.arch == "modern"
        bias = cfg.bias and not self.modern
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)
        self.dropout = cfg.dropout

    def forward(self, x, rotary, cache: KVCache | None, layer: int, dropout_on: bool):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        if self.modern:  # q and k normed and rotated together: half the kernels
            q, k = apply_rotary(rms_norm(qkv[:, :, :2]), *rotary).unbind(dim=2)
            v = qkv[:, :, 2]
        else:
            q, k, v = qkv.unbind(dim=2)  # [B, T, H, D]
        # autocast may leave the normed q, k in fp32 while v is bf16; attention wants one dtype
        q, k, v = (t.to(v.dtype).transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        causal = True
        if cache is not None:
            start = cache.pos
            cache.k[layer, :, :, start:start + T] = k
            cache.v[layer, :, :, start:start + T] = v
            k, v = cache.k[layer, :, :, :start + T], cache.v[layer, :, :, :start + T]
            # one new token attends to everything cached; SDPA's is_causal would align it to key 0
            assert start == 0 or T == 1, "the cache is filled by one prompt, then one token at a time"
            causal = start == 0
        p = self.dropout if dropout_on else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
        y = y.transpose(1, 2).reshape(B, T, C)
        return F.dropout(self.c_proj(y), p, training=dropout_on)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.modern = cfg.arch == "modern"
        bias = cfg.bias and not self.modern
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=bias)
        self.dropout = cfg.dropout

    def forward(self, x, dropout_on: bool):
        h = self.c_fc(x)
        if self.modern:
            h = ReLUSquared.apply(h)
        else:
            h = F.gelu(h, approximate="tanh")
        return F.dropout(self.c_proj(h), self.dropout, training=dropout_on)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.modern = cfg.arch == "modern"
        # registration order = parameter order = nanoGPT's (ln_1, attn, ln_2, mlp): optimizer states map 1:1
        if not self.modern:
            self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = Attention(cfg)
        if not self.modern:
            self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, rotary, cache, layer, dropout_on):
        norm1 = rms_norm if self.modern else self.ln_1
        norm2 = rms_norm if self.modern else self.ln_2
        x = x + self.attn(norm1(x), rotary, cache, layer, dropout_on)
        return x + self.mlp(norm2(x), dropout_on)


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int, softcap: float,
            label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed CE of a chunk of rows, in fp32, over the real vocabulary only (smoothed over it when asked)."""
    logits = logits[:, :vocab_size].float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum", label_smoothing=label_smoothing)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size <= 0:
            raise UserError(f"config key 'vocab_size' must be positive, got {cfg.vocab_size}")
        self.cfg = dataclasses.replace(cfg)
        self.modern = cfg.arch == "modern"
        self.vocab_size = cfg.vocab_size
        self.padded_vocab_size = padded_vocab(cfg.vocab_size)
        self.softcap = float(cfg.logit_softcap) if self.modern else 0.0
        self.label_smoothing = 0.0  # of the training loss (set by the trainer); eval mode computes plain CE
        modules = dict(wte=nn.Embedding(self.padded_vocab_size, cfg.n_embd))
        if not self.modern:
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules["h"] = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        if not self.modern:
            modules["ln_f"] = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(cfg.n_embd, self.padded_vocab_size, bias=False)
        if not self.modern:
            self.transformer.wte.weight = self.lm_head.weight  # tied, as GPT-2
        else:
            cos, sin = rotary_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    # ---- initialisation -------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.cfg
        if not self.modern:
            # nanoGPT's: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * n_layer)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Embedding):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                elif isinstance(module, nn.LayerNorm):
                    nn.init.ones_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            for block in self.transformer.h:
                for proj in (block.attn.c_proj, block.mlp.c_proj):
                    nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
            return
        # modern: input matrices at 1/sqrt(fan_in); output projections zero, so each block starts as
        # the identity and the residual stream grows only as the blocks learn; a small head so the
        # first predictions are near uniform. The embedding is normed after lookup, so its scale only
        # sets how fast AdamW moves it: 0.02 as in gpt2.
        std = cfg.n_embd ** -0.5
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=0.02)
        for block in self.transformer.h:
            nn.init.normal_(block.attn.c_attn.weight, mean=0.0, std=std)
            nn.init.normal_(block.mlp.c_fc.weight, mean=0.0, std=std)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)

    # ---- sizes ----------------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (a tied matrix counted once); non_embedding leaves out the embedding lookups
        (token and position tables; with GPT-2's tying that includes the head)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.transformer.wte.weight.numel()
            if not self.modern:
                total -= self.transformer.wpe.weight.numel()
        return total

    def matmul_params(self) -> int:
        """Weights that take part in a matrix multiply per token: every Linear, the head included
        (at its padded width, as computed), embedding lookups excluded."""
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x matmul weights + 12 * n_layer * n_embd * block_size (attention)."""
        cfg = self.cfg
        return 6.0 * self.matmul_params() + 12.0 * cfg.n_layer * cfg.n_embd * cfg.block_size

    # ---- forward --------------------------------------------------------------------------------

    def _hidden(self, idx: torch.Tensor, cache: KVCache | None, dropout_on: bool) -> torch.Tensor:
        T = idx.size(1)
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.cfg.block_size}")
        x = self.transformer.wte(idx)
        rotary = None
        if self.modern:
            x = rms_norm(x)
            rotary = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        else:
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
            x = x + self.transformer.wpe(pos)
        x = F.dropout(x, self.cfg.dropout, training=dropout_on)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, rotary, cache, layer, dropout_on)
        if cache is not None:
            cache.pos += T
        return rms_norm(x) if self.modern else self.transformer.ln_f(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(x)
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        if self.padded_vocab_size != self.vocab_size:
            pad = torch.arange(self.padded_vocab_size, device=logits.device) >= self.vocab_size
            logits = logits.masked_fill(pad, float("-inf"))
        return logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, logits_at: torch.Tensor | None = None):
        """(logits [B, T, padded_vocab], None) without targets (padded ids at -inf); with targets
        (None, mean fp32 cross-entropy over targets != -1): the logits are not kept for the caller,
        so the loss can work through them in fp32 chunks. With logits_at ([B, T] bool): (logits [N,
        padded_vocab] of those positions only, None), so scoring a few tokens of long rows skips the
        output layer elsewhere (HellaSwag)."""
        x = self._hidden(idx, None, self.training)
        if logits_at is not None:
            return self._logits(x[logits_at]), None
        if targets is None:
            return self._logits(x), None
        logits = self.lm_head(x).flatten(0, 1)  # in the compute dtype (bf16 under autocast)
        targets = targets.reshape(-1)
        ce_sum = functools.partial(_ce_sum, vocab_size=self.vocab_size, softcap=self.softcap,
                                   label_smoothing=self.label_smoothing if self.training else 0.0)
        if logits.dtype == torch.float32 or torch.compiler.is_compiling():
            # (compiled, the upcast fuses into the loss kernels, and checkpoint inside a compiled
            # graph is fragile across torch versions)
            loss_sum = ce_sum(logits, targets)
        else:
            # upcasting all logits at once (and keeping them for backward) costs 2x their size in
            # fp32; chunks recomputed in backward keep only CE_CHUNK_ROWS rows in fp32 at a time
            loss_sum = 0.0
            for s in range(0, logits.size(0), CE_CHUNK_ROWS):
                chunk = slice(s, s + CE_CHUNK_ROWS)
                loss_sum = loss_sum + checkpoint(ce_sum, logits[chunk], targets[chunk], use_reentrant=False)
        return None, loss_sum / (targets != -1).sum()

    # ---- generation -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eot_id: int | None = None,
                 generator: torch.Generator | None = None) -> Iterator[int]:
        """Yield up to max_new_tokens new token ids continuing the prompt `idx` ([T] or [1, T]),
        stopping after eot_id. Temperature 0 is greedy. Dropout is off whatever the module's mode.

        Tokens are fed one at a time through a KV cache. Once the context outgrows block_size, each
        step reruns the last block_size tokens (as nanoGPT does), so results match a cache-free loop."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.lm_head.weight.device).reshape(1, -1)
        if idx.size(1) == 0:
            raise ValueError("generate needs a prompt of at least one token")
        block = self.cfg.block_size
        context = idx[0, -block:].tolist()
        cache = None
        for _ in range(max_new_tokens):
            if cache is None or len(context) > block:
                # (re)start from the last block_size tokens
                context = context[-block:]
                cache = KVCache(self.cfg, 1, idx.device, self._cache_dtype())
                fresh = torch.tensor([context], dtype=torch.long, device=idx.device)
                x = self._hidden(fresh, cache, dropout_on=False)
            else:
                last = torch.tensor([[context[-1]]], dtype=torch.long, device=idx.device)
                x = self._hidden(last, cache, dropout_on=False)
            logits = self._logits(x[:, -1, :])[0].float()
            token = sample_token(logits, temperature, top_k, top_p, generator)
            yield token
            if eot_id is not None and token == eot_id:
                return
            context.append(token)
            if len(context) > block:
                cache = None  # full: the next step reruns the window (positions shift by one)

    def _cache_dtype(self) -> torch.dtype:
        if torch.is_autocast_enabled(self.lm_head.weight.device.type):
            return torch.get_autocast_dtype(self.lm_head.weight.device.type)
        return self.lm_head.weight.dtype

    # ---- surgery --------------------------------------------------------------------------------

    def crop_block_size(self, block_size: int) -> None:
        """Use a shorter context than the model was built with (e.g. GPT-2's 1024 -> 256)."""
        if not 0 < block_size <= self.cfg.block_size:
            raise UserError(f"block_size {block_size} must be between 1 and the model's {self.cfg.block_size}")
        self.cfg.block_size = block_size
        if self.modern:
            self.rope_cos, self.rope_sin = self.rope_cos[:block_size], self.rope_sin[:block_size]
        else:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())


def sample_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator | None) -> int:
    """One id from 1-D fp32 logits (padded ids already at -inf)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and 0 < top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the first token always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
