"""Configuration: small dataclasses, loaded from TOML (never executed) and `--key=value` overrides.

Keys are flat (nanoGPT's names where nanoGPT has one) and unique across the groups, so a user writes
`--n_layer=6` or `n_layer = 6` without knowing which group owns the key. A TOML file may also group
keys under [model], [data], [optim] or [train]; the groups are flattened on load.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from gptforge.errors import UserError


@dataclass
class ModelConfig:
    arch: str = "gpt2"  # "gpt2" (GPT-2 exactly, loads HF weights) or "modern" (RoPE, RMSNorm, QK-norm, ReLU²)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 0  # 0: taken from the dataset's tokenizer
    dropout: float = 0.0
    bias: bool = True  # gpt2 arch only; the modern arch has no biases
    logit_softcap: float = 15.0  # modern arch only; 0 disables
    rope_base: float = 10000.0  # modern arch only

    def validate(self) -> None:
        if self.arch not in ("gpt2", "modern"):
            raise UserError(f"config key 'arch': {self.arch!r} is not one of 'gpt2', 'modern'")
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, key) <= 0:
                raise UserError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise UserError(f"config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.arch == "modern" and (self.n_embd // self.n_head) % 2:
            raise UserError("config: the modern arch needs an even head size (n_embd / n_head) for rotary positions")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"config key 'dropout' must be in [0, 1), got {self.dropout}")


@dataclass
class DataConfig:
    data: str = ""  # a DATA_DIR made by `gptforge prepare`, or a nanoGPT data folder (train.bin, val.bin)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # "adamw", or "muon" (Muon for hidden matrices, AdamW for the rest)
    learning_rate: float = 6e-4
    min_lr: float = 6e-5
    schedule: str = "cosine"  # "cosine" (warmup + cosine to min_lr), "wsd" (warmup-stable-decay), "constant"
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0: the run's max_iters
    decay_fraction: float = 0.2  # wsd: the share of the run spent decaying to min_lr
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables
    muon_lr: float = 0.02
    muon_momentum: float = 0.95

    def validate(self) -> None:
        if self.optimizer not in ("adamw", "muon"):
            raise UserError(f"config key 'optimizer': {self.optimizer!r} is not one of 'adamw', 'muon'")
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise UserError(f"config key 'schedule': {self.schedule!r} is not one of 'cosine', 'wsd', 'constant'")
        if self.learning_rate <= 0 or not math.isfinite(self.learning_rate):
            raise UserError(f"config key 'learning_rate' must be a positive number, got {self.learning_rate}")
        if self.min_lr < 0 or self.min_lr > self.learning_rate:
            raise UserError(f"config key 'min_lr' must be between 0 and learning_rate, got {self.min_lr}")
        if self.warmup_iters < 0:
            raise UserError(f"config key 'warmup_iters' must be >= 0, got {self.warmup_iters}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise UserError(f"config key 'decay_fraction' must be in [0, 1], got {self.decay_fraction}")


@dataclass
class TrainConfig:
    out: str = "runs/run"  # the run directory
    init_from: str = "scratch"  # "scratch", "resume", or a local Hugging Face GPT-2 directory
    batch_size: int | str = 12  # sequences per micro-batch (per process); "auto": the largest that fits
    gradient_accumulation_steps: int = 1  # global micro-batches per step (derived when tokens_per_iter is set)
    tokens_per_iter: int = 0  # tokens per optimizer step, all processes; 0: batch_size x block_size x accumulation
    max_iters: int = 0  # 0: derived from max_tokens, else from tokens_per_param
    max_tokens: int = 0
    tokens_per_param: float = 20.0  # Chinchilla's 20 tokens per parameter
    max_seconds: float = 0.0  # stop (with a checkpoint) after this much training time; 0 = no limit
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    always_save_checkpoint: bool = True
    keep_last: int = 2  # checkpoints kept besides the best; at least 2 since the newest may be half-written
    device: str = "auto"  # auto: cuda, then mps, then cpu
    dtype: str = "auto"  # auto: bfloat16 where supported, float16 on older GPUs, float32 on CPU
    compile: str = "auto"  # auto: on for CUDA, off elsewhere; "true" / "false"
    deterministic: bool = False  # deterministic GPU kernels (slower): runs and resumes bit-equal on a GPU too
    seed: int = 1337
    peak_flops: float = 0.0  # FLOP/s for MFU; 0: look the device up in the table
    max_nan_skips: int = 5  # non-finite losses in a row before the run stops with a checkpoint
    spike_sigma: float = 6.0  # report a loss this many sigma above the recent window
    skip_spikes: bool = False  # also skip the optimizer step on a reported spike
    sample_prompts: list = field(
        default_factory=lambda: ["The capital of France is", "If yesterday was Friday, then tomorrow will be"]
    )
    sample_tokens: int = 24  # greedy tokens per prompt at each eval; 0 disables
    fsdp: bool = False
    wandb_log: bool = False
    wandb_project: str = "gptforge"
    wandb_run_name: str = ""
    tensorboard: bool = False

    def validate(self) -> None:
        for key in ("gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, key) <= 0:
                raise UserError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        if self.batch_size != "auto" and self.batch_size <= 0:
            raise UserError(f"config key 'batch_size' must be positive or \"auto\", got {self.batch_size}")
        if self.tokens_per_iter < 0:
            raise UserError(f"config key 'tokens_per_iter' must be >= 0, got {self.tokens_per_iter}")
        if self.keep_last < 2:
            raise UserError(
                f"config key 'keep_last' must be at least 2 (got {self.keep_last}): "
                "the newest checkpoint may be half-written when a crash comes"
            )
        if self.compile not in ("auto", "true", "false"):
            raise UserError(f"config key 'compile': {self.compile!r} is not one of auto, true, false")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"config key 'dtype': {self.dtype!r} is not one of auto, float32, bfloat16, float16")


GROUPS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        self.model.validate()
        self.optim.validate()
        self.train.validate()
        self._derive_accumulation()
        return self

    def _derive_accumulation(self) -> None:
        """With tokens_per_iter set, the step is tokens_per_iter / block_size sequences: a fixed batch_size
        fixes gradient_accumulation_steps; "auto" leaves both to the launch (train/fit.py)."""
        tc, block = self.train, self.model.block_size
        if not tc.tokens_per_iter:
            if tc.batch_size == "auto":
                raise UserError('config key \'batch_size\' = "auto" needs tokens_per_iter (the tokens of one optimizer '
                                "step, all processes together), e.g. tokens_per_iter = 524288")
            return
        if tc.tokens_per_iter % block:
            raise UserError(f"config key 'tokens_per_iter' ({tc.tokens_per_iter}) must be a multiple of block_size "
                            f"({block})")
        if tc.batch_size == "auto":
            return
        sequences = tc.tokens_per_iter // block
        if sequences % tc.batch_size:
            raise UserError(f"config key 'tokens_per_iter' ({tc.tokens_per_iter}) is {sequences} sequences of "
                            f"{block}, not a multiple of batch_size ({tc.batch_size})")
        accum = sequences // tc.batch_size
        if tc.gradient_accumulation_steps not in (1, accum):
            raise UserError(f"config: tokens_per_iter {tc.tokens_per_iter} with batch_size {tc.batch_size} means "
                            f"gradient_accumulation_steps {accum}, not {tc.gradient_accumulation_steps}; set one of "
                            "the two")
        tc.gradient_accumulation_steps = accum

    @property
    def tokens_per_iter(self) -> int:
        """Tokens in one optimizer step, all processes together (gradient_accumulation_steps is global)."""
        if self.train.tokens_per_iter:
            return self.train.tokens_per_iter
        return self.train.batch_size * self.model.block_size * self.train.gradient_accumulation_steps

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for group in GROUPS:
            out.update(dataclasses.asdict(getattr(self, group)))
        return out


def _key_owners() -> dict[str, str]:
    owners = {}
    for group, cls in GROUPS.items():
        for f in fields(cls):
            assert f.name not in owners, f"config key {f.name} is defined twice"
            owners[f.name] = group
    return owners


KEY_OWNERS = _key_owners()


def unknown_key_error(key: str, where: str = "") -> UserError:
    close = difflib.get_close_matches(key, KEY_OWNERS, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    place = f" in {where}" if where else ""
    return UserError(f"unknown config key '{key}'{place}{hint}")


def _field_type(key: str):
    cls = GROUPS[KEY_OWNERS[key]]
    return get_type_hints(cls)[key]


def _coerce(key: str, value: Any, where: str = "") -> Any:
    """Turn a TOML value or a command-line string into the key's type, or say why not."""
    typ = _field_type(key)
    if key == "batch_size":  # a number, or "auto"
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        typ = int
    if get_origin(typ) is Union:  # Optional[X]
        typ = next(t for t in get_args(typ) if t is not type(None))
    place = f" ({where})" if where else ""
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            number = float(str(value).replace("_", ""))  # accepts 5e6 and 5_000_000
            if number != int(number):
                raise ValueError
            return int(number)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(str(value).replace("_", "")) if isinstance(value, str) else float(value)
        if typ is list or get_origin(typ) is list:
            if isinstance(value, list):
                return [str(v) for v in value]
            return [part for part in str(value).split("|") if part]  # --sample_prompts="a|b"
        if typ is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value).lower() if key == "compile" and isinstance(value, bool) else str(value)
    except (ValueError, TypeError):
        pass
    name = getattr(typ, "__name__", str(typ))
    raise UserError(f"config key '{key}'{place}: {value!r} is not a valid {name}")


