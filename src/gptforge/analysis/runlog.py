"""Reading RUN_DIR/metrics.jsonl back: the events of a run, resumes folded in, for diagnose and plot.

A resumed run appends a new "start" event whose resumed_from names the checkpoint's step; the records
the first process wrote after that step were never part of the run that continued, so they are dropped
(and so is an earlier resume from the same step, which the new one replaces). A crash can leave the last
line half-written: it is skipped. The records are the typed ones of train/events.py, the schema the trainer
writes with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from gptforge.errors import UserError
from gptforge.train.events import Checkpoint, DataGrew, End, Eval, Event, Log, NanSkip, Spike, Start, from_dict

METRICS = "metrics.jsonl"


@dataclass
class RunLog:
    run_dir: Path
    starts: list[Start] = field(default_factory=list)
    logs: list[Log] = field(default_factory=list)  # by step
    evals: list[Eval] = field(default_factory=list)
    spikes: list[Spike] = field(default_factory=list)
    nan_skips: list[NanSkip] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    data_grew: list[DataGrew] = field(default_factory=list)
    ends: list[End] = field(default_factory=list)
    skipped_lines: int = 0
    # what a log of another trainer (nanoGPT's console log) says beyond the shared records
    trainer: str = "gptforge"
    time_includes: dict[int, str] = field(default_factory=dict)  # log step -> what else its dt_ms counts
    printed_mfu: dict[int, float] = field(default_factory=dict)  # log step -> MFU vs an A100's 312 TFLOPS, as printed

    @property
    def start(self) -> Start:
        """The latest start event (its config and dataset are those of the run as it stands); without one, a
        start whose fields are all unknown (None)."""
        return self.starts[-1] if self.starts else NO_START

    @property
    def config(self) -> dict:
        return self.start.config or {}

    @property
    def end_reason(self) -> str | None:
        return self.ends[-1].reason if self.ends else None

    @property
    def label(self) -> str:
        return self.run_dir.name or str(self.run_dir)

    def start_at(self, step: int) -> Start:
        """The start event in force at `step` (the last launch at or before it)."""
        return next((s for s in reversed(self.starts) if s.step <= step), self.starts[0] if self.starts else NO_START)

    def tokens_at(self, step: int) -> int:
        """Tokens trained by the end of `step`: the nearest logged count at or before it, plus the iterations
        since at the tokens per iteration of the launch then in force (a resume may change the batch)."""
        known = [(e.step, e.tokens) for e in self.logs + self.evals if e.step <= step and finite(e.tokens)]
        base_step, base_tokens = max(known) if known else (0, 0)
        per_iter = self.start_at(step).tokens_per_iter or 0
        return int(base_tokens + (step - base_step) * per_iter)


NO_START = from_dict({"event": "start", "step": 0})  # a run without a start event: nothing known


_LISTS = {Log: "logs", Eval: "evals", Spike: "spikes", NanSkip: "nan_skips", Checkpoint: "checkpoints",
          DataGrew: "data_grew", End: "ends"}


def parse_events(lines: list[str]) -> tuple[list[Event], int]:
    """The records of the lines, and how many lines were unreadable (a torn last line). Lines of an event
    kind this version does not know are left out without counting as unreadable."""
    events, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "event" not in record or not isinstance(record.get("step"), int):
            skipped += 1
            continue
        event = from_dict(record)
        if event is not None:
            events.append(event)
    return events, skipped


def fold(events: list[Event], run_dir: Path) -> RunLog:
    """Events in file order to a RunLog: a resume drops what came after its checkpoint step; the last
    record of a step wins."""
    run = RunLog(run_dir)
    for event in events:
        if isinstance(event, Start):
            resumed = event.resumed_from
            if resumed is None:  # a fresh start: nothing before it belongs to this run
                run = RunLog(run_dir, skipped_lines=run.skipped_lines)
            else:
                for name in _LISTS.values():
                    setattr(run, name, [e for e in getattr(run, name) if e.step <= resumed])
                run.ends = []
                # a resume from step s replaces launches that resumed from s or later
                run.starts = [s for s in run.starts if s.resumed_from is None or s.step < resumed]
            run.starts.append(event)
        elif type(event) in _LISTS:
            getattr(run, _LISTS[type(event)]).append(event)
    for name in ("logs", "evals", "data_grew"):  # a second resume from the same checkpoint repeats data_grew
        by_step = {e.step: e for e in getattr(run, name)}
        setattr(run, name, [by_step[s] for s in sorted(by_step)])
    return run


def read_run(run_dir: str | Path) -> RunLog:
    run_dir = Path(run_dir)
    path = run_dir / METRICS
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise UserError(f"{path} does not exist: is {run_dir} a run directory written by `gptforge train`?")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e}") from None
    events, skipped = parse_events(text.splitlines())
    if not events:
        raise UserError(f"{path} holds no events (the run has not logged anything yet)")
    run = fold(events, run_dir)
    run.skipped_lines = skipped
    return run


def val_parts(e: Eval) -> dict[str, float]:
    """The eval's val loss per dataset part ({name: loss}) when the trainer logged them, else {}."""
    parts = e.val_parts
    if not isinstance(parts, dict):
        return {}
    return {str(k): float(v) for k, v in parts.items() if finite(v)}


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
