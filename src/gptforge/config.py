"""Configuration: small dataclasses, loaded from TOML (never executed) and `--key=value` overrides.

Keys are flat (nanoGPT's names where nanoGPT has one) and unique across the groups, so a user writes
`--n_layer=6` or `n_layer = 6` without knowing which group owns the key. Each field carries its own
documentation (`key(default, help, range=..., choices=...)`): `train --help` prints it and validation
checks it, so the two cannot drift. A TOML file may group keys under sections named as the help groups
([model], [optimizer], [schedule], [training], [data], [logging]) or as earlier versions wrote them
([optim], [train]); sections are flattened on load.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from gptforge.errors import UserError


@dataclass(frozen=True)
class Range:
    """An interval a numeric key must lie in, written as in mathematics: "[1, 1024]", "[0, 1)", "(0, inf)"."""

    text: str

    def bounds(self) -> tuple[float, float, bool, bool]:
        low, high = (_number(part.strip(" [()]")) for part in self.text.split(","))
        return low, high, self.text[0] == "(", self.text[-1] == ")"

    def contains(self, value: float) -> bool:
        low, high, low_open, high_open = self.bounds()
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below


def _number(text: str) -> float:
    if "^" in text:  # 2^63: exact powers read better than 9223372036854775808
        base, exponent = text.split("^")
        return int(base) ** int(exponent)
    return int(text) if text.lstrip("-").isdigit() else float(text)


def check_number(name: str, value: float, allowed: Range, integer: bool = False) -> None:
    """Raise a one-line UserError unless `value` is a finite number inside `allowed`."""
    if not (integer or math.isfinite(value)):
        raise UserError(f"{name} must be a finite number, got {value}")
    if allowed.contains(value):
        return
    low, high, low_open, _ = allowed.bounds()
    if math.isinf(high):
        rule = f"at least {low}" if integer else f"> {low}" if low_open else f">= {low}"
    else:
        rule = f"in {allowed.text}"
    raise UserError(f"{name} must be {rule}, got {value}")


def key(default: Any = None, help: str = "", *, group: str = "", range: str = "", choices: tuple = (),
        why: str = "", factory=None, auto: bool = False):
    """A documented config field: its help line, help group, allowed range or choices (all shown by --help);
    auto=True also accepts the word "auto" (the value is chosen at launch)."""
    meta = {"help": help, "group": group, "range": Range(range) if range else None, "choices": choices, "why": why,
            "auto": auto}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


SIZE = "[1, 1e12]"  # steps and intervals: finite, far beyond any run
COUNT = "[0, 1e12]"


class _Group:
    """Checks every field against its documented range or choices, then the group's own rules."""

    def validate(self) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("auto") and value == "auto":
                continue
            if meta.get("range") is not None:
                try:
                    check_number(f"config key '{f.name}'", value, meta["range"], integer=isinstance(value, int))
                except UserError as e:
                    raise UserError(f"{e}{': ' + meta['why'] if meta['why'] else ''}") from None
            if meta.get("choices") and value not in meta["choices"]:
                raise UserError(f"config key '{f.name}': {value!r} is not one of {', '.join(meta['choices'])}")
        self.check()

    def check(self) -> None:
        """Rules between keys of the group (none by default)."""


