"""`gptforge plot`: loss curves (against steps and tokens), learning rate and throughput of one or more
runs, overlaid with a legend; HellaSwag against tokens when a run scored it; published reference runs
(analysis/references.py) overlaid with --reference. matplotlib's Agg backend (no display needed); the image is
written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

from gptforge.analysis import references
from gptforge.analysis.curves import smooth, smoothing_span
from gptforge.analysis.runlog import RunLog, finite, val_parts
from gptforge.errors import UserError
from gptforge.fmt import count
from gptforge.fsutil import atomic_write_bytes
from gptforge.train.events import Eval, Event
from gptforge.train.hellaswag_stats import CHANCE

FORMATS = ("png", "svg", "pdf")


def loss_limits(values: list[float]) -> tuple[float, float] | None:
    """Y limits that keep the first steps' high losses from flattening the rest of the curve."""
    vals = sorted(v for v in values if finite(v))
    if len(vals) < 5:
        return None
    lo, hi = vals[0], vals[-1]
    high = vals[int(0.95 * (len(vals) - 1))]
    if hi - lo > 3 * (high - lo) > 0:
        hi = high + 0.5 * (high - lo)
    pad = 0.03 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _series(events: list[Event], x: str, y: str) -> tuple[list[float], list[float]]:
    """(x, y) of the records where both fields are numbers: x and y name fields of the records' schema."""
    pairs = [(getattr(e, x), getattr(e, y)) for e in events if finite(getattr(e, x)) and finite(getattr(e, y))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def split_at(xs: list[float], ys: list[float], breaks: list[float]) -> list[tuple[list[float], list[float]]]:
    """The series cut before each break (a point at a break begins the next piece); empty pieces dropped."""
    pieces, edges = [], sorted(breaks) + [float("inf")]
    for low, high in zip([float("-inf")] + edges[:-1], edges):
        piece = [(x, y) for x, y in zip(xs, ys) if low <= x < high]
        if piece:
            pieces.append(([p[0] for p in piece], [p[1] for p in piece]))
    return pieces


PART_MARKERS = ("s", "^", "v", "D", "x")


def _part_series(evals: list[Eval], x: str) -> dict[str, tuple[list[float], list[float]]]:
    """Per dataset part, (x, val loss) of the evals that logged it; none for a run that only ever had one part
    (its part's curve is the val curve)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    if not any(len(val_parts(e)) > 1 for e in evals):
        return out
    for e in evals:
        for part, loss in val_parts(e).items():
            if finite(getattr(e, x)):
                xs, ys = out.setdefault(part, ([], []))
                xs.append(getattr(e, x))
                ys.append(loss)
    return out


def unique_labels(runs: list[RunLog]) -> list[str]:
    """Run directory names, with as much of the path as it takes to tell them apart."""
    for depth in range(1, 6):
        labels = ["/".join(r.run_dir.resolve().parts[-depth:]) for r in runs]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r.run_dir) for r in runs]


def _hellaswag_panel(ax, runs: list[RunLog], labels: list[str], colors: list, refs: list[references.Reference]):
    """HellaSwag acc_norm (± its standard error) against tokens, with chance and the finished models asked for."""
    for i, run in enumerate(runs):
        scored = [e for e in run.evals if finite(e.tokens) and finite(e.hellaswag_acc_norm)]
        if scored:
            ax.errorbar([e.tokens for e in scored], [e.hellaswag_acc_norm for e in scored],
                        yerr=[e.hellaswag_stderr if finite(e.hellaswag_stderr) else 0 for e in scored],
                        color=colors[i % len(colors)], marker="o", markersize=3.5, linewidth=1.4, capsize=2,
                        label=f"{labels[i]}: acc_norm ({scored[-1].hellaswag_items or '?'} items)" if len(runs) > 1
                        else f"acc_norm ({scored[-1].hellaswag_items or '?'} items)")
    ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1.0, label=f"chance ({CHANCE:.2f})")
    for j, ref in enumerate(refs):
        value = ref.points[-1][1]
        ax.axhline(value, color=f"C{(j + 3) % 10}", linestyle="-.", linewidth=1.2,
                   label=f"{ref.label}: {value:.4f}\n({ref.source})")
    ax.set_title("HellaSwag (completion style, acc_norm)")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _reference_lines(ax, refs: list[references.Reference], x_max: float) -> list[float]:
    """Val-loss references on the loss-vs-tokens axes: a curve up to the runs' last token (the runs stay
    readable), a finished model as a level; the values drawn (for the y limits)."""
    drawn = []
    for j, ref in enumerate(refs):
        style = dict(color=f"C{(j + 3) % 10}", linestyle="-.", linewidth=1.4, label=f"{ref.label}\n({ref.source})")
        if not ref.is_curve:
            ax.axhline(ref.points[0][1], **style)
            drawn.append(ref.points[0][1])
            continue
        first, last = min(ref.points)[0], max(ref.points)[0]
        end = min(last, x_max) if x_max > first else last
        if end < last:
            style["label"] += f"\nshown to {count(end)} of its {count(last)} tokens (ends at {max(ref.points)[1]:.2f})"
        xs = sorted({first + (end - first) * k / 200 for k in range(201)} | {t for t, _ in ref.points if t <= end})
        ys = [references.value_at(ref, x) for x in xs]
        ax.plot(xs, ys, marker="*" if len(xs) == 1 else None, markersize=9, **style)
        drawn += ys
    return drawn


def draw(runs: list[RunLog], log_scale: bool = False, title: str | None = None, reference_names: tuple = ()):
    """A matplotlib Figure of the runs: loss vs step, loss vs tokens, learning rate, tokens/s, and HellaSwag vs
    tokens when a run scored it (or a HellaSwag reference is asked for)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    refs = [references.find(name) for name in reference_names]
    swag_refs = [r for r in refs if r.metric == "hellaswag_acc_norm"]
    swag = bool(swag_refs) or any(finite(e.hellaswag_acc_norm) for r in runs for e in r.evals)
    fig = plt.figure(figsize=(13, 12.5 if swag else 8.5), constrained_layout=True)
    grid = fig.add_gridspec(3 if swag else 2, 2)
    ax_step, ax_tok, ax_lr, ax_speed = (fig.add_subplot(grid[r, c]) for r, c in ((0, 0), (0, 1), (1, 0), (1, 1)))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_losses = []
    labels = unique_labels(runs)
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        name = labels[i] if len(runs) > 1 else ""
        prefix = f"{name}: " if name else ""
        for ax, x in ((ax_step, "step"), (ax_tok, "tokens")):
            xs, ys = _series(run.logs, x, "loss")
            if xs:
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(xs, smooth(ys, smoothing_span(len(ys))), color=color, linewidth=1.6,
                        label=f"{prefix}train (smoothed)")
            vx, vy = _series(run.evals, x, "val_loss")
            grew_at = [e.step if x == "step" else run.tokens_at(e.step) for e in run.data_grew]
            for j, (sx, sy) in enumerate(split_at(vx, vy, grew_at)):  # another val split: no line across
                ax.plot(sx, sy, color=color, linestyle="--", marker="o", markersize=3.5, linewidth=1.4,
                        label=f"{prefix}val" if j == 0 else None)
            for j, (part, (px, py)) in enumerate(_part_series(run.evals, x).items()):
                ax.plot(px, py, color=color, linestyle=":", marker=PART_MARKERS[j % len(PART_MARKERS)],
                        markersize=3.5, linewidth=1.1, label=f"{prefix}val {part}")
            all_losses += ys + vy
            for j, e in enumerate(run.data_grew):  # where a resume took in new shards
                at = e.step if x == "step" else run.tokens_at(e.step)
                ax.axvline(at, color=color, alpha=0.7, linewidth=1.2, linestyle="-.",
                           label=f"{prefix}data grew" if j == 0 else None)
                ax.annotate(f" v{e.version}: {count(e.old_train_tokens or 0)} -> {count(e.new_train_tokens or 0)} "
                            "train tokens", (at, 0.98), xycoords=("data", "axes fraction"), rotation=90, va="top",
                            fontsize=7, color=color)
            if x == "step":  # where the trainer reported spikes (dotted) and skipped non-finite losses (red)
                for e in run.spikes:
                    ax.axvline(e.step, color=color, alpha=0.3, linewidth=0.8, linestyle=":")
                for j, e in enumerate(run.nan_skips):
                    ax.axvline(e.step, color="red", alpha=0.5, linewidth=0.8,
                               label=f"{prefix}non-finite loss skipped" if j == 0 else None)
        xs, ys = _series(run.logs, "step", "lr")
        if xs:
            ax_lr.plot(xs, ys, color=color, linewidth=1.5, label=name or "learning rate")
        # (as diagnose does, without the iterations whose time also counts an eval or the start-up: nanoGPT's)
        xs, ys = _series([e for e in run.logs if e.step not in run.time_includes], "step", "tok_per_s")
        if xs:
            ax_speed.plot(xs, ys, color=color, alpha=0.35, linewidth=0.8)
            ax_speed.plot(xs, smooth(ys, smoothing_span(len(ys))), color=color, linewidth=1.5, label=name or "tokens/s")

    tokens_fmt = FuncFormatter(lambda v, _: count(v) if v else "0")
    x_max = max([e.tokens for r in runs for e in r.logs + r.evals if finite(e.tokens)] or [0])
    ref_losses = _reference_lines(ax_tok, [r for r in refs if r.metric == "val_loss"], x_max)
    if swag:
        ax_swag = fig.add_subplot(grid[2, :])
        _hellaswag_panel(ax_swag, runs, labels, colors, swag_refs)
        ax_swag.xaxis.set_major_formatter(tokens_fmt)
    for ax, xlabel, ttl, extra in ((ax_step, "step", "loss vs step", []),
                                   (ax_tok, "tokens seen", "loss vs tokens", ref_losses)):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cross-entropy loss (nats/token)")
        ax.set_title(ttl)
        if log_scale:
            ax.set_yscale("log")
        else:
            limits = loss_limits(all_losses + extra)
            if limits:
                ax.set_ylim(*limits)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_tok.xaxis.set_major_formatter(tokens_fmt)
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_speed.set_title("throughput")
    ax_speed.set_xlabel("step")
    ax_speed.set_ylabel("tokens / second")
    ax_speed.yaxis.set_major_formatter(tokens_fmt)
    for ax in (ax_lr, ax_speed):
        ax.grid(True, alpha=0.3)
        if len(runs) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title or (f"run {labels[0]}" if len(runs) == 1 else f"{len(runs)} runs"), fontsize=13)
    return fig


def save_figure(fig, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt, dpi=110)
    finally:
        plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def plot_runs(runs: list[RunLog], out: str | Path, log_scale: bool = False, title: str | None = None,
              reference_names: tuple = ()) -> Path:
    out = Path(out)
    if out.suffix.lower().lstrip(".") not in FORMATS:
        raise UserError(f"--out {out}: the file name must end in {', '.join('.' + f for f in FORMATS)}")
    if not any(r.logs or r.evals for r in runs):
        raise UserError("nothing to plot: " + ", ".join(str(r.run_dir) for r in runs) +
                        " logged no loss yet (no log or eval events in metrics.jsonl)")
    return save_figure(draw(runs, log_scale, title, reference_names), out)
