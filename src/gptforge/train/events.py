"""RUN_DIR/metrics.jsonl: one JSON object per event, written as the run goes, mirrored to wandb/TensorBoard."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gptforge.errors import UserError


class MetricsLog:
    """RUN_DIR/metrics.jsonl (appended, one flushed line per event) plus the optional wandb/TensorBoard mirrors."""

    def __init__(self, run_dir: Path | None, *, wandb_log: bool = False, wandb_project: str = "gptforge",
                 wandb_run_name: str = "", tensorboard: bool = False, config: dict | None = None,
                 t0: float | None = None, fresh: bool = False):
        self.t0 = t0 if t0 is not None else time.time()  # "time" in each record counts from here
        self.file = None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            # a new run starts the file over; a resumed one appends (readers take the last record per step)
            self.file = open(run_dir / "metrics.jsonl", "w" if fresh else "a", encoding="utf-8")
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

    def write(self, event: str, step: int, **fields) -> None:
        record = {"event": event, "step": step, "time": round(time.time() - self.t0, 3), **fields}
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()  # a crash loses at most the line being written
        numeric = {k: v for k, v in fields.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.wandb and event in ("log", "eval"):
            self.wandb.log({f"{event}/{k}": v for k, v in numeric.items()}, step=step)
        if self.tb and event in ("log", "eval"):
            for k, v in numeric.items():
                self.tb.add_scalar(f"{event}/{k}", v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
