"""The findings about speed and measurement: unstable throughput, low MFU (against the device's own peak),
step times that also count evals (nanoGPT's), and val losses measured on too few sequences."""

from __future__ import annotations

import math
import statistics

from gptforge.analysis.diagnose.facts import PER_SEQUENCE_LOSS_SPREAD, Facts
from gptforge.analysis.diagnose.finding import Finding
from gptforge.fmt import count
from gptforge.train.devices import NANOGPT_MFU_PEAK

LOW_MFU = 0.20


def mfu_text(f: Facts) -> str | None:
    """MFU against the device's peak and in nanoGPT's convention (an A100's 312 TFLOPS), side by side."""
    real, a100 = f.mfu, f.mfu_a100
    if real is None and a100 is None:
        return None
    parts = []
    if real is not None:
        peak = f", {f.peak_flops / 1e12:,.1f} TFLOPS" if f.peak_flops else ""
        parts.append(f"{real.median * 100:.1f}% median of the real GPU's dense bf16 peak ({f.device_name}{peak})")
    if a100 is not None:
        how = "as nanoGPT printed it" if f.trainer == "nanoGPT" else "the same FLOP/s"
        parts.append(f"{a100.median * 100:.2f}% in nanoGPT's convention ({how}: against an A100's "
                     f"{NANOGPT_MFU_PEAK / 1e12:.0f} TFLOPS whatever the device)")
    if real is None and f.trainer == "nanoGPT":
        parts.append("on a CPU a GPU's peak means nothing" if f.device == "cpu" else
                     "pass --gpu NAME for MFU against the real GPU's peak")
    return "; ".join(parts)


def throughput(f: Facts) -> list[Finding]:
    out, tp = [], f.throughput
    if tp and (tp.cv > 0.25 or tp.p10 < 0.6 * tp.median or tp.drift < -0.2):
        ev = [f"tokens/s: median {tp.median:,.0f}, slowest tenth {tp.p10:,.0f}, variation {tp.cv * 100:.0f}%"]
        if tp.drift < -0.2:
            ev.append(f"the second half ran {-tp.drift * 100:.0f}% slower than the first")
        out.append(Finding("throughput_unstable", 25, "Throughput is unstable", ev,
                           ["look for other processes on the machine, thermal throttling, or a slow disk for the "
                            "shards; evals and checkpoints are not counted in these timings"]))
    mfu = f.mfu
    if mfu and f.device == "cuda" and mfu.median < LOW_MFU:
        out.append(Finding("low_mfu", 30, f"Low MFU ({mfu.median * 100:.1f}%)", [mfu_text(f)],
                           ["--compile=true, bf16, the largest micro-batch that fits (`gptforge plan --gpu ...` says "
                            "which), a vocabulary padded to 64, and `gptforge bench` to measure"]))
    return out


def step_times(f: Facts) -> Finding | None:
    """nanoGPT's `time` of an iteration also counts the eval before it (and the start-up for the first)."""
    if not f.inflated_steps or not f.step_ms:
        return None
    ev = []
    first = next((x for x in f.inflated_steps if x[2].startswith("the start-up")), None)
    if first:
        ev.append(f"iter {first[0] - 1}: {first[1]:,.0f} ms against a median of {f.step_ms:,.1f} ms: it counts "
                  f"{first[2]}")
    evals = [x for x in f.inflated_steps if x is not first]
    if evals:
        ms = statistics.median(x[1] for x in evals)
        iters = ", ".join(str(x[0] - 1) for x in evals[:4]) + (" ..." if len(evals) > 4 else "")
        ev.append(f"{len(evals)} iteration(s) right after an eval (iters {iters}): median {ms:,.0f} ms, i.e. about "
                  f"{(ms - f.step_ms) / 1000:.2f} s of eval (and checkpoint save) each")
    return Finding("step_time_includes_evals", 22, f"The slow iterations at {'the start and at ' if first else ''}"
                   "each eval are the evals, not slow steps", ev,
                   ["nothing to fix: diagnose leaves these iterations out of throughput and MFU (gptforge times a step "
                    "alone and reports evals and checkpoints on their own lines)"])


def eval_noise(f: Facts, cfg: dict) -> Finding | None:
    err, t = f.eval_error, f.trend
    if err is None or err < 0.02:
        return None
    target = math.ceil((PER_SEQUENCE_LOSS_SPREAD / 0.01) ** 2)  # sequences for a ±0.01 standard error
    batch = cfg.get("batch_size") or 1
    ev = [f"the val loss is measured on {f.eval_sequences:,} sequences ({count(f.eval_tokens)} tokens): about "
          f"±{err:.3f} from which sequences were picked, assuming a per-sequence spread of {PER_SEQUENCE_LOSS_SPREAD}"]
    if f.trainer == "nanoGPT":
        ev.append(f"nanoGPT draws new random batches at every eval, so two evals differ by about ±{err * 2 ** 0.5:.3f} "
                  "even where the model did not change")
    if math.isfinite(t.noise):
        ev.append(f"observed scatter around the recent trend: {t.noise:.4f}")
    return Finding("eval_noise", 20, "The val loss is measured on few batches", ev,
                   [f"--eval_iters={math.ceil(target / batch)} (about {target:,} sequences, ±0.01); differences below "
                    f"{2 * err:.3f} between runs or checkpoints are noise now"])
