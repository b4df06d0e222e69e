"""RUN_DIR/metrics.jsonl: its schema (one typed record per event kind) and its writer, MetricsLog.

Each line is one JSON object: `event` (the kind), `step`, `time` (seconds since launch), then the kind's
fields below. The trainer writes these records, `diagnose` and `plot` read them back (analysis/runlog.py),
and the tests' synthetic runs build them, all through the classes here. Reading is lenient: a field that
is missing (a file from an older gptforge) or of the wrong type reads as None, and fields this version
does not know (a newer gptforge's) are kept in `extra`, so adding a field never breaks an old reader.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from gptforge.errors import UserError
from gptforge.fsutil import writing


@dataclass(kw_only=True)
class Event:
    """What every record has; a subclass per kind adds its fields (all required when writing, but those
    declared `= None`)."""

    KIND: ClassVar[str] = ""
    step: int  # the event's step: optimizer steps done (log, eval, checkpoint, end) or the step that was bad
    time: float | None = None  # seconds since launch; MetricsLog fills it in
    extra: dict = field(default_factory=dict, repr=False)  # fields of a later version, kept as read

    def fields(self) -> dict:
        """The kind's own fields (not event/step/time), in declaration order, then the extra ones; a field
        declared `= None` (measured at some events only) is left out while it is None."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in _COMMON and not (f.default is None and getattr(self, f.name) is None)}
        return {**own, **self.extra}

    def to_dict(self) -> dict:
        return {"event": self.KIND, "step": self.step, "time": self.time, **self.fields()}


_COMMON = ("step", "time", "extra")


@dataclass(kw_only=True)
class Start(Event):
    """A launch (fresh or resumed): the run as configured, its size and its dataset at that moment."""

    KIND: ClassVar[str] = "start"
    config: dict
    params: int
    params_non_embedding: int
    tokens_per_iter: int
    max_iters: int
    planned_tokens: int
    tokens_per_param: float
    dataset_train_tokens: int | None
    dataset_val_tokens: int | None
    dataset_version: int | None
    planned_epochs: float
    device: str
    device_name: str
    world_size: int
    fsdp: bool
    peak_flops: float | None
    flops_per_token: float
    resumed_from: int | None  # the checkpoint's step; None for a fresh start
    # schedule segments begun by resumes with another learning rate (train/optim.Segment as dicts); None: none
    lr_segments: list | None = None


@dataclass(kw_only=True)
class Log(Event):
    """Every log_interval steps: the step's loss and speed (dt_ms and tok/s exclude evals and saves)."""

    KIND: ClassVar[str] = "log"
    tokens: int
    epoch: float
    loss: float
    lr: float
    dt_ms: float
    tok_per_s: float  # all processes together
    mfu: float | None  # None where the device's peak is unknown (CPU)
    grad_norm: float | None  # None when the update was skipped
    tok_per_s_per_gpu: float | None
    tflops_per_gpu: float | None


@dataclass(kw_only=True)
class Eval(Event):
    KIND: ClassVar[str] = "eval"
    tokens: int
    epoch: float
    train_loss: float
    val_loss: float
    val_ppl: float
    eval_batches: int  # val batches, all parts together
    seconds: float  # the whole eval, HellaSwag included
    # a dataset of several parts: {part name: its val loss}; val_loss weighs them by their val tokens
    val_parts: dict | None = None
    # HellaSwag (completion style, train/hellaswag.py) at the evals it was scored at; None elsewhere
    hellaswag_acc_norm: float | None = None
    hellaswag_acc: float | None = None
    hellaswag_stderr: float | None = None  # of acc_norm
    hellaswag_items: int | None = None
    hellaswag_seconds: float | None = None


@dataclass(kw_only=True)
class Checkpoint(Event):
    KIND: ClassVar[str] = "checkpoint"
    path: str
    seconds: float


@dataclass(kw_only=True)
class Spike(Event):
    """A finite loss far above the recent window (step: the step whose loss it was)."""

    KIND: ClassVar[str] = "spike"
    loss: float
    mean: float
    std: float


@dataclass(kw_only=True)
class LevelShift(Event):
    """The loss stayed far above the window for several steps in a row: the level moved (new data, another
    learning rate), so the step was kept and the window restarted at the new level."""

    KIND: ClassVar[str] = "level_shift"
    loss: float
    mean: float  # of the window before
    level: float  # the new window's mean: the high losses in a row


@dataclass(kw_only=True)
class NanSkip(Event):
    """A non-finite loss or gradient: the step (the one that was bad) changed nothing."""

    KIND: ClassVar[str] = "nan_skip"
    count: int  # in the whole run
    consecutive: int


