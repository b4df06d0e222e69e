"""`gptforge plan`: size a run before starting it, from the config alone (no model is built).

Parameters by component, FLOPs per token, tokens per iteration and for the run, the Chinchilla
comparison, the dataset's epochs, how much text a download would need, memory against a named GPU (with
a batch/accumulation split that keeps the global batch when it does not fit), and the time at an MFU.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from gptforge.analysis.gpus import ALLOCATOR_SLACK, CUDA_CONTEXT_GIB, REFERENCE_GPUS, Gpu, find_gpu
from gptforge.config import Config, ModelConfig
from gptforge.data.tokenizers import GPT2_VOCAB
from gptforge.errors import UserError
from gptforge.fmt import GIB
from gptforge.model.gpt import padded_vocab
from gptforge.train.budget import plan_iters
from gptforge.train.fit import batch_splits

CHINCHILLA_TOKENS_PER_PARAM = 20
DEFAULT_CHARS_PER_TOKEN = 4.8  # GPT-2 BPE on English web text, when the data cannot tell us
FINEWEB_SHARD_CHARS = 250e6  # about 250M characters per FineWeb-Edu shard (nanochat's shards)
DEFAULT_MFU = 0.40  # nanoGPT's GPT-2 124M compiled on one H100 measured 42.8% (docs/PERFORMANCE.md)

# Bytes of activations kept for backward per layer, per token, per unit of width (n_embd), 16-bit compute.
# Eager: measured on this model with torch.autograd.graph.saved_tensors_hooks (bf16 autocast, no dropout):
# gpt2 42, modern 54.5 (autocast keeps the residual stream and LayerNorm outputs in fp32). Compiled: the
# 34 of Korthikanti et al. 2022 (flash attention) for gpt2, the same 0.8 ratio for modern. fp32 runs are
# never compiled on CPU and were measured at 64 / 72. Dropout adds two 1-byte masks per layer.
ACT_BYTES = {("gpt2", "eager"): 42.0, ("modern", "eager"): 54.5, ("gpt2", "compiled"): 34.0,
             ("modern", "compiled"): 44.0, ("gpt2", "fp32"): 64.0, ("modern", "fp32"): 72.0}
# Bytes per logit element at the loss: compiled, the bf16 logits plus the fused fp32 upcast (6, which with
# the above reproduces the measured 40.8 GiB of GPT-2 124M at batch 64 x 1024 on an H100 within 3%);
# eager bf16, the logits and their gradient (the model upcasts in chunks); fp32, logits, log-softmax, grad.
LOGIT_BYTES = {"compiled": 6.0, "eager": 4.0, "fp32": 12.0}


@dataclass(frozen=True)
class ParamCounts:
    token_embedding: int
    position_embedding: int
    attention: int
    mlp: int
    norms: int
    head: int  # 0 when tied to the token embedding
    tied: bool

    @property
    def total(self) -> int:
        return (self.token_embedding + self.position_embedding + self.attention + self.mlp + self.norms
                + self.head)

    @property
    def non_embedding(self) -> int:
        """Without the embedding lookups (as model.GPT.num_params(non_embedding=True))."""
        return self.total - self.token_embedding - self.position_embedding

    def matmul(self, m: ModelConfig) -> int:
        """Weights used in a matrix multiply per token: the blocks' Linear weights and the head."""
        head = self.token_embedding if self.tied else self.head
        return 12 * m.n_layer * m.n_embd**2 + head

    def hidden_matrices(self, m: ModelConfig) -> int:
        """The 2-D weights inside blocks (what Muon optimises; the rest goes to AdamW)."""
        return 12 * m.n_layer * m.n_embd**2


def param_counts(m: ModelConfig, vocab_size: int) -> ParamCounts:
    """Parameters of model.GPT(m) by component, computed from the shapes alone."""
    d, L, vp = m.n_embd, m.n_layer, padded_vocab(vocab_size)
    if m.arch == "modern":  # RoPE (no table), RMSNorm and QK-norm without weights, no biases, untied head
        return ParamCounts(vp * d, 0, L * 4 * d * d, L * 8 * d * d, 0, vp * d, tied=False)
    b = 1 if m.bias else 0
    attention = L * (4 * d * d + b * 4 * d)  # c_attn (3d x d + 3d) and c_proj (d x d + d)
    mlp = L * (8 * d * d + b * 5 * d)  # c_fc (4d x d + 4d) and c_proj (d x 4d + d)
    norms = (2 * L + 1) * d * (1 + b)  # ln_1, ln_2 per block and ln_f: weight (+ bias)
    return ParamCounts(vp * d, m.block_size * d, attention, mlp, norms, 0, tied=True)