@dataclass
class ModelConfig(_Group):
    arch: str = key("gpt2", "gpt2: GPT-2 exactly (loads HF weights); modern: RoPE, RMSNorm, QK-norm, ReLU², "
                    "untied head, logit soft-cap, no biases", choices=("gpt2", "modern"))
    n_layer: int = key(12, "transformer blocks", range="[1, 1024]")
    n_head: int = key(12, "attention heads per block (must divide n_embd)", range="[1, 1024]")
    n_embd: int = key(768, "width of the residual stream", range="[1, 65536]")
    block_size: int = key(1024, "context length in tokens; training blocks cross document boundaries",
                          range="[1, 1048576]")
    vocab_size: int = key(0, "0: the dataset's tokenizer; larger pads the embedding (e.g. 50304)",
                          range="[0, 2^32]")
    dropout: float = key(0.0, "dropout probability (0 for pretraining, 0.1+ to fight overfitting)", range="[0, 1)")
    bias: bool = key(True, "gpt2 arch: biases in Linear and LayerNorm layers (the modern arch has none)")
    logit_softcap: float = key(15.0, "modern arch: cap |logits| smoothly at this value; 0 disables",
                               range="[0, 1e6]")
    rope_base: float = key(10000.0, "modern arch: rotary position base", range="(0, 1e12]")

    def check(self) -> None:
        if self.n_embd % self.n_head:
            raise UserError(f"config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.arch == "modern" and (self.n_embd // self.n_head) % 2:
            raise UserError("config: the modern arch needs an even head size (n_embd / n_head) for rotary positions")


@dataclass
class DataConfig(_Group):
    data: str = key("", "a DATA_DIR made by `gptforge prepare`, or a nanoGPT data folder (train.bin, val.bin)")
    data_changed: str = key("refuse", "resume on a dataset that is not the checkpoint's (nor grown from it)? ok: "
                            "yes, from a fresh data order (this launch only)", choices=("refuse", "ok"))


@dataclass
class OptimConfig(_Group):
    optimizer: str = key("adamw", "adamw, or muon (Muon for hidden matrices, AdamW for the rest)",
                         choices=("adamw", "muon"))
    learning_rate: float = key(6e-4, "peak AdamW learning rate", range="[0, 10]")
    min_lr: float = key(6e-5, "learning rate at the end of the decay (at most learning_rate)", group="schedule",
                        range="[0, 10]")
    schedule: str = key("cosine", "cosine: warmup then cosine to min_lr; wsd: warmup-stable-decay; constant",
                        group="schedule", choices=("cosine", "wsd", "constant"))
    warmup_iters: int = key(100, "steps of linear warmup from 0", group="schedule", range=COUNT)
    lr_decay_iters: int = key(0, "step where the decay reaches min_lr; 0: the run's max_iters", group="schedule",
                              range=COUNT)
    decay_fraction: float = key(0.2, "wsd: the share of the run spent decaying to min_lr", group="schedule",
                                range="[0, 1]")
    lr_schedule_on_resume: str = key("restart", "a resume with a new learning_rate/min_lr: restart = a new segment "
                                     "(warmup from the LR now, decay over the steps left); continue = the old schedule",
                                     group="schedule", choices=("restart", "continue"))
    weight_decay: float = key(0.1, "AdamW weight decay on matrices (not on biases, norms)", range="[0, 10]")
    beta1: float = key(0.9, "AdamW beta1", range="[0, 1)")
    beta2: float = key(0.95, "AdamW beta2", range="[0, 1)")
    grad_clip: float = key(1.0, "clip the gradient norm to this; 0 disables", range="[0, 1e6]")
    muon_lr: float = key(0.02, "muon: learning rate of the hidden matrices", range="[0, 10]")
    muon_momentum: float = key(0.95, "muon: momentum", range="[0, 1)")

    def check(self) -> None:
        if self.min_lr > self.learning_rate:
            raise UserError(f"config key 'min_lr' ({self.min_lr}) must not exceed learning_rate ({self.learning_rate})")


@dataclass
class TrainConfig(_Group):
    out: str = key("runs/run", "the run directory (config, metrics.jsonl, checkpoints, samples)")
    init_from: str = key("scratch", "scratch, resume (the latest checkpoint in out), or a local HF GPT-2 directory")
    batch_size: int | str = key(12, "sequences per micro-batch, per process; \"auto\": the largest that fits "
                                "(needs tokens_per_iter)", range="[1, 65536]", auto=True)
    gradient_accumulation_steps: int = key(1, "micro-batches per optimizer step, all processes together (derived "
                                           "when tokens_per_iter is set)", range="[1, 1048576]")
    tokens_per_iter: int = key(0, "tokens per optimizer step, all processes; 0: batch_size x block_size x "
                               "gradient_accumulation_steps", range="[0, 1e12]")
    max_iters: int = key(0, "optimizer steps; 0: from max_tokens, else from tokens_per_param", range=COUNT)
    max_tokens: int = key(0, "training tokens when max_iters is 0; 0: from tokens_per_param",
                          range="[0, 1e15]")
    tokens_per_param: float = key(20.0, "tokens per parameter when max_iters and max_tokens are 0 (Chinchilla: 20)",
                                  range="[0, 1e6]")
    max_seconds: float = key(0.0, "stop with a checkpoint after this much training time; 0: no limit",
                             range="[0, 1e9]")
    always_save_checkpoint: bool = key(True, "save at every eval; false: only when val loss improves")
    keep_last: int = key(2, "checkpoints kept besides the best", range="[2, 1000000]",
                         why="the newest checkpoint may be half-written when a crash comes")
    device: str = key("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    dtype: str = key("auto", "auto: bfloat16 where supported, float16 on older GPUs, float32 on CPU",
                     choices=("auto", "float32", "bfloat16", "float16"))
    compile: str = key("auto", "torch.compile the model; auto: on for CUDA, off elsewhere",
                       choices=("auto", "true", "false"))
    deterministic: bool = key(False, "deterministic GPU kernels (slower): runs and resumes bit-equal on a GPU too")
    seed: int = key(1337, "seed of the initial weights, data order and dropout", range="[0, 2^63)")
    max_nan_skips: int = key(5, "steps in a row skipped for a non-finite loss or gradient before the run stops",
                             range="[1, 1000000]")
    spike_sigma: float = key(6.0, "report a loss this many sigma above the recent window; 0 disables",
                             range="[0, 1e6]")
    skip_spikes: bool = key(False, "also skip the optimizer step on a reported spike")
    label_smoothing: float = key(0.0, "label smoothing of the training loss (evals report plain cross-entropy)",
                                 range="[0, 1)")
    fsdp: bool = key(False, "shard parameters and optimizer state across GPUs (FSDP2) instead of DDP")
    eval_interval: int = key(250, "steps between evals (val loss, samples, checkpoint)", group="logging", range=SIZE)
    eval_iters: int = key(20, "batches per eval estimate of the loss", group="logging", range="[1, 1000000]")
    log_interval: int = key(10, "steps between log lines", group="logging", range=SIZE)
    sample_prompts: list = key(
        help="prompts completed at each eval (on the command line: separated by |)", group="logging",
        factory=lambda: ["The capital of France is", "If yesterday was Friday, then tomorrow will be"])
    sample_tokens: int = key(24, "greedy tokens per prompt at each eval; 0 disables", group="logging",
                             range="[0, 1000000]")
    hellaswag_interval: int = key(0, "steps between HellaSwag scores (gptforge download hellaswag); 0: off",
                                  group="logging", range="[0, 1e12]")
    hellaswag_limit: int = key(0, "score only the first N HellaSwag items each time (e.g. 1000 on a CPU); 0: all",
                               group="logging", range="[0, 1e12]")
    hellaswag_file: str = key("", "the HellaSwag val jsonl; empty: the one `gptforge download hellaswag` put in the "
                              "cache", group="logging")
    peak_flops: float = key(0.0, "the device's peak FLOP/s for MFU; 0: look the device up", group="logging",
                            range="[0, 1e21]")
    wandb_log: bool = key(False, "mirror metrics to Weights & Biases", group="logging")
    wandb_project: str = key("gptforge", "wandb project", group="logging")
    wandb_run_name: str = key("", "wandb run name; empty: wandb picks one", group="logging")
    tensorboard: bool = key(False, "mirror metrics to TensorBoard (RUN_DIR/tensorboard)", group="logging")


GROUPS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig}
# The groups `--help` shows and config.toml is written in; each is also a TOML section a config file may use.
HELP_GROUPS = {"model": ModelConfig, "optimizer": OptimConfig, "schedule": OptimConfig, "training": TrainConfig,
               "data": DataConfig, "logging": TrainConfig}
