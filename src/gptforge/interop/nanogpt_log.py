"""nanoGPT's console log (train.py's stdout) read into gptforge's run records, so `diagnose` and `plot` treat
it as a run: a Start per launch, a Log per `iter N` line and an Eval per `step N` line (train/events.py).

What the log says and how it maps:
- `Overriding config with FILE:` and the file echoed after it, `Overriding: key = value`: the settings, on
  top of train.py's defaults (the echo is read as data; code in it is skipped and noted).
- `tokens per iteration will be: N`, `found vocab_size = V (inside .../meta.pkl)`, `number of parameters`,
  `num decayed/non-decayed parameter tensors: ..., with N parameters` (their sum is the exact total).
- `step N: train loss X, val loss Y`: an eval after N updates. `iter N: loss X, time Yms, mfu Z%`: update
  N + 1 (nanoGPT counts from 0 and logs after the update), so it is the log record of step N + 1.
- nanoGPT's `time` of an iteration also counts what ran before it in the loop: the eval (and checkpoint
  save) at that step, and for the first iteration the start-up and compilation. Those iterations are kept
  in `time_includes` so speed figures can leave them out.
- nanoGPT's `mfu` is against an A100's 312 TFLOPS whatever the device, a running average that starts after 5
  iterations (-100% before): kept as printed in `printed_mfu`; Log.mfu holds MFU against the real device's
  peak when the caller names it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from gptforge.config import build_config
from gptforge.errors import UserError
from gptforge.interop.nanogpt_config import (
    NANOGPT_DEFAULTS,
    literal_assignments,
    override_value,
    read_config_file,
    to_gptforge,
)
from gptforge.train.devices import NANOGPT_MFU_PEAK
from gptforge.train.events import Event, from_dict
from gptforge.train.optim import lr_multiplier

_NUM = r"[-+]?(?:\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
ECHO = re.compile(r"^Overriding config with (.+):$")
OVERRIDE = re.compile(r"^Overriding: (\w+) = (.*)$")
TOKENS = re.compile(r"^tokens per iteration will be: ([\d,]+)$")
VOCAB = re.compile(r"^found vocab_size = (\d+) \(inside (.+)\)$")
PARAMS = re.compile(r"^number of parameters: ([\d.]+)M$")
TENSORS = re.compile(r"^num (?:non-)?decayed parameter tensors: \d+, with ([\d,]+) parameters$")
RESUME = re.compile(r"^Resuming training from (.+)$")
EVAL = re.compile(rf"^step (\d+): train loss ({_NUM}), val loss ({_NUM})")
ITER = re.compile(rf"^iter (\d+): loss ({_NUM}), time ({_NUM})ms, mfu ({_NUM})%")
SAVE = re.compile(r"^saving checkpoint to (.+)$")
PREFIX = re.compile(r"^\[rank\d+\]:\s*")  # torchrun's --tee prefix
HEADER = (ECHO, OVERRIDE, TOKENS, VOCAB, PARAMS, TENSORS, RESUME, re.compile(r"^Initializing "),
          re.compile(r"^defaulting to vocab_size"), re.compile(r"^compiling the model"))


@dataclass
class Launch:
    """One `python train.py ...` in the log: its header and its step/iter lines in order."""

    line: int
    settings: dict = field(default_factory=dict)  # from the echoed config file and Overriding: lines
    echo: list[str] = field(default_factory=list)
    echo_line: int = 0
    echo_file: str = ""
    tokens_per_iter: int | None = None
    vocab: int | None = None
    meta_path: str | None = None
    tensor_params: list[int] = field(default_factory=list)
    resumed: bool = False
    compiled: bool = False
    records: list[tuple] = field(default_factory=list)  # ("eval", n, train, val) ("iter", n, loss, ms, mfu) ("save",)


@dataclass
class NanoLog:
    path: Path
    events: list[Event]
    config: dict  # the gptforge config (flat) the nanoGPT settings map to
    settings: dict  # nanoGPT's settings: train.py's defaults, the config file, the overrides
    time_includes: dict[int, str]  # log step -> what nanoGPT's `time` of that iteration also counts
    printed_mfu: dict[int, float]  # log step -> nanoGPT's MFU as printed (a fraction of an A100's 312 TFLOPS)
    notes: list[str]
    data_dir: Path | None


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _clean(raw: str) -> str:
    return PREFIX.sub("", raw.rstrip())


def split_launches(lines: list[str]) -> list[Launch]:
    """The launches of a log, each with its header values and records (header lines after records start a
    new launch: a log appended to by a second run)."""
    launches: list[Launch] = []
    in_echo = False

    def current(i: int, header: bool) -> Launch:
        if not launches or (header and launches[-1].records):
            launches.append(Launch(i))
        return launches[-1]

    for i, raw in enumerate(lines, 1):
        line = _clean(raw)
        if in_echo and not any(p.match(line) for p in HEADER + (EVAL, ITER)):
            launches[-1].echo.append(raw)
            continue
        in_echo = False
        if m := ECHO.match(line):
            launch = current(i, True)
            launch.echo_file, launch.echo_line, in_echo = m.group(1), i + 1, True
        elif m := OVERRIDE.match(line):
            current(i, True).settings[m.group(1)] = override_value(m.group(2).strip())
        elif m := TOKENS.match(line):
            current(i, True).tokens_per_iter = int(_number(m.group(1)))
        elif m := VOCAB.match(line):
            launch = current(i, True)
            launch.vocab, launch.meta_path = int(m.group(1)), m.group(2)
        elif m := TENSORS.match(line):
            current(i, True).tensor_params.append(int(_number(m.group(1))))
        elif RESUME.match(line):
            current(i, True).resumed = True
        elif line.startswith("compiling the model"):
            current(i, True).compiled = True
        elif m := EVAL.match(line):
            current(i, False).records.append(("eval", int(m.group(1)), _number(m.group(2)), _number(m.group(3))))
        elif m := ITER.match(line):
            rec = ("iter", int(m.group(1)), _number(m.group(2)), _number(m.group(3)), _number(m.group(4)))
            current(i, False).records.append(rec)
        elif SAVE.match(line) and launches:
            launches[-1].records.append(("save",))
    return launches


def _settings(launch: Launch, where: str, config_file: dict, notes: list[str]) -> dict:
    """nanoGPT's settings for a launch: defaults, then --config, then the echoed file, then the overrides."""
    settings = {**NANOGPT_DEFAULTS, **config_file}
    if launch.echo:
        echoed, skipped = literal_assignments("\n".join(launch.echo), f"{where} (the echo of {launch.echo_file})",
                                              known=settings, first_line=launch.echo_line, strict=False)
        settings.update(echoed)
        notes += [f"{where}: {s} of the echoed {launch.echo_file} is code; not read" for s in skipped]
    settings.update(launch.settings)
    return settings