def flops_per_token(m: ModelConfig, counts: ParamCounts) -> float:
    """Training FLOPs per token: 6 x matmul weights + 12 x layers x width x context (attention)."""
    return 6.0 * counts.matmul(m) + 12.0 * m.n_layer * m.n_embd * m.block_size


# ---------------------------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class Memory:
    weights: float  # bytes
    gradients: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits

    @property
    def needed_gib(self) -> float:
        """What the card must hold: the tensors, the allocator's slack and the CUDA context."""
        return self.total * ALLOCATOR_SLACK / GIB + CUDA_CONTEXT_GIB


def memory_estimate(cfg: Config, counts: ParamCounts, vocab_size: int, micro_batch: int, mode: str,
                    processes: int = 1) -> Memory:
    """Peak memory of one process at the start of backward. mode: "compiled", "eager" (16-bit autocast)
    or "fp32". Weights, gradients and AdamW's two moments are fp32; Muon keeps one momentum per hidden
    matrix. With fsdp the three are sharded over the processes."""
    m = cfg.model
    n = counts.total
    if cfg.optim.optimizer == "muon":
        optimizer_states = 4.0 * counts.hidden_matrices(m) + 8.0 * (n - counts.hidden_matrices(m))
    else:
        optimizer_states = 8.0 * n
    shards = processes if cfg.train.fsdp and processes > 1 else 1
    tokens = micro_batch * m.block_size
    per_layer = ACT_BYTES[(m.arch, mode)] + (2.0 if m.dropout > 0 else 0.0)
    activations = m.n_layer * tokens * m.n_embd * per_layer
    activations += tokens * m.n_embd * (4 if mode == "fp32" else 2) * 4  # embeddings, final norm, head input
    logits = tokens * padded_vocab(vocab_size) * LOGIT_BYTES[mode]
    return Memory(4.0 * n / shards, 4.0 * n / shards, optimizer_states / shards, activations, logits)


def memory_mode(cfg: Config) -> str:
    """How a GPU run of this config computes: fp32, or 16-bit eager / compiled (auto: compiled on CUDA)."""
    if cfg.train.dtype == "float32":
        return "fp32"
    return "eager" if cfg.train.compile == "false" else "compiled"


def _first_fitting(cfg: Config, counts: ParamCounts, vocab_size: int, sequences: int, processes: int,
                  capacity_gib: float) -> tuple[tuple[int, int] | None, float | None]:
    """The split of `sequences` with the largest micro-batch that the memory model fits in `capacity_gib`, and what
    it needs; (None, None) when none fits."""
    mode = memory_mode(cfg)
    for split in batch_splits(sequences, processes):  # largest micro-batch first
        needed = memory_estimate(cfg, counts, vocab_size, split[0], mode, processes).needed_gib
        if needed <= capacity_gib:
            return split, needed
    return None, None


def resolve_auto_batch(cfg: Config, counts: ParamCounts, vocab_size: int, gpu: Gpu | None, processes: int,
                       notes: list[str]) -> Config:
    """batch_size "auto" as the launch would likely resolve it: on `gpu`, the largest split the memory model
    says fits; without a card, micro-batch 1 (the launch measures; --gpu NAME estimates)."""
    sequences = cfg.tokens_per_iter // cfg.model.block_size
    splits = batch_splits(sequences, processes) or [(1, sequences)]
    chosen = splits[-1]
    if gpu is not None:
        chosen = _first_fitting(cfg, counts, vocab_size, sequences, processes, gpu.capacity_gib)[0] or splits[-1]
        notes.append(f'batch_size "auto": on {gpu.label} the memory model picks micro-batch {chosen[0]} x '
                     f"{chosen[1]} accumulation; the launch measures the device and may pick another")
    else:
        notes.append('batch_size "auto": chosen at launch by trying the device; sized here at micro-batch 1 '
                     "(pass --gpu NAME for the split that fits that card)")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=chosen[0],
                                                              gradient_accumulation_steps=chosen[1]))


def fit_advice(cfg: Config, counts: ParamCounts, vocab_size: int, gpu: Gpu, processes: int) -> dict:
    """Whether the config fits `gpu`, and the micro-batch / accumulation split to use."""
    mode = memory_mode(cfg)
    tc = cfg.train
    sequences = tc.batch_size * tc.gradient_accumulation_steps
    usable = gpu.capacity_gib
    now = memory_estimate(cfg, counts, vocab_size, tc.batch_size, mode, processes).needed_gib
    best, best_needed = _first_fitting(cfg, counts, vocab_size, sequences, processes, usable)
    return {"mode": mode, "needed_gib": now, "capacity_gib": usable, "fits": now <= usable,
            "best_split": best, "best_needed_gib": best_needed, "sequences": sequences}


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataInfo:
    path: str
    train_tokens: int
    val_tokens: int
    vocab_size: int | None
    chars_per_token: float | None  # from the manifest's totals; None for a nanoGPT folder