SECTIONS = set(GROUPS) | set(HELP_GROUPS)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        for group in GROUPS:
            getattr(self, group).validate()
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


def _key_fields() -> dict[str, dataclasses.Field]:
    found: dict[str, dataclasses.Field] = {}
    for cls in GROUPS.values():
        for f in fields(cls):
            assert f.name not in found, f"config key {f.name} is defined twice"
            found[f.name] = f
    return found


KEY_FIELDS = _key_fields()
KEY_OWNERS = {name: group for group, cls in GROUPS.items() for name in (f.name for f in fields(cls))}
BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def unknown_key_error(key: str, where: str = "") -> UserError:
    close = difflib.get_close_matches(key, KEY_OWNERS, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    place = f" in {where}" if where else ""
    return UserError(f"unknown config key '{key}'{place}{hint}")


def _field_type(key: str):
    return get_type_hints(GROUPS[KEY_OWNERS[key]])[key]


def takes_bool(key: str) -> bool:
    """Whether a bare `--key` makes sense (a bool, or a choice between true and false such as compile)."""
    return _field_type(key) is bool or "true" in KEY_FIELDS[key].metadata["choices"]


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError
    text = str(value)
    text.encode("utf-8")  # a lone surrogate (undecodable bytes on the command line) cannot be stored in TOML
    return text


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    text = str(value).strip().replace("_", "")
    try:
        return int(text)  # exact, however many digits (a range check follows)
    except ValueError:
        number = float(text)  # 5e6; inf and nan fail below
        if number != int(number):
            raise ValueError from None
        return int(number)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    return float(str(value).strip().replace("_", "")) if isinstance(value, str) else float(value)


def _to_choice(key: str, value: Any) -> str:
    choices = KEY_FIELDS[key].metadata["choices"]
    text = str(value).strip().lower() if isinstance(value, (str, bool)) else _text(value)
    if "true" in choices and text in BOOL_WORDS:  # compile: --compile=False, as nanoGPT users type it
        return "true" if BOOL_WORDS[text] else "false"
    return text if text in choices else _text(value)


def _coerce(key: str, value: Any, where: str = "") -> Any:
    """Turn a TOML value or a command-line string into the key's type, or say why not."""
    typ = _field_type(key)
    place = f" in {where}" if where else ""
    if KEY_FIELDS[key].metadata["auto"]:  # a number, or "auto"
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        typ = int
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            return BOOL_WORDS[str(value).strip().lower()]
        if typ is int:
            return to_int(value)
        if typ is float:
            return _to_float(value)
        if typ is list:
            if isinstance(value, list):
                return [_text(v) for v in value]
            return [_text(part) for part in str(value).split("|") if part]  # --sample_prompts="a|b"
        if KEY_FIELDS[key].metadata["choices"]:
            return _to_choice(key, value)
        return _text(value)
    except UnicodeEncodeError:
        raise UserError(f"config key '{key}'{place}: {value!r} holds bytes that are not UTF-8 text") from None
    except (ValueError, TypeError, KeyError, OverflowError):
        pass
    name = "true/false" if typ is bool else getattr(typ, "__name__", str(typ))
    raise UserError(f"config key '{key}'{place}: {value!r} is not a valid {name}")


def _flatten_toml(doc: dict, where: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                known = ", ".join(sorted(SECTIONS))
                raise UserError(f"unknown config section [{key}] in {where}; sections are {known}")
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


def value_follows(key: str, following: str | None) -> bool:
    """Whether `--key following` sets key to `following`: yes when the key needs a value, and for a boolean
    key followed by a boolean word (`--compile false`); never when `following` is the next flag."""
    if following is None or following.startswith("--"):
        return False
    if key in KEY_OWNERS and takes_bool(key):
        return following.strip().lower() in BOOL_WORDS or following in KEY_FIELDS[key].metadata["choices"]
    return True


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--key=value`, `--key value` or `key=value` strings to a dict; `-` and `_` both work in keys; a bare
    `--flag` means true for a boolean key."""
    out: dict[str, Any] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        text = arg[2:] if arg.startswith("--") else arg
        key, sep, value = text.partition("=")
        key = key.replace("-", "_")
        if key not in KEY_OWNERS:
            raise unknown_key_error(key, "the command line")
        if not sep and value_follows(key, rest[0] if rest else None):
            value = rest.pop(0)
        elif not sep and takes_bool(key):
            value = "true"
        elif not sep:
            raise UserError(f"config key '{key}' needs a value: --{key}=VALUE")
        out[key] = value
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
    command_line = parse_overrides(overrides or [])  # first: a mistyped key is named before a file is read
    values: dict[str, Any] = {}
    if path:
        values.update({k: _coerce(k, v, str(path)) for k, v in read_toml(path).items()})
    values.update(extra or {})
    values.update({k: _coerce(k, v, "the command line") for k, v in command_line.items()})
    return build_config(values, where=str(path) if path else "")


TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string that reads back as exactly `text` (control characters escaped)."""
    out = []
    for ch in text:
        if ch in TOML_ESCAPES:
            out.append(TOML_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return toml_string(str(value))


def _help_fields(group: str) -> list[dataclasses.Field]:
    """The fields `--help` and config.toml show under `group` (a field's own group, else its class's)."""
    cls = HELP_GROUPS[group]
    default = next(g for g, c in HELP_GROUPS.items() if c is cls)
    return [f for f in fields(cls) if (f.metadata["group"] or default) == group]


def to_toml(cfg: Config) -> str:
    values = cfg.flat()
    lines = ["# The resolved configuration of this run, written by gptforge (`gptforge train --help`: each key)."]
    for group in HELP_GROUPS:
        lines.append(f"\n[{group}]")
        lines += [f"{f.name} = {_toml_value(values[f.name])}" for f in _help_fields(group)]
    return "\n".join(lines) + "\n"


def _shown_default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "|".join(value)
    return repr(value) if value == "" else str(value)


def config_help(width: int = 100) -> str:
    """Every config key with its type, default, meaning and allowed values, grouped: the text of `--help`."""
    lines = ["config keys: --key=value on the command line (- or _ in names), or `key = value` in a TOML file,",
             "at the top or under a [section] named as the groups below ([train], [optim] also work).",
             "booleans take true/false/1/0 (a bare --flag means true)."]
    for group in HELP_GROUPS:
        lines.append(f"\n{group}:")
        for f in _help_fields(group):
            meta, default = f.metadata, _shown_default(f)
            allowed = f"one of {', '.join(meta['choices'])}" if meta["choices"] else ""
            if meta["range"]:
                allowed = meta["range"].text.replace(" ", "\0")  # \0: a range is never split across lines
            text = meta["help"] + (f"; {allowed}" if allowed else "")
            if len(default) > 9:
                text, default = f"{text} (default: {default})", "(below)"
            kind = "int" if meta["auto"] else _field_type(f.name).__name__  # (an int, or the word auto)
            head = f"  {f.name:<23} {kind:<6}{default:<10}"
            indent = " " * 42
            if len(head) > len(indent):  # a long key: its help starts on the next line, as argparse does
                lines.append(head.rstrip())
                head = indent
            wrapped = textwrap.wrap(text, width, initial_indent=head, subsequent_indent=indent, break_on_hyphens=False)
            lines += [line.replace("\0", " ") for line in wrapped]
    return "\n".join(lines)


def diff_configs(old: dict[str, Any], new: dict[str, Any], keys: list[str] | None = None) -> list[str]:
    """Human-readable `key: old -> new` lines for the keys that differ."""
    keys = keys if keys is not None else sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
