"""Hugging Face GPT-2 <-> gptforge's gpt2 arch, without needing `transformers` at run time; and the modern arch
out, as a transformers model whose code (hf_modern/) ships in the exported folder.

The two share parameter names (both descend from OpenAI's GPT-2) up to a "transformer." prefix; HF
stores the four projection matrices as Conv1D weights, [in, out], where nn.Linear keeps [out, in].
gptforge pads the vocabulary to a multiple of 64; HF does not, so the padded rows are dropped on the
way out and zero on the way in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptforge.config import ModelConfig
from gptforge.data.tokenizers import GPT2_VOCAB
from gptforge.errors import UserError

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BLOCK_TENSORS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias")
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # both are GPT-2's tanh approximation
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's, which the gpt2 arch uses


def hf_tensor_names(n_layer: int) -> list[str]:
    """Every tensor of a GPT2LMHeadModel checkpoint (the head is tied to wte, so not stored)."""
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        names += [f"transformer.h.{i}.{t}" for t in BLOCK_TENSORS]
    return names + ["transformer.ln_f.weight", "transformer.ln_f.bias"]


def _is_conv1d(name: str) -> bool:
    return name.startswith("transformer.h.") and name.endswith(CONV1D)


# ---- config ---------------------------------------------------------------------------------------

def model_config_from_hf(doc: dict, where: str) -> ModelConfig:
    """A gpt2-arch ModelConfig for an HF GPT-2 config.json, or a UserError naming what does not match."""
    if doc.get("model_type") != "gpt2":
        raise UserError(f"{where}: model_type is {doc.get('model_type')!r}, not 'gpt2'; only GPT-2 checkpoints load")
    n_embd, n_layer, n_head = doc.get("n_embd", 768), doc.get("n_layer", 12), doc.get("n_head", 12)
    checks = [
        ("activation_function", doc.get("activation_function", "gelu_new") in TANH_GELUS, "gelu_new"),
        ("layer_norm_epsilon", doc.get("layer_norm_epsilon", LAYER_NORM_EPS) == LAYER_NORM_EPS, LAYER_NORM_EPS),
        ("n_inner", doc.get("n_inner") in (None, 4 * n_embd), f"null or {4 * n_embd}"),
        ("scale_attn_weights", doc.get("scale_attn_weights", True) is True, True),
        ("scale_attn_by_inverse_layer_idx", doc.get("scale_attn_by_inverse_layer_idx", False) is False, False),
        ("tie_word_embeddings", doc.get("tie_word_embeddings", True) is True, True),
    ]
    for key, ok, wanted in checks:
        if not ok:
            raise UserError(
                f"{where}: {key} = {doc.get(key)!r} is not supported (the gpt2 arch is GPT-2 with {key} = {wanted})"
            )
    cfg = ModelConfig(arch="gpt2", n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                      block_size=doc.get("n_positions", doc.get("n_ctx", 1024)),
                      vocab_size=doc.get("vocab_size", GPT2_VOCAB), bias=True, dropout=0.0)
    try:
        cfg.validate()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if cfg.vocab_size <= 0:
        raise UserError(f"{where}: vocab_size must be positive, got {cfg.vocab_size}")
    return cfg


def hf_config_from_model(cfg: ModelConfig, eot_id: int | None) -> dict:
    """config.json for a GPT2LMHeadModel equal to a gpt2-arch gptforge model."""
    doc = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "layer_norm_epsilon": LAYER_NORM_EPS, "initializer_range": 0.02,
        "attn_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "resid_pdrop": cfg.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "use_cache": True, "torch_dtype": "float32",
    }
    if eot_id is not None:
        doc["bos_token_id"] = doc["eos_token_id"] = eot_id
    return doc


# ---- tensors --------------------------------------------------------------------------------------

def gptforge_state_from_hf(tensors: dict[str, torch.Tensor], cfg: ModelConfig, padded_vocab_size: int,
                           where: str) -> dict[str, torch.Tensor]:
    """An HF GPT-2 state dict (with or without the "transformer." prefix) as gpt2-arch weights, fp32."""
    plain = {}
    for name, tensor in tensors.items():
        if name == "lm_head.weight":
            continue  # tied to wte
        if not name.startswith("transformer."):
            name = "transformer." + name  # GPT2Model checkpoints (e.g. the original "gpt2") lack the prefix
        plain[name] = tensor
    missing = [n for n in hf_tensor_names(cfg.n_layer) if n not in plain]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{where}: missing tensors {', '.join(missing[:3])}{more}")
    out = {}
    for name in hf_tensor_names(cfg.n_layer):
        tensor = plain[name].to(torch.float32)
        out[name] = tensor.t().contiguous() if _is_conv1d(name) else tensor
    wte = out["transformer.wte.weight"]
    if tuple(wte.shape) != (cfg.vocab_size, cfg.n_embd):
        raise UserError(f"{where}: transformer.wte.weight has shape {tuple(wte.shape)}, config says "
                        f"({cfg.vocab_size}, {cfg.n_embd})")
    padded = torch.zeros(padded_vocab_size, cfg.n_embd)
    padded[:cfg.vocab_size] = wte
    out["transformer.wte.weight"] = padded
    out["lm_head.weight"] = padded
    return out


def hf_state_from_gptforge(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """gpt2-arch weights as an HF GPT2LMHeadModel state dict: fp32, contiguous, no shared storage,
    biases that the model was built without written as zeros (which is what they are)."""
    out = {}
    for name in hf_tensor_names(cfg.n_layer):
        if name in state:
            tensor = state[name].detach().to("cpu", torch.float32)
        elif name.endswith(".bias"):
            # a bias=False model: Linear weights are [out, in] and norm weights [d], so size = shape[0]
            tensor = torch.zeros(state[name[:-len("bias")] + "weight"].shape[0])
        else:
            raise KeyError(name)
        if name == "transformer.wte.weight":
            tensor = tensor[:cfg.vocab_size]
        out[name] = (tensor.t() if _is_conv1d(name) else tensor).contiguous().clone()
    return out


# ---- loading --------------------------------------------------------------------------------------

def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index, pickled = (directory / "model.safetensors", directory / "model.safetensors.index.json",
                              directory / "pytorch_model.bin")
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            tensors = {}
            for shard in shards:
                tensors.update(load_file(str(directory / shard)))
            return tensors
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{directory}: cannot read the safetensors weights ({e})") from None
    if pickled.is_file():
        try:
            state = torch.load(pickled, map_location="cpu", weights_only=True)  # never runs pickled code
        except Exception as e:  # noqa: BLE001 - any failure here means "not a plain tensor file"
            raise UserError(f"{pickled}: not a plain PyTorch state dict (refused to unpickle: {e})") from None
        if not isinstance(state, dict):
            raise UserError(f"{pickled}: holds a {type(state).__name__}, not a state dict")
        return state
    raise UserError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_hf_gpt2(path: str, *, dropout: float = 0.0, block_size: int | None = None):
    """A gpt2-arch GPT holding the weights of a local Hugging Face GPT-2 directory (config.json plus
    model.safetensors, sharded safetensors or pytorch_model.bin). block_size may crop the context."""
    from gptforge.model.gpt import GPT

    directory = Path(path)
    if not directory.is_dir():
        raise UserError(f"{path}: not a directory (init_from wants 'scratch', 'resume' or a local HF GPT-2 directory)")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"{directory}: no config.json (is this a Hugging Face model directory?)")
    try:
        doc = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{config_path}: not a JSON object")
    cfg = model_config_from_hf(doc, str(config_path))
    cfg.dropout = dropout
    model = GPT(cfg)
    state = gptforge_state_from_hf(_read_weights(directory), cfg, model.padded_vocab_size, str(directory))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, tensor in state.items():
        if tuple(tensor.shape) != expected[name]:
            raise UserError(f"{directory}: tensor {name} has shape {tuple(tensor.shape)}, config.json implies "
                            f"{expected[name]}")
    model.load_state_dict(state, strict=True)
    if block_size is not None and block_size != cfg.block_size:
        model.crop_block_size(block_size)
    return model


# ---- the modern arch --------------------------------------------------------------------------------

MODERN_CODE = ("configuration_gptforge.py", "modeling_gptforge.py")  # in hf_modern/, copied into the export


def modern_hf_config(cfg: ModelConfig, padded_vocab_size: int, eot_id: int | None) -> dict:
    """config.json of a modern-arch export: GptforgeConfig's fields and where transformers finds the code."""
    doc = {
        "architectures": ["GptforgeForCausalLM"], "model_type": "gptforge",
        "auto_map": {"AutoConfig": "configuration_gptforge.GptforgeConfig",
                     "AutoModelForCausalLM": "modeling_gptforge.GptforgeForCausalLM"},
        "vocab_size": cfg.vocab_size, "padded_vocab_size": padded_vocab_size, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
        "logit_softcap": cfg.logit_softcap, "rope_base": cfg.rope_base, "tie_word_embeddings": False,
        "use_cache": True, "torch_dtype": "float32",
    }
    if eot_id is not None:
        doc["bos_token_id"] = doc["eos_token_id"] = eot_id
    return doc


def modern_config_from_hf(doc: dict) -> ModelConfig:
    return ModelConfig(arch="modern", n_layer=doc["n_layer"], n_head=doc["n_head"], n_embd=doc["n_embd"],
                       block_size=doc["block_size"], vocab_size=doc["vocab_size"], bias=False, dropout=0.0,
                       logit_softcap=doc["logit_softcap"], rope_base=doc["rope_base"])


def modern_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The modern arch's weights under the same names (the shipped code mirrors model/gpt.py), fp32, unshared."""
    return {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in state.items()}