def data_info(data_dir: str | Path) -> DataInfo:
    """Token counts (and characters per token where known) of a DATA_DIR or a nanoGPT data folder."""
    from gptforge.data.manifest import load_manifest

    path = Path(data_dir)
    if not path.is_dir():
        raise UserError(f"data directory {str(path)!r} does not exist")
    manifest = load_manifest(path)
    if manifest is not None:
        totals = manifest["totals"]
        tokens, chars = int(totals.get("tokens", 0)), int(totals.get("characters", 0))
        return DataInfo(str(path), int(totals["train_tokens"]), int(totals["val_tokens"]),
                        int(manifest["tokenizer"]["vocab_size"]), chars / tokens if tokens and chars else None)
    from gptforge.data.dataset import open_dataset  # a nanoGPT folder: counts from the files

    ds = open_dataset(path)
    return DataInfo(str(path), ds.train_tokens, ds.val_tokens, ds.vocab_size, None)


def download_need(tokens: float, chars_per_token: float | None) -> dict:
    """Raw text and FineWeb-Edu shards holding `tokens` tokens."""
    cpt = chars_per_token or DEFAULT_CHARS_PER_TOKEN
    chars = tokens * cpt
    return {"tokens": tokens, "chars_per_token": cpt, "measured": chars_per_token is not None, "chars": chars,
            "shards": math.ceil(chars / FINEWEB_SHARD_CHARS), "token_bytes": tokens * 2}


# ---------------------------------------------------------------------------------------------- the plan


def resolve_vocab(cfg: Config, vocab_size: int | None, data: DataInfo | None) -> tuple[int, str]:
    if vocab_size is not None and vocab_size <= 0:
        raise UserError(f"--vocab-size must be positive, got {vocab_size}")
    vocab, source = vocab_size, "--vocab-size"
    if vocab is None and cfg.model.vocab_size > 0:
        vocab, source = cfg.model.vocab_size, "config vocab_size"
    if vocab is None and data and data.vocab_size:
        vocab, source = data.vocab_size, f"the tokenizer of {data.path}"
    if vocab is None:
        return GPT2_VOCAB, "GPT-2's, the default"
    if data and data.vocab_size and vocab < data.vocab_size:
        raise UserError(
            f"vocab_size {vocab} ({source}) is smaller than the vocabulary of {data.path} ({data.vocab_size})"
        )
    return vocab, source


MFU_TEXT = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(%?)\s*(?:@\s*(\S.*?))?\s*$")


