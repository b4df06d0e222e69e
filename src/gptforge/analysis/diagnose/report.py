"""The output of `gptforge diagnose`: RUN_DIR/diagnosis.md, RUN_DIR/loss.png and the printed summary."""

from __future__ import annotations

import math
import time
from pathlib import Path

from gptforge.analysis.diagnose.findings import Diagnosis, analyse
from gptforge.analysis.diagnose.growth import describe_growth, describe_span
from gptforge.analysis.diagnose.speed import mfu_text
from gptforge.analysis.diagnose.standing import hellaswag_row, run_identity
from gptforge.analysis.runlog import RunLog, read_run
from gptforge.errors import UserError
from gptforge.fmt import count, ppl
from gptforge.fsutil import atomic_write_text

REPORT = "diagnosis.md"
PLOT = "loss.png"


def load_config(run_dir: Path, run: RunLog) -> dict:
    """The resolved config: RUN_DIR/config.toml, else the one in the start event."""
    from gptforge.config import read_toml

    path = run_dir / "config.toml"
    if path.is_file():
        return {**run.config, **read_toml(path)}
    if run.config:
        return dict(run.config)
    raise UserError(f"{run_dir} has no config.toml and its metrics.jsonl no start event: cannot tell how it was run")


def _dataset(config: dict, data: str | None) -> tuple[int | None, float | None, str | None]:
    """(train tokens, characters per token, note) from --data, else characters per token from the run's
    own data directory when it is still there (its size at launch is in the start event)."""
    from gptforge.analysis.plan.sizing import data_info

    if data:
        info = data_info(data)
        return info.train_tokens, info.chars_per_token, None
    path = config.get("data")
    if path and Path(path).is_dir():
        try:
            return None, data_info(path).chars_per_token, None
        except UserError as e:
            return None, None, f"could not read the run's data directory: {e}"
    return None, None, None


def _fmt(value, spec: str = ".4f", none: str = "n/a") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    return format(value, spec)


def summary_rows(d: Diagnosis) -> list[tuple[str, str]]:
    f = d.facts
    end = f" (ended: {f.end_reason})" if f.end_reason else " (no end event: running or crashed)"
    rows = [
        ("step", f"{f.last_step:,} updates (nanoGPT's iter 0-{f.last_step - 1:,}) of max_iters {f.max_iters:,}{end}"
         if f.trainer == "nanoGPT" else f"{f.last_step:,} of {f.max_iters:,}{end}"),
        ("tokens seen", f"{f.tokens_seen:,} ({count(f.tokens_seen)}), {f.tokens_per_iter:,} per iteration"),
    ]
    if f.dataset_train_tokens:
        rows.append(("dataset", f"{f.dataset_train_tokens:,} train tokens ({count(f.dataset_train_tokens)})"))
    versions = f.versions
    if len(versions) > 1:
        rows.append(("epochs", f"{_fmt(f.epochs, '.2f')} over the current dataset (tokens seen / its train tokens)"))
        rows += [(f"dataset version {v.version}", describe_span(v)) for v in versions]
        rows += [("data grew", describe_growth(g)) for g in f.growths]
    else:
        rows.append(("epochs", _fmt(f.epochs, ".2f")))
    if f.params:
        rows.append(
            ("parameters", f"{f.params:,} ({count(f.params)}); {f.params_non_embedding or 0:,} non-embedding")
        )
        rows.append(("tokens per parameter", f"{f.tokens_per_param:.1f} (Chinchilla-optimal: 20)"))
    rows.append(("train loss now", _fmt(f.train_now)))
    rows.append(("val loss now", _fmt(f.val_now) + (f" (perplexity {ppl(f.ppl)})" if f.ppl else "")))
    if f.val_parts_now and len(f.val_parts_now) > 1:  # (one part: the val loss itself)
        rows.append(("val by part", " | ".join(f"{k} {v:.2f}" for k, v in f.val_parts_now.items())))
    if f.gap is not None:
        gt = f.gap_trend
        trend = f", {'widening' if gt.change > 0.01 else 'narrowing' if gt.change < -0.01 else 'steady'} " \
                f"({gt.change:+.3f} over the recent window)" if gt else ""
        rows.append(("val - train gap", f"{f.gap:+.4f}{trend}"))
    if f.val_min is not None:
        rows.append(("best val", f"{f.val_min:.4f} at step {f.val_min_step:,}"))
    if f.standing:
        rows.append(("published runs", f.standing))
    if f.hellaswag:
        rows.append(("hellaswag", hellaswag_row(f.hellaswag, f.params)))
    t = f.trend
    if t.status != "unknown":
        rows.append(
            (
                f"{f.curve} trend (last {t.end - t.start:,.0f} steps)",
                f"{t.status}: {t.change:+.4f} ± {t.change_se:.4f}, noise {t.noise:.4f}",
            )
        )
    rows.append(("spikes / NaN skips", f"{f.spikes} / {f.nan_skips}"))
    sched = f.schedule
    if sched:
        rows.append(
            (
                "learning rate",
                f"{sched.now:.3g} now = {sched.multiplier * 100:.0f}% of peak {sched.peak:g} "
                f"({sched.schedule}, min {sched.min_lr:g}, {sched.optimizer})",
            )
        )
    elif f.lr_logged_now:
        rows.append(("learning rate", f"{f.lr_logged_now:.3g} now, peak logged {f.lr_logged_max:.3g}"))
    rows.append(("warmup", f"{f.warmup_iters:,} iterations = {count(f.warmup_tokens)} tokens"))
    tp = f.throughput
    if tp:
        rows.append(("throughput", f"{tp.median:,.0f} tok/s median, variation {tp.cv * 100:.0f}%, slowest tenth "
                                   f"{tp.p10:,.0f}, drift {tp.drift * 100:+.0f}%"))
    mfu = mfu_text(f)
    if mfu:
        rows.append(("MFU", mfu))
    if f.inflated_steps:
        rows.append(("step time", f"{f.step_ms:,.1f} ms median; {len(f.inflated_steps)} logged iteration(s) also "
                                  "count an eval or the start-up (left out of throughput and MFU)"))
    if f.eval_sequences:
        rows.append(("eval size", f"{f.eval_sequences:,} sequences ({count(f.eval_tokens)} tokens), about "
                                  f"±{f.eval_error:.3f}"))
    return rows


