"""gptforge's modern GPT in transformers (shipped in the exported model folder; needs torch and transformers only).

The function of gptforge's model/gpt.py, op for op: token embedding, RMSNorm (no weights); per block, attention
with q and k RMS-normed and rotated (RoPE), then a ReLU² MLP, each added to the residual stream after an
RMSNorm; a final RMSNorm, an untied head and a tanh soft-cap on the logits. No biases. The embedding and head
keep gptforge's vocabulary padded to a multiple of 64; the padded logits are cut off.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_gptforge import GptforgeConfig

CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(positions, head_dim, base):
    """cos and sin [B, T, 1, 1, head_dim] for positions [B, T], sin signed so rotation is x*cos + swap(x)*sin."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    angles = positions.float()[..., None] * inv_freq
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), -1)[:, :, None, None], torch.cat((sin, -sin), -1)[:, :, None, None]


def apply_rotary(x, cos, sin):
    half = x.size(-1) // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.n_head, self.layer = config.n_head, layer
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, rotary, cache, mask):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k = apply_rotary(rms_norm(qkv[:, :, :2]), *rotary).unbind(dim=2)
        q, k, v = (t.to(qkv.dtype).transpose(1, 2) for t in (q, k, qkv[:, :, 2]))  # [B, H, T, D]
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        if mask is None:  # no padding: plain causal attention (one new token sees everything cached)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        h = F.relu(self.c_fc(x))
        return self.c_proj(h * h)


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn = Attention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, rotary, cache, mask):
        x = x + self.attn(rms_norm(x), rotary, cache, mask)
        return x + self.mlp(rms_norm(x))


class GptforgePreTrainedModel(PreTrainedModel):
    config_class = GptforgeConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["Block"]
    _supports_cache_class = True

    def _init_weights(self, module):  # only for weights a checkpoint lacks; an export has them all
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)


class GptforgeForCausalLM(GptforgePreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer))))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                use_cache=None, labels=None, logits_to_keep=0, **kwargs):
        B, T = input_ids.shape
        cache = cache if cache is not None else past_key_values  # (transformers 5 says `cache`, 4 `past_key_values`)
        if cache is None and (use_cache if use_cache is not None else self.config.use_cache):
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        rotary = rotary_tables(position_ids, self.config.n_embd // self.config.n_head, self.config.rope_base)
        mask, padded = None, attention_mask is not None and not bool(attention_mask.all())
        if padded or (past and T > 1):  # else SDPA's own causal mask is the right one, and the fastest
            keys = torch.arange(past + T, device=input_ids.device)
            queries = torch.arange(past, past + T, device=input_ids.device)[:, None]
            allowed = (keys <= queries)[None]
            if padded:  # each query sees the real keys up to its own position, and itself (no row left empty)
                allowed = (allowed & attention_mask[:, None, -(past + T):].bool()) | (keys == queries)
            mask = allowed[:, None]  # [B or 1, 1, T, past + T]
        x = rms_norm(self.transformer.wte(input_ids))
        for block in self.transformer.h:
            x = block(x, rotary, cache, mask)
        x = rms_norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x)
        if self.config.logit_softcap:
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        logits = logits[..., :self.config.vocab_size]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache})