def parse_mfu(text) -> tuple[float, Gpu | None]:
    """(fraction, the card whose peak it is against, if not the one planned for) from --mfu: 0.4, 40%, or
    10%@A100, a figure against another card's peak, as nanoGPT prints it (always against an A100's 312 TFLOPS;
    10%@nanogpt says the same)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, ref = float(text), None
    else:
        m = MFU_TEXT.match(str(text))
        if not m:
            raise UserError(f"--mfu {text!r}: give a fraction (0.4), a percentage (40%) or a figure against another "
                            "card's peak (10%@A100: what nanoGPT prints, always against an A100)")
        value = float(m.group(1)) / (100 if m.group(2) else 1)
        name = m.group(3)
        ref = find_gpu("a100" if name and name.lower() == "nanogpt" else name) if name else None
    if not 0 < value <= 1:
        raise UserError(f"--mfu {text}: give a fraction between 0 and 1 (e.g. 0.4 for 40%)")
    return value, ref


def _real_mfu(mfu, gpu: str | None) -> tuple[float, dict | None]:
    """The MFU against the planned card's own peak, and how it was converted from another card's."""
    rate, ref = parse_mfu(mfu) if mfu is not None else (DEFAULT_MFU, None)
    if ref is None:
        return rate, None
    if not gpu:
        raise UserError(f"--mfu {mfu}: a figure against the {ref.label}'s peak is converted to the card it was "
                        "measured on: name that card with --gpu")
    card = find_gpu(gpu)
    if not (ref.peak_flops and card.peak_flops):
        raise UserError(f"--mfu {mfu}: the peak FLOP/s of {ref.label if not ref.peak_flops else card.label} is not "
                        "in gptforge's table")
    real = rate * ref.peak_flops / card.peak_flops
    if real > 1:
        raise UserError(f"--mfu {mfu} on the {card.label} would be {real:.0%} of its peak: was it measured on "
                        "another card?")
    return real, {"given": rate, "reference": ref, "card": card}


def make_plan(cfg: Config, data: str | None = None, gpu: str | None = None, vocab_size: int | None = None,
              mfu: float | str | None = None, processes: int = 1) -> dict:
    """Every number `gptforge plan` prints, in one dict (tests and other tools read it)."""
    if processes < 1:
        raise UserError(f"--processes must be at least 1, got {processes}")
    rate, converted = _real_mfu(mfu, gpu)
    notes = []
    data_dir = data or cfg.data.data or None
    info = None
    if data_dir:
        if data is None and not Path(data_dir).is_dir():
            notes.append(f"the config's data directory {data_dir} does not exist yet; sizing without it")
        else:
            info = data_info(data_dir)
    vocab, vocab_source = resolve_vocab(cfg, vocab_size, info)
    m = cfg.model
    counts = param_counts(m, vocab)
    card = find_gpu(gpu) if gpu else None
    if cfg.train.batch_size == "auto":
        cfg = resolve_auto_batch(cfg, counts, vocab, card, processes, notes)
    tc = cfg.train
    if tc.gradient_accumulation_steps % processes:
        notes.append(f"gradient_accumulation_steps ({tc.gradient_accumulation_steps}) counts global micro-batches and "
                     f"must be divisible by --processes ({processes}); train will refuse this")
    tokens_per_iter = cfg.tokens_per_iter
    iters = plan_iters(cfg, counts.total)
    planned = iters * tokens_per_iter
    fpt = flops_per_token(m, counts)
    chinchilla = CHINCHILLA_TOKENS_PER_PARAM * counts.total
    plan = {
        "arch": m.arch, "vocab_size": vocab, "vocab_source": vocab_source, "padded_vocab": padded_vocab(vocab),
        "params": counts, "total_params": counts.total, "non_embedding_params": counts.non_embedding,
        "matmul_params": counts.matmul(m), "flops_per_token": fpt, "tokens_per_iter": tokens_per_iter,
        "processes": processes, "max_iters": iters, "planned_tokens": planned,
        "tokens_per_param": planned / counts.total, "chinchilla_tokens": chinchilla,
        "chinchilla_ratio": planned / chinchilla, "total_flops": fpt * planned, "data": info, "notes": notes,
        "config": cfg,
    }
    if info:
        plan["epochs"] = planned / info.train_tokens if info.train_tokens else math.inf
    # text to download for the planned tokens seen once; with data, only what the dataset lacks
    plan["download"] = download_need(planned, info.chars_per_token if info else None)
    if info:
        plan["download_missing"] = download_need(max(0, planned - info.train_tokens), info.chars_per_token)
    mode = memory_mode(cfg)
    plan["memory_mode"] = mode
    plan["memory"] = {k: memory_estimate(cfg, counts, vocab, tc.batch_size, k, processes)
                      for k in (("compiled", "eager") if mode != "fp32" else ("fp32",))}
    plan["mfu"], plan["mfu_converted"] = rate, converted
    if card:
        plan["gpu"] = card
        plan["fit"] = fit_advice(cfg, counts, vocab, card, processes)
        plan["times"] = {card.label: _seconds(plan["total_flops"], card, rate, processes)}
    else:
        plan["times"] = {c.label: _seconds(plan["total_flops"], c, rate, processes)
                         for c in map(find_gpu, REFERENCE_GPUS)}
    return plan


def _seconds(total_flops: float, gpu: Gpu, mfu: float, processes: int) -> float | None:
    if not gpu.peak_flops:
        return None
    return total_flops / (gpu.peak_flops * mfu * processes)


SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([MB])\b")
# a size is a claim about the model when parameters or the model follow it ("124M model", "1.5B params",
# "a 350M-parameter GPT") or a model's name comes just before it ("GPT-2 (124M)", "gpt2-xl 1.5B"); sizes of
# tokens, batches or datasets ("FineWeb 10B", "~0.5M" tokens per batch, "300B") are not
PARAMS_AFTER = re.compile(r"[\s-]*(?:param|parameter|model|weights|gpt|llm)", re.IGNORECASE)
MODEL_BEFORE = re.compile(r"(?:gpt-?\d*(?:-\w+)?|llama\S*|model)\s*[(\[]?\s*$", re.IGNORECASE)


def claimed_sizes(config_path: str | Path) -> list[tuple[int, float]]:
    """(line, parameters) for each model size a comment of the config file claims, e.g. '# the 125M model'."""
    claims = []
    for number, line in enumerate(Path(config_path).read_text(encoding="utf-8").splitlines(), start=1):
        comment = line.partition("#")[2]
        for m in SIZE.finditer(comment):
            if PARAMS_AFTER.match(comment, m.end()) or MODEL_BEFORE.search(comment[:m.start()]):
                claims.append((number, float(m.group(1)) * (1e6 if m.group(2) == "M" else 1e9)))
    return claims
