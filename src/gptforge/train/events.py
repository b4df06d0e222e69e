"""What a run reports: nanoGPT-style console lines, metrics.jsonl, MFU, optional wandb/TensorBoard.

Console lines keep nanoGPT's shape so users' habits and grep scripts still work:
    iter N: loss X, time Yms, mfu Z%, T tok/s, lr L
    step N: train loss X, val loss Y, val ppl P
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from gptforge.errors import UserError

# Dense (no sparsity) bf16 tensor-core peak FLOP/s. Consumer GeForce datasheets headline the rate with
# FP16 accumulation or with sparsity; training accumulates in FP32, which runs at half that rate on
# GeForce cards, so those entries use the "BF16 Tensor TFLOPS with FP32 Accumulate", dense.
# Matched against torch.cuda.get_device_name() lower-cased; the first pattern contained in the name wins.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("gh200", 989e12),  # GH200 datasheet: the H100/H200 SXM tensor core, 989 TFLOPS dense bf16
    ("h200 nvl", 835e12),  # H200 NVL datasheet: 1,671 TFLOPS bf16 with sparsity -> 835 dense
    ("h200", 989e12),  # H200 SXM datasheet: 1,979 TFLOPS bf16 with sparsity -> 989 dense
    ("h100 nvl", 835e12),  # H100 NVL datasheet: 1,671 with sparsity -> 835 dense
    ("h100 pcie", 756e12),  # H100 PCIe datasheet: 1,513 TFLOPS bf16 with sparsity -> 756 dense
    ("h100", 989e12),  # H100 SXM datasheet ("H100 80GB HBM3"): 1,979 with sparsity -> 989 dense
    ("a100", 312e12),  # A100 datasheet (SXM and PCIe, 40/80 GB): 312 TFLOPS bf16 dense
    ("l40s", 362e12),  # L40S datasheet: 733 TFLOPS bf16 with sparsity -> 362 dense
    ("l40", 181e12),  # L40 datasheet: 362 TFLOPS bf16 with sparsity -> 181 dense
    ("l4", 121e12),  # L4 datasheet: 242 TFLOPS bf16 with sparsity -> 121 dense
    ("rtx 5090", 209.5e12),  # RTX Blackwell whitepaper: BF16 with FP32 accumulate 209.5 dense (838 sparse FP16-acc headline)
    ("rtx 4090", 165.2e12),  # Ada whitepaper, RTX 4090: BF16 with FP32 accumulate 165.2 dense
    ("rtx 4080 super", 104.4e12),  # Ada whitepaper per-tensor-core rate: 320 TCs x 2.55 GHz, FP32 accumulate
    ("rtx 4080", 97.5e12),  # Ada whitepaper, RTX 4080: BF16 with FP32 accumulate 97.5 dense
    ("rtx 4070 ti super", 88.2e12),  # Ada per-tensor-core rate: 264 TCs x 2.61 GHz, FP32 accumulate
    ("rtx 4070 ti", 80.2e12),  # Ada per-tensor-core rate: 240 TCs x 2.61 GHz, FP32 accumulate
    ("rtx 4070 super", 71.0e12),  # Ada per-tensor-core rate: 224 TCs x 2.475 GHz, FP32 accumulate
    ("rtx 4070", 58.3e12),  # Ada per-tensor-core rate: 184 TCs x 2.475 GHz (116.6 FP16-acc / 2), FP32 accumulate
    ("rtx 3090", 71e12),  # Ampere GA102 whitepaper, RTX 3090: BF16 with FP32 accumulate 71 dense (142 sparse)
]


def peak_flops(device_name: str | None, override: float = 0.0) -> float | None:
    """The device's dense bf16 peak FLOP/s: the `peak_flops` config value, else the table, else None."""
    if override and override > 0:
        return float(override)
    name = (device_name or "").lower()
    for pattern, flops in PEAK_BF16_FLOPS:
        if pattern in name:
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation as a fraction (None when the peak is unknown, e.g. on CPU)."""
    if not peak or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / peak


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction * 100:.2f}%"


def iter_line(step: int, loss: float, dt_ms: float, mfu_fraction: float | None, tok_per_s: float, lr: float) -> str:
    return f"iter {step}: loss {loss:.4f}, time {dt_ms:.2f}ms, mfu {_pct(mfu_fraction)}, {tok_per_s:,.0f} tok/s, lr {lr:.3e}"


def eval_line(step: int, train_loss: float, val_loss: float, seconds: float) -> str:
    return (f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, val ppl {perplexity(val_loss):.2f} "
            f"(eval {seconds:.2f}s, not counted in iteration time)")


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


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
                raise UserError("wandb_log is on but wandb is not installed: pip install wandb, or set --wandb_log=false") from None
            self.wandb = wandb
            wandb.init(project=wandb_project, name=wandb_run_name or None, config=config or {})
        if tensorboard and run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("tensorboard is on but the tensorboard package is not installed: pip install tensorboard, "
                                "or set --tensorboard=false") from None
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


class Console:
    """Prints log lines; on a terminal also keeps a one-line progress bar with an ETA below them."""

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.bar = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar_shown = False

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar_shown:
            self.stream.write("\r\033[K")  # erase the bar, print the line, the next update redraws it
            self._bar_shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def progress(self, step: int, total: int, seconds_per_step: float | None) -> None:
        if not self.bar or total <= 0:
            return
        done = min(1.0, step / total)
        width = 30
        filled = int(done * width)
        eta = format_seconds((total - step) * seconds_per_step) if seconds_per_step else "?"
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done * 100:5.1f}% {step}/{total} ETA {eta}\033[K")
        self.stream.flush()
        self._bar_shown = True

    def close(self) -> None:
        if self._bar_shown:
            self.stream.write("\n")
            self._bar_shown = False
