"""nanoGPT's config files (config/train_*.py) and `--key=value` overrides, read as data and never run.

nanoGPT's configurator exec()s the file on top of train.py's globals. gptforge instead parses it with `ast` and
accepts only assignments whose values are literals, arithmetic on numbers (`5 * 8`), or names assigned earlier
(`lr_decay_iters = max_iters`); anything else (an import, a call, a loop) is an error naming the file and the
line. The values then go on top of train.py's own defaults, as in nanoGPT, and are mapped to gptforge's keys:
most keep their name, `out_dir` becomes `out`, `dataset` becomes `data = data/<dataset>` (nanoGPT's layout),
`decay_lr = False` a constant LR without warmup; the keys gptforge has no use for are listed, never silently
dropped.
"""

from __future__ import annotations

import ast
import difflib
import operator
from dataclasses import dataclass, field
from pathlib import Path

from gptforge.config import KEY_OWNERS, build_config, parse_overrides
from gptforge.errors import UserError

# karpathy/nanoGPT train.py's globals (the values a config file overrides); device, dtype and compile are left
# out on purpose: unless the file sets them, gptforge's auto choices apply (nanoGPT's device='cuda' default
# would refuse to start on a laptop, which gptforge's auto handles)
NANOGPT_DEFAULTS: dict = dict(
    out_dir="out", eval_interval=2000, log_interval=1, eval_iters=200, eval_only=False, always_save_checkpoint=True,
    init_from="scratch", wandb_log=False, wandb_project="owt", wandb_run_name="gpt2", dataset="openwebtext",
    gradient_accumulation_steps=40, batch_size=12, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
    bias=False, learning_rate=6e-4, max_iters=600000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0,
    decay_lr=True, warmup_iters=2000, lr_decay_iters=600000, min_lr=6e-5, backend="nccl",
)
SYSTEM_KEYS = ("device", "dtype", "compile")  # nanoGPT's keys whose defaults stay gptforge's auto
# nanoGPT keys that mean the same in gptforge (nanoGPT's names were kept on purpose)
SHARED_KEYS = ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "eval_iters",
               "log_interval", "always_save_checkpoint", "learning_rate", "min_lr", "warmup_iters",
               "lr_decay_iters", "weight_decay", "beta1", "beta2", "grad_clip")
SAME_NAME = SHARED_KEYS + ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "wandb_log",
                           "wandb_project", "wandb_run_name", "device", "dtype")
NOT_USED = {
    "eval_only": "gptforge evaluates a run with `gptforge eval RUN_DIR`",
    "backend": "gptforge picks nccl on GPUs and gloo on CPUs itself",
}
NANOGPT_KEYS = set(NANOGPT_DEFAULTS) | set(SYSTEM_KEYS)
NANOGPT_ONLY = NANOGPT_KEYS - set(KEY_OWNERS)  # out_dir, dataset, decay_lr, eval_only, backend

_NUMBER_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


class _NotData(Exception):
    """A value that is code, not data (the message says what)."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value(node: ast.AST, known: dict):
    """The value of an expression made of literals, names assigned before, +-*/ on numbers and + on strings."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in known:
            return known[node.id]
        if node.id in ("True", "False", "None"):  # pragma: no cover - ast makes these Constants
            return {"True": True, "False": False, "None": None}[node.id]
        raise _NotData(f"`{node.id}` is not a setting assigned before this line")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand, known)
        if _number(operand):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _NUMBER_OPS:
        left, right = _value(node.left, known), _value(node.right, known)
        if isinstance(node.op, ast.Add) and isinstance(left, str) and isinstance(right, str):
            return left + right
        if _number(left) and _number(right):
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise _NotData("an exponent above 64")
            try:
                return _NUMBER_OPS[type(node.op)](left, right)
            except (ZeroDivisionError, OverflowError) as e:
                raise _NotData(f"arithmetic that fails ({e})") from None
    raise _NotData(f"`{ast.unparse(node)}` is code, not a literal value")


def literal_assignments(source: str, where: str, *, known: dict | None = None, first_line: int = 1,
                        strict: bool = True) -> tuple[dict, list[str]]:
    """The `name = value` settings of Python source, in order, without running it. With `strict`, a statement
    that is not such an assignment is a UserError naming `where` and its line; otherwise it is skipped and
    described in the second result. `known` holds the values names may refer to (train.py's defaults)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise UserError(f"{where}: line {(e.lineno or 1) + first_line - 1} is not valid Python ({e.msg})") from None
    scope, values, skipped = dict(known or {}), {}, []
    for stmt in tree.body:
        line = stmt.lineno + first_line - 1
        try:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue  # a docstring or a bare string: data, and nothing to set
            if not isinstance(stmt, ast.Assign) or not all(isinstance(t, ast.Name) for t in stmt.targets):
                raise _NotData(f"`{ast.unparse(stmt).splitlines()[0]}` is code, not a `name = value` setting")
            value = _value(stmt.value, scope)
        except _NotData as e:
            if strict:
                raise UserError(f"{where}: line {line}: {e}; gptforge reads nanoGPT configs as data and never runs "
                                "them: write the value itself (e.g. `batch_size = 12`)") from None
            skipped.append(f"line {line}: {e}")
            continue
        for target in stmt.targets:
            scope[target.id] = values[target.id] = value
    return values, skipped


def read_config_file(path: str | Path) -> dict:
    """The settings of a nanoGPT config file (strict: code in it is an error)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    return literal_assignments(source, str(path), known=NANOGPT_DEFAULTS)[0]