def _versions_section(d: Diagnosis) -> list[str]:
    """A table of the dataset versions the run trained on, when it trained on more than one."""
    versions, growths = d.facts.versions, d.facts.growths
    if len(versions) < 2:
        return []
    lines = [
        "",
        "## Dataset versions",
        "",
        "Epochs are counted per version: tokens trained while it was the dataset / its train tokens.",
        "",
        "| version | train tokens | val tokens | steps | tokens trained | epochs over it |",
        "|---|---|---|---|---|---|",
    ]
    for v in versions:
        lines.append(f"| {v.version} | {_fmt(v.train_tokens, ',')} | {_fmt(v.val_tokens, ',')} | "
                     f"{v.start_step:,}-{v.end_step:,} | {v.tokens:,} | {_fmt(v.epochs, '.2f')} |")
    if growths:
        lines += [""] + [f"- The data grew {describe_growth(g)}." for g in growths]
    return lines


def _source(run: RunLog) -> str:
    if run.trainer == "nanoGPT":
        return f"nanoGPT's console log {run.run_dir.name} (its `iter` and `step` lines and the settings it echoes)"
    return "metrics.jsonl and config.toml"


def render_markdown(run_dir: Path, d: Diagnosis, plot_name: str | None, notes: list[str], source: str) -> str:
    lines = [f"# Diagnosis of `{run_dir}`", "",
             f"Written by `gptforge diagnose` on {time.strftime('%Y-%m-%d %H:%M')} from {source}.",
             "", "## Summary", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(d)]
    lines += _versions_section(d)
    lines += ["", "## Findings", ""]
    if not d.findings:
        lines.append("Nothing stands out (too few records to judge?).")
    for i, finding in enumerate(d.findings, 1):
        lines += [f"### {i}. {finding.title}", "", "Evidence:", ""]
        lines += [f"- {e}" for e in finding.evidence]
        lines += ["", "Try:", ""] + [f"- {a}" for a in finding.advice] + [""]
    if plot_name:
        lines += ["## Curves", "", f"![loss, learning rate and throughput]({plot_name})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def render_summary(run_dir: Path, d: Diagnosis, written: list[Path]) -> str:
    width = max(len(k) for k, _ in summary_rows(d))
    lines = [f"diagnosis of {run_dir}"] + [f"  {k:<{width}}  {v}" for k, v in summary_rows(d)]
    lines.append("findings (most important first):")
    for i, finding in enumerate(d.findings, 1):
        lines.append(f"  {i}. {finding.title}")
        if finding.evidence:
            lines.append(f"     - {finding.evidence[0]}")
        if finding.advice:
            lines.append(f"     try: {finding.advice[0]}")
    lines.append("wrote " + ", ".join(str(p) for p in written))
    return "\n".join(lines)


def write_diagnosis(run: RunLog, config: dict, out_dir: Path, *, prefix: str = "", data: str | None = None,
                    notes: list[str] | None = None) -> Diagnosis:
    """Analyse the run, write `out_dir/{prefix}diagnosis.md` and `{prefix}loss.png`, print the summary."""
    from gptforge.analysis.plot import plot_runs

    train_tokens, chars_per_token, note = _dataset(config, data)
    d = analyse(run, config, train_tokens, chars_per_token, run_identity(run.run_dir, config, data))
    notes = list(notes or []) + ([note] if note else [])
    if run.skipped_lines:
        notes.append(f"{run.skipped_lines} unreadable line(s) in metrics.jsonl were skipped (a crash mid-write?)")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a directory")
    report, plot = out_dir / (prefix + REPORT), out_dir / (prefix + PLOT)
    written, plot_name = [], None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if run.logs or run.evals:
            plot_runs([run], plot, title=f"run {run.run_dir}")
            plot_name = plot.name
            written.append(plot)
        atomic_write_text(report, render_markdown(run.run_dir, d, plot_name, notes, _source(run)))
    except PermissionError as e:
        raise UserError(f"cannot write the diagnosis into {out_dir} ({e.strerror}): choose a folder with --out DIR") \
            from None
    written.insert(0, report)
    print(render_summary(run.run_dir, d, written))
    return d


def run_diagnosis(run_dir: Path, data: str | None = None, out: str | None = None) -> Diagnosis:
    run = read_run(run_dir)
    return write_diagnosis(run, load_config(run_dir, run), Path(out) if out else run_dir, data=data)


def diagnose_command(run_dir, data=None, out=None):
    return run_diagnosis(Path(run_dir), data, out)