@dataclass(kw_only=True)
class DataGrew(Event):
    """A resume found new shards appended to the dataset; training continues on the larger one."""

    KIND: ClassVar[str] = "data_grew"
    old_train_tokens: int
    new_train_tokens: int
    version: int | None


@dataclass(kw_only=True)
class End(Event):
    KIND: ClassVar[str] = "end"
    reason: str  # max_iters, max_seconds, signal ..., nan, checkpoint_failed (disk full, another OS error)


KINDS: dict[str, type[Event]] = {cls.KIND: cls for cls in (Start, Log, Eval, Checkpoint, Spike, LevelShift, NanSkip,
                                                           DataGrew, End)}


def _allowed(annotation) -> tuple[type, ...]:
    """The JSON types a field accepts (an int where a float is declared; bool is not an int here)."""
    types = tuple(t for t in typing.get_args(annotation) or (annotation,) if t is not type(None))
    return types + ((int,) if float in types else ())


def _check(value, types: tuple[type, ...]):
    if value is None or (isinstance(value, bool) and bool not in types):
        return None
    return value if isinstance(value, types) else None


def from_dict(record: dict) -> Event | None:
    """The typed record of one decoded line; None for a kind this version does not know or a line without an
    integer step. Missing or mistyped fields read as None; unknown fields go to `extra`."""
    cls = KINDS.get(record.get("event"))
    step = record.get("step")
    if cls is None or not isinstance(step, int) or isinstance(step, bool):
        return None
    hints = _hints(cls)
    values = {name: _check(record.get(name), _allowed(hints[name])) for name in hints}
    values["time"] = _check(record.get("time"), (int, float))
    extra = {k: v for k, v in record.items() if k not in hints and k not in ("event", "step", "time")}
    return cls(step=step, extra=extra, **values)


@functools.cache
def _hints(cls: type[Event]) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in _COMMON}


def to_line(record: Event) -> str:
    return json.dumps(record.to_dict())


def _drop_partial_line(path: Path) -> None:
    """Cut a last line without its newline (a kill or a full disk in the middle of a write), so the next record
    starts a line of its own instead of making one broken line of two."""
    try:
        with open(path, "rb+") as f:
            start = max(0, f.seek(0, 2) - 65536)  # records are a few hundred bytes
            f.seek(start)
            tail = f.read()
            if tail and not tail.endswith(b"\n"):
                f.truncate(start + tail.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


class MetricsLog:
    """RUN_DIR/metrics.jsonl (appended, one flushed line per event) plus the optional wandb/TensorBoard mirrors."""

    def __init__(self, run_dir: Path | None, *, wandb_log: bool = False, wandb_project: str = "gptforge",
                 wandb_run_name: str = "", tensorboard: bool = False, config: dict | None = None,
                 t0: float | None = None, fresh: bool = False):
        self.t0 = t0 if t0 is not None else time.time()  # "time" in each record counts from here
        self.file = None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.path = run_dir / "metrics.jsonl"
            if not fresh:
                _drop_partial_line(self.path)
            # a new run starts the file over; a resumed one appends (readers take the last record per step)
            self.file = open(self.path, "w" if fresh else "a", encoding="utf-8")
        self.wandb = self.tb = None
        if wandb_log:
            try:
                import wandb
            except ImportError:
                raise UserError(
                    "wandb_log is on but wandb is not installed: pip install wandb, or set --wandb_log=false"
                ) from None
            self.wandb = wandb
            wandb.init(project=wandb_project, name=wandb_run_name or None, config=config or {})
        if tensorboard and run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "tensorboard is on but the tensorboard package is not installed: pip install tensorboard, "
                    "or set --tensorboard=false"
                ) from None
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: Event) -> None:
        if record.time is None:
            record = dataclasses.replace(record, time=round(time.time() - self.t0, 3))
        if self.file:
            line = to_line(record) + "\n"
            with writing(self.path, len(line.encode())):  # disk full: one line from train, not a traceback
                self.file.write(line)
                self.file.flush()  # a crash loses at most the line being written
        if record.KIND not in ("log", "eval") or not (self.wandb or self.tb):
            return
        numeric = {k: v for k, v in record.fields().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.wandb:
            self.wandb.log({f"{record.KIND}/{k}": v for k, v in numeric.items()}, step=record.step)
        if self.tb:
            for k, v in numeric.items():
                self.tb.add_scalar(f"{record.KIND}/{k}", v, record.step)

    def end(self, step: int, reason: str) -> None:
        """The run's last record, then close."""
        self.write(End(step=step, reason=reason))
        self.close()

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