def override_value(text: str):
    """A command-line value as nanoGPT's configurator reads it: a Python literal if it is one, else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


@dataclass
class Mapped:
    """nanoGPT settings as gptforge config values, and what did not carry over."""

    values: dict
    renamed: list[str] = field(default_factory=list)  # "dataset='x' -> data=data/x"
    not_used: list[str] = field(default_factory=list)  # nanoGPT keys gptforge has no use for, and why
    unknown: list[str] = field(default_factory=list)  # keys neither nanoGPT's train.py nor gptforge knows


def to_gptforge(settings: dict, explicit=None) -> Mapped:
    """nanoGPT's settings (defaults already under them) as gptforge's flat config values; the keys gptforge does
    not use are listed when `explicit` (the keys a file or the command line set; default: all) holds them."""
    values = {"arch": "gpt2"}  # nanoGPT's model is GPT-2's architecture
    out = Mapped(values)
    for key, value in settings.items():
        if key in SAME_NAME:
            values[key] = value
        elif key == "compile":
            values[key] = ("true" if value else "false") if isinstance(value, bool) else value
        elif key == "out_dir":
            values["out"] = value
            out.renamed.append(f"out_dir={value!r} -> out={value}")
        elif key == "dataset":
            values["data"] = str(Path("data") / str(value))
            out.renamed.append(f"dataset={value!r} -> data={values['data']} (nanoGPT's data/<dataset> folder)")
        elif key == "init_from" and isinstance(value, str) and value.startswith("gpt2"):
            out.not_used.append(f"init_from={value!r} (gptforge loads GPT-2 weights from a local Hugging Face "
                                "directory: --init_from=DIR)")
        elif key == "decay_lr":
            if value is False:
                out.renamed.append("decay_lr=False -> schedule=constant, warmup_iters=0")
        elif key in NOT_USED:
            if explicit is None or key in explicit:
                out.not_used.append(f"{key} ({NOT_USED[key]})")
        elif key in KEY_OWNERS:  # a gptforge key written in a nanoGPT-style file
            values[key] = value
        else:
            close = difflib.get_close_matches(key, list(NANOGPT_KEYS | set(KEY_OWNERS)), n=1, cutoff=0.75)
            out.unknown.append(key + (f" (did you mean {close[0]}?)" if close else ""))
    if settings.get("decay_lr") is False:
        # nanoGPT then trains at learning_rate throughout, ignoring warmup_iters
        values.update(schedule="constant", warmup_iters=0)
    return out


def load_nanogpt_config(path: str | Path, overrides: list[str] | None = None):
    """(the validated gptforge Config, what the mapping did) for a nanoGPT config file and `--key=value`
    overrides; an override may use a nanoGPT key (read as nanoGPT reads it) or a gptforge one."""
    from_file = read_config_file(path)
    settings, explicit = {**NANOGPT_DEFAULTS, **from_file}, set(from_file)
    gptforge_overrides = []
    for arg in overrides or []:
        key, sep, text = (arg[2:] if arg.startswith("--") else arg).partition("=")
        if key in NANOGPT_ONLY or key == "compile":  # nanoGPT's meaning (compile=False is a Python literal)
            settings[key] = override_value(text) if sep else True
            explicit.add(key)
        else:
            gptforge_overrides.append(arg)
    mapped = to_gptforge(settings, explicit)
    values = {**mapped.values, **parse_overrides(gptforge_overrides)}
    init = settings.get("init_from")
    if isinstance(init, str) and init.startswith("gpt2") and "init_from" not in values:
        raise UserError(f"{path}: init_from={init!r}: gptforge does not download OpenAI's weights; save them with "
                        "transformers (GPT2LMHeadModel.from_pretrained(NAME).save_pretrained(DIR)) and add "
                        "--init_from=DIR")
    return build_config(values, where=str(path)), mapped


def describe(path, mapped: Mapped) -> list[str]:
    """What a user should know about how their nanoGPT config was read."""
    lines = [f"{path}: a nanoGPT config, read as data (not run); nanoGPT's train.py defaults fill in what it does "
             "not set"]
    if mapped.renamed:
        lines.append("  mapped: " + "; ".join(mapped.renamed))
    if mapped.not_used:
        lines.append("  not used by gptforge: " + "; ".join(mapped.not_used))
    if mapped.unknown:
        lines.append("  unknown to nanoGPT's train.py and to gptforge, ignored: " + ", ".join(mapped.unknown))
    return lines