def _flatten_toml(doc: dict, where: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in GROUPS:
                raise UserError(f"unknown config section [{key}] in {where}; sections are {', '.join(GROUPS)}")
            for sub_key, sub_value in value.items():
                if sub_key not in KEY_OWNERS:
                    raise unknown_key_error(sub_key, where)
                flat[sub_key] = sub_value
        else:
            if key not in KEY_OWNERS:
                raise unknown_key_error(key, where)
            flat[key] = value
    return flat


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    return _flatten_toml(doc, str(path))


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--key=value` (or `key=value`) strings to a dict; a bare `--flag` means true."""
    out: dict[str, Any] = {}
    for arg in args:
        text = arg[2:] if arg.startswith("--") else arg
        key, sep, value = text.partition("=")
        key = key.replace("-", "_")
        if key not in KEY_OWNERS:
            raise unknown_key_error(key, "the command line")
        out[key] = value if sep else "true"
    return out


def build_config(values: dict[str, Any], base: Config | None = None, where: str = "") -> Config:
    """A validated Config from flat key/values applied over `base` (defaults when None)."""
    cfg = dataclasses.replace(base) if base else Config()
    groups = {g: dataclasses.asdict(getattr(cfg, g)) for g in GROUPS}
    for key, value in values.items():
        if key not in KEY_OWNERS:
            raise unknown_key_error(key, where)
        groups[KEY_OWNERS[key]][key] = _coerce(key, value, where)
    cfg = Config(**{g: GROUPS[g](**groups[g]) for g in GROUPS})
    return cfg.validate()


def load_config(path: str | None = None, overrides: list[str] | None = None, extra: dict | None = None) -> Config:
    """The resolved config: defaults, then the TOML file, then `extra`, then command-line overrides."""
    values: dict[str, Any] = {}
    if path:
        values.update(read_toml(path))
    values.update(extra or {})
    values.update(parse_overrides(overrides or []))
    return build_config(values, where=str(path) if path else "")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def to_toml(cfg: Config) -> str:
    lines = ["# The resolved configuration of this run, written by gptforge."]
    for group in GROUPS:
        lines.append(f"\n[{group}]")
        for key, value in dataclasses.asdict(getattr(cfg, group)).items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def diff_configs(old: dict[str, Any], new: dict[str, Any], keys: list[str] | None = None) -> list[str]:
    """Human-readable `key: old -> new` lines for the keys that differ."""
    keys = keys if keys is not None else sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
