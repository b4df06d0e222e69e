"""What `diagnose` and `plot` are given: a gptforge RUN_DIR (metrics.jsonl) or nanoGPT's console log (a file),
opened into the same RunLog so the analysis has no special case for either."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gptforge.analysis.runlog import METRICS, RunLog, fold, read_run
from gptforge.errors import UserError

if TYPE_CHECKING:
    from gptforge.interop.nanogpt_log import NanoLog


def _gpu(name: str | None) -> tuple[float | None, str | None]:
    if not name:
        return None, None
    from gptforge.analysis.gpus import find_gpu

    card = find_gpu(name)
    if not card.peak_flops:
        raise UserError(f"--gpu {name!r}: its peak FLOP/s is not in gptforge's table (train/devices.py)")
    return card.peak_flops, card.label


def open_log(path: Path, config=None, data=None, gpu=None) -> tuple[RunLog, NanoLog]:
    """A nanoGPT log as a run (its records folded as a metrics.jsonl is), and what else the reader found."""
    from gptforge.interop.nanogpt_log import read_nanogpt_log  # (torch, for nanoGPT's schedule: not for a RUN_DIR)

    peak, name = _gpu(gpu)
    log = read_nanogpt_log(path, config=config, data=data, peak_flops=peak, device_name=name)
    run = fold(log.events, path)
    run.trainer, run.time_includes, run.printed_mfu = "nanoGPT", log.time_includes, log.printed_mfu
    return run, log


def _run_path(path) -> Path:
    """RUN_DIR/metrics.jsonl named directly means its run directory; any other file is a nanoGPT log."""
    path = Path(path)
    return path.parent if path.is_file() and path.name == METRICS else path


def open_run(path) -> RunLog:
    """A RUN_DIR or a nanoGPT log file, for plot."""
    path = _run_path(path)
    return open_log(path)[0] if path.is_file() else read_run(path)


def diagnose_command(path, data=None, config=None, gpu=None, out=None):
    """`gptforge diagnose RUN_DIR | nanoGPT.log`: the report beside the run (or in --out)."""
    from gptforge.analysis.diagnose.report import diagnose_command as diagnose_run_dir
    from gptforge.analysis.diagnose.report import write_diagnosis

    path = _run_path(path)
    if path.is_dir():
        if config or gpu:
            raise UserError(f"--config and --gpu are for a nanoGPT log; {path} is a run directory, whose config.toml "
                            "and start record say how it ran")
        return diagnose_run_dir(path, data, out)
    if not path.exists():
        raise UserError(f"{path} does not exist (give a RUN_DIR or nanoGPT's train.py output saved to a file)")
    run, log = open_log(path, config=config, data=data, gpu=gpu)
    out_dir = Path(out) if out else path.parent
    data_dir = str(log.data_dir) if log.data_dir else None  # the folder the reader found, wherever the cwd is
    return write_diagnosis(run, log.config, out_dir, prefix=f"{path.stem}.", data=data_dir, notes=log.notes)


def plot_command(paths, out, log_scale=False, reference_names: tuple = ()) -> Path:
    from gptforge.analysis.plot import plot_runs, unique_labels
    from gptforge.analysis.references import find

    for name in reference_names:  # a misspelt name fails before the logs are read
        find(name)
    runs = [open_run(p) for p in paths]
    written = plot_runs(runs, out, log_scale, reference_names=reference_names)
    print(f"wrote {written} ({', '.join(unique_labels(runs))})")
    return written