def _find_data(path: Path, data, launch: Launch, settings: dict, notes: list[str]):
    """The nanoGPT data folder (train.bin, val.bin) the run read: --data, else where the log says."""
    from gptforge.data.dataset import open_dataset

    if data:
        return open_dataset(data)
    relative = Path(launch.meta_path).parent if launch.meta_path else Path("data") / str(settings.get("dataset"))
    bases = [Path.cwd(), path.parent, path.parent.parent]
    for base in bases:
        folder = relative if relative.is_absolute() else base / relative
        if (folder / "train.bin").is_file() and (folder / "val.bin").is_file():
            return open_dataset(folder)
    notes.append(f"the run's data folder {relative} was not found (looked next to the log and in the current "
                 "directory): pass --data DIR for epochs over the data")
    return None


def nanogpt_params(settings: dict, vocab: int) -> int:
    """Parameters of nanoGPT's GPT (model.py): tied embeddings, LayerNorm and Linear biases when bias=True."""
    d, layers, block, bias = settings["n_embd"], settings["n_layer"], settings["block_size"], bool(settings["bias"])
    per_layer = 12 * d * d + 2 * d + (11 * d if bias else 0)
    return vocab * d + block * d + layers * per_layer + d * (2 if bias else 1)


def world_size(launch: Launch, settings: dict, params: int) -> int:
    """Processes the run used, from nanoGPT's printed MFU: it is per process (each does gradient_accumulation_steps
    / world micro-batches), so printed MFU x 312 TFLOPS x time over one process's FLOPs for all the micro-batches
    is 1 / world. The answer is a divisor of gradient_accumulation_steps; 1 when nothing was printed."""
    d, layers, block = settings["n_embd"], settings["n_layer"], settings["block_size"]
    accum = int(settings["gradient_accumulation_steps"])
    flops = (6 * (params - block * d) + 12 * layers * d * block) * block * settings["batch_size"] * accum
    ratios = sorted(mfu / 100 * NANOGPT_MFU_PEAK * ms / 1000 / flops for _, n, _, ms, mfu in
                    (r for r in launch.records if r[0] == "iter") if mfu > 0 and n > 0 and math.isfinite(ms))
    if not ratios:
        return 1
    ratio = ratios[len(ratios) // 2]
    return min((w for w in range(1, accum + 1) if accum % w == 0), key=lambda w: abs(math.log(w * ratio)))


def _step_times(records: list[tuple], median_ms: float, compiled: bool) -> tuple[dict[int, str], dict[int, float]]:
    """Which logged iterations' times also count an eval, a save or the start-up, and the seconds of each eval
    (its iteration's time less a normal one)."""
    includes, eval_seconds, previous, saved, first = {}, {}, None, False, True
    for rec in records:
        if rec[0] == "save":
            saved = True
        elif rec[0] == "eval":
            previous, saved = rec[1], False
        else:
            n, ms = rec[1], rec[3]
            if first:
                includes[n + 1] = ("the start-up" + (" with compilation" if compiled else "")
                                   + (f" and the eval at step {n}" if previous == n else ""))
            elif previous == n:
                includes[n + 1] = f"the eval at step {n}" + (" and the checkpoint save" if saved else "")
                eval_seconds[n] = max(0.0, (ms - median_ms) / 1000)
            first, previous = False, None
    return includes, eval_seconds


def _events(launch: Launch, settings: dict, cfg, dataset, params: int, world: int, peak: float | None,
            device_name: str | None, notes: list[str]):
    tpi = launch.tokens_per_iter or cfg.tokens_per_iter
    d, layers, block = cfg.model.n_embd, cfg.model.n_layer, cfg.model.block_size
    vocab = cfg.model.vocab_size
    flops = 6.0 * (12 * layers * d * d + vocab * d) + 12.0 * layers * d * block  # gptforge's MFU convention
    train_tokens = dataset.train_tokens if dataset else None
    iters = [r for r in launch.records if r[0] == "iter"]
    times = sorted(r[3] for r in iters[1:] if math.isfinite(r[3])) or [0.0]
    includes, eval_seconds = _step_times(launch.records, times[len(times) // 2], launch.compiled)
    first = launch.records[0][1] if launch.records else 0
    max_iters = int(settings["max_iters"])
    device = str(settings.get("device", "cuda")).split(":")[0]
    start = from_dict(dict(
        event="start", step=first, config=cfg.flat(), params=params,
        params_non_embedding=params - vocab * d - block * d, tokens_per_iter=tpi, max_iters=max_iters,
        planned_tokens=(max_iters + 1) * tpi, tokens_per_param=(max_iters + 1) * tpi / params,
        dataset_train_tokens=train_tokens, dataset_val_tokens=dataset.val_tokens if dataset else None,
        dataset_version=None, planned_epochs=(max_iters + 1) * tpi / train_tokens if train_tokens else None,
        device=device, device_name=device_name or ("CPU" if device == "cpu" else None), world_size=world, fsdp=False,
        peak_flops=peak, flops_per_token=flops, resumed_from=first if launch.resumed else None))
    events, printed = [start], {}
    for rec in launch.records:
        if rec[0] == "eval":
            n, train, val = rec[1:]
            events.append(from_dict(dict(
                event="eval", step=n, tokens=n * tpi, epoch=n * tpi / train_tokens if train_tokens else None,
                train_loss=train, val_loss=val, val_ppl=math.exp(min(val, 700)) if math.isfinite(val) else val,
                eval_batches=settings.get("eval_iters"), seconds=eval_seconds.get(n))))
        elif rec[0] == "iter":
            n, loss, ms, mfu = rec[1:]
            done = n + 1
            tok_s = tpi / (ms / 1000) if ms > 0 else None  # all processes together
            per_gpu = tok_s / world if tok_s else None
            lr = cfg.optim.learning_rate * lr_multiplier(n, cfg.optim, max_iters)
            if mfu >= 0:
                printed[done] = mfu / 100
            real = flops * per_gpu / peak if peak and per_gpu and done not in includes else None
            events.append(from_dict(dict(
                event="log", step=done, tokens=done * tpi, epoch=done * tpi / train_tokens if train_tokens else None,
                loss=loss, lr=lr, dt_ms=ms, tok_per_s=tok_s, mfu=real, grad_norm=None, tok_per_s_per_gpu=per_gpu,
                tflops_per_gpu=flops * per_gpu / 1e12 if per_gpu else None)))
    if iters and iters[-1][1] >= max_iters:  # nanoGPT stops once iter_num passes max_iters
        events.append(from_dict(dict(event="end", step=iters[-1][1] + 1, reason="max_iters")))
    if launch.tokens_per_iter and launch.tokens_per_iter != cfg.tokens_per_iter:
        notes.append(f"the log's {launch.tokens_per_iter:,} tokens per iteration differ from the settings' "
                     f"{cfg.tokens_per_iter:,} (several processes?): the log's figure is used")
    return events, includes, printed


def read_nanogpt_log(path, config=None, data=None, peak_flops: float | None = None,
                     device_name: str | None = None) -> NanoLog:
    """The records of a nanoGPT log (`config`: the .py it ran with, when the log does not echo it; `data`: its
    data folder, when the log's is not found; `peak_flops`/`device_name`: the GPU it ran on, for real MFU)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e}") from None
    launches = split_launches(lines)
    with_records = [la for la in launches if la.records]
    if not with_records:
        raise UserError(f"{path} holds no nanoGPT `iter N: loss ...` or `step N: train loss ...` line: is it the "
                        "output of nanoGPT's train.py (or a gptforge RUN_DIR)?")
    notes: list[str] = []
    config_file = read_config_file(config) if config else {}
    last = with_records[-1]
    fresh = [la for la in with_records if not la.resumed]
    if len(with_records) > 1 and fresh and fresh[-1] is not with_records[0]:
        notes.append(f"{path} holds {len(with_records)} launches; the last fresh start (line {fresh[-1].line}) "
                     "begins the run diagnosed here")
    settings = _settings(last, str(path), config_file, notes)
    mapped = to_gptforge(settings)
    if mapped.unknown:
        notes.append("settings neither nanoGPT's train.py nor gptforge knows: " + ", ".join(mapped.unknown))
    dataset = _find_data(path, data, last, settings, notes)
    vocab = last.vocab or (dataset.vocab_size if dataset else None) or 50304  # nanoGPT's default: GPT-2's, padded
    cfg = build_config({**mapped.values, "vocab_size": vocab}, where=str(path))
    params = sum(last.tensor_params) if len(last.tensor_params) == 2 else nanogpt_params(settings, vocab)
    world = world_size(last, settings, params)
    if world > 1:
        notes.append(f"nanoGPT's printed MFU (per process) implies {world} processes: tokens/s is their total, MFU "
                     "and TFLOP/s are per GPU")
    events, includes, printed = [], {}, {}
    for launch in with_records:
        launch_settings = settings if launch is last else _settings(launch, str(path), config_file, [])
        ev, inc, pr = _events(launch, launch_settings, cfg, dataset, params, world, peak_flops, device_name, notes)
        events += ev
        includes.update(inc)
        printed.update(pr)
    return NanoLog(path, events, cfg.flat(), settings, includes, printed, notes, dataset.path if dataset else None)
