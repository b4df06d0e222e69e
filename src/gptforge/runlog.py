"""Reading RUN_DIR/metrics.jsonl back: the events of a run, resumes folded in, for diagnose and plot.

A resumed run appends a new "start" event whose resumed_from names the checkpoint's step; the records
the first process wrote after that step were never part of the run that continued, so they are dropped.
A crash can leave the last line half-written: it is skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from gptforge.errors import UserError

METRICS = "metrics.jsonl"


@dataclass
class RunLog:
    run_dir: Path
    starts: list[dict] = field(default_factory=list)
    logs: list[dict] = field(default_factory=list)  # "log" events, by step
    evals: list[dict] = field(default_factory=list)
    spikes: list[dict] = field(default_factory=list)
    nan_skips: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    data_grew: list[dict] = field(default_factory=list)
    ends: list[dict] = field(default_factory=list)
    skipped_lines: int = 0

    @property
    def start(self) -> dict:
        """The latest start event (its config and dataset are those of the run as it stands)."""
        return self.starts[-1] if self.starts else {}

    @property
    def config(self) -> dict:
        return self.start.get("config", {})

    @property
    def end_reason(self) -> str | None:
        return self.ends[-1].get("reason") if self.ends else None

    @property
    def label(self) -> str:
        return self.run_dir.name or str(self.run_dir)


_LISTS = {"log": "logs", "eval": "evals", "spike": "spikes", "nan_skip": "nan_skips", "checkpoint": "checkpoints",
          "data_grew": "data_grew", "end": "ends"}


def parse_events(lines: list[str]) -> tuple[list[dict], int]:
    """The JSON objects of the lines, and how many lines were unreadable (a torn last line)."""
    events, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event or not isinstance(event.get("step"), int):
            skipped += 1
            continue
        events.append(event)
    return events, skipped


def fold(events: list[dict], run_dir: Path) -> RunLog:
    """Events in file order to a RunLog: a resume drops what came after its checkpoint step; the last
    record of a step wins."""
    run = RunLog(run_dir)
    for event in events:
        kind = event["event"]
        if kind == "start":
            resumed = event.get("resumed_from")
            if resumed is None:  # a fresh start: nothing before it belongs to this run
                run = RunLog(run_dir, skipped_lines=run.skipped_lines)
            else:
                for name in _LISTS.values():
                    setattr(run, name, [e for e in getattr(run, name) if e["step"] <= resumed])
                run.ends = []
            run.starts.append(event)
        elif kind in _LISTS:
            getattr(run, _LISTS[kind]).append(event)
    for name in ("logs", "evals"):
        by_step = {e["step"]: e for e in getattr(run, name)}
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


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
