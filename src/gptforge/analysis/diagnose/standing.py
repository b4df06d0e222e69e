"""Where a run stands beyond its own loss curve: its HellaSwag scores through the run (at chance, rising, flat
since step N) and its val loss beside the published runs of the same size, tokenizer and data family
(analysis/references.py). The data family comes from the dataset's manifest: each source's path, kind and
the URL `gptforge download` recorded for it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from gptforge.analysis import curves, references
from gptforge.analysis.diagnose.finding import Finding
from gptforge.analysis.runlog import RunLog, finite
from gptforge.data.provenance import Record
from gptforge.errors import UserError
from gptforge.fmt import count
from gptforge.train.hellaswag_stats import CHANCE, stderr

SIGMAS = 2.0  # a change beyond this many standard errors is real
FLAT_GAIN = 0.02  # flat: a gain of 2 points of acc_norm across the stretch would have shown (the scores' precision)
FULL_SET = 10_042  # items in HellaSwag's val set


@dataclass(frozen=True)
class SwagScore:
    step: int
    tokens: float
    acc_norm: float
    items: int

    @property
    def se(self) -> float:
        return stderr(self.acc_norm, self.items)


@dataclass(frozen=True)
class SwagTrend:
    scores: list[SwagScore]
    status: str  # "at chance", "rising", "falling", "flat", "one score", "unclear" (too noisy to tell)
    since: SwagScore | None  # rising/falling: where the recent window starts; flat: where the flat stretch does
    change: float = 0.0  # fitted across the window (rising/falling) or the flat stretch
    change_se: float = 0.0

    @property
    def now(self) -> SwagScore:
        return self.scores[-1]


def at_chance(s: SwagScore) -> bool:
    return s.acc_norm - CHANCE <= SIGMAS * stderr(CHANCE, s.items)


def _change(scores: list[SwagScore]) -> tuple[float, float]:
    """The fitted change of acc_norm across the scores and its standard error, from the scores' own binomial
    errors (conservative: the evals score the same items, so their errors are correlated, not independent)."""
    fit = curves.fit_line([s.step for s in scores], [s.acc_norm for s in scores])
    if fit is None:
        return 0.0, math.inf
    span = scores[-1].step - scores[0].step
    mean_step = sum(s.step for s in scores) / len(scores)
    sxx = sum((s.step - mean_step) ** 2 for s in scores)
    sigma = math.sqrt(sum(s.se ** 2 for s in scores) / len(scores))
    return fit.slope * span, sigma * span / math.sqrt(sxx)


def hellaswag_trend(run: RunLog) -> SwagTrend | None:
    """The run's HellaSwag scores and what they do over the recent window (the last 30% of the steps scored,
    at least 3 scores), or over the whole run when the recent scores are too noisy to tell; None when it
    scored none."""
    scores = [SwagScore(e.step, e.tokens, e.hellaswag_acc_norm, e.hellaswag_items) for e in run.evals
              if finite(e.hellaswag_acc_norm) and finite(e.tokens) and (e.hellaswag_items or 0) > 1]
    if not scores:
        return None
    if at_chance(scores[-1]):
        return SwagTrend(scores, "at chance", None)
    if len(scores) < 3:
        return SwagTrend(scores, "one score" if len(scores) == 1 else "unclear", None)
    first = len(scores) - len(curves.recent([(s.step, s.acc_norm) for s in scores], min_points=3))
    change, se = _change(scores[first:])
    if SIGMAS * se > FLAT_GAIN and abs(change) <= SIGMAS * se:  # too noisy to tell recently: over the whole run?
        first = 0
        change, se = _change(scores)
    if abs(change) > SIGMAS * se:
        return SwagTrend(scores, "rising" if change > 0 else "falling", scores[first], change, se)
    if SIGMAS * se > FLAT_GAIN:
        return SwagTrend(scores, "unclear", scores[first], change, se)
    while first > 0 and abs((longer := _change(scores[first - 1:]))[0]) <= SIGMAS * longer[1]:
        first -= 1  # the flat stretch reaches back as far as no change shows
    change, se = _change(scores[first:])
    return SwagTrend(scores, "flat", scores[first], change, se)


def _describe(s: SwagScore) -> str:
    return f"acc_norm {s.acc_norm:.4f} ± {s.se:.4f} on {s.items:,} items at step {s.step:,} ({count(s.tokens)} tokens)"


def _published(params: float | None) -> list[str]:
    """What published models of this size score (any data: HellaSwag is one fixed test)."""
    refs = [r for r in references.REFERENCES.values() if r.metric == "hellaswag_acc_norm" and params
            and references.same_size(params, r.params)]
    return [f"{r.label} scores {r.points[-1][1]:.4f} ({r.source})" for r in refs]


def _moved(t: SwagTrend) -> str:
    return (f"{t.change:+.4f} ± {t.change_se:.4f} (fitted) from step {t.since.step:,} ({t.since.acc_norm:.4f}) to "
            f"step {t.now.step:,}")


def hellaswag_row(t: SwagTrend, params: float | None) -> str:
    status = t.status
    if t.status in ("rising", "falling"):
        status = f"{t.status}, {_moved(t)}"
    elif t.status == "flat":
        status = f"flat since step {t.since.step:,}"
    elif t.status == "unclear":
        status = "too few or too noisy scores to tell a trend"
    return "; ".join([f"{_describe(t.now)}: {status}"] + _published(params))


def hellaswag_finding(t: SwagTrend | None, params: float | None, val_status: str) -> Finding | None:
    """At chance, rising, falling or flat since step N, with what to make of it; None for a single score or
    scores too noisy to tell."""
    if t is None or t.status in ("one score", "unclear"):
        return None
    now = t.now
    finer = None if now.items >= FULL_SET else (
        f"score more items to see smaller changes: {now.items:,} items measure ±{now.se:.3f}; all {FULL_SET:,} "
        f"(hellaswag_limit=0) ±{stderr(now.acc_norm, FULL_SET):.3f}")
    ev = [_describe(now)] + _published(params)
    if t.status == "at chance":
        ev.insert(1, f"chance is {CHANCE:.2f}: the score is within {SIGMAS:.0f} standard errors of it")
        advice = ["normal early in training and for small models: HellaSwag leaves chance only once the model has "
                  "learned a good deal of English; judge progress by the val loss until then"]
        return Finding("hellaswag", 20, f"HellaSwag is at chance after {count(now.tokens)} tokens", ev,
                       advice + [finer] if finer else advice)
    if t.status in ("rising", "falling"):
        ev.insert(1, f"acc_norm moved {_moved(t)}, beyond the scores' noise")
        if t.status == "rising":
            return Finding("hellaswag", 10, f"HellaSwag is rising: {t.since.acc_norm:.3f} -> {now.acc_norm:.3f} "
                           f"since step {t.since.step:,}", ev, ["nothing to fix: the model keeps learning what "
                                                                "HellaSwag measures"])
        return Finding("hellaswag", 40, f"HellaSwag is falling: {t.since.acc_norm:.3f} -> {now.acc_norm:.3f} since "
                       f"step {t.since.step:,}", ev, ["compare with the val loss: a falling score with a rising val "
                                                      "loss is overfitting; keep the checkpoint of the better score"])
    flat = [x for x in t.scores if x.step >= t.since.step]
    ev.insert(1, f"{len(flat)} scores since step {t.since.step:,} ({min(x.acc_norm for x in flat):.4f}-"
                 f"{max(x.acc_norm for x in flat):.4f}) changed {t.change:+.4f} ± {t.change_se:.4f} (fitted): a gain "
                 f"of {FLAT_GAIN:.2f} would have shown")
    advice = ["the val loss is still falling: HellaSwag often moves later than the loss; keep training"
              if val_status == "improving" else
              "the val loss has stopped too: a larger model or more (fresh) data moves HellaSwag, more steps do not"]
    return Finding("hellaswag", 30, f"HellaSwag has been flat since step {t.since.step:,}", ev,
                   advice + [finer] if finer else advice)


# ---------------------------------------------------------------------------------------- published runs

def _recorded_url(record: Record, path: Path) -> str:
    """The URL `gptforge download` fetched `path` from, if its folder's record says so."""
    entry = record.get(path.name)
    return str(entry.get("source", "")) if isinstance(entry, dict) else ""


def dataset_family(sources: list[dict]) -> str | None:
    """One family for the dataset's sources; "a mix of ..." when they differ; None when a source is unknown."""
    paths = [Path(str(s.get("path", ""))) for s in sources]
    records = {folder: Record(folder) for folder in {p.parent for p in paths}}  # each folder's record read once
    families = [references.data_family(str(s.get("path", "")), str(s.get("kind", "")),
                                       _recorded_url(records[path.parent], path)) for s, path in zip(sources, paths)]
    if not families or None in families:
        return None
    kinds = sorted(set(families))
    return kinds[0] if len(kinds) == 1 else f"a mix of {' and '.join(kinds)}"


def run_identity(run_dir: Path, config: dict, data: str | None) -> tuple[str | None, str | None]:
    """(tokenizer name, data family) of a run: from its dataset's manifest (--data, else the run's own data
    directory), the tokenizer else from RUN_DIR/tokenizer."""
    from gptforge.data.manifest import load_manifest
    from gptforge.data.tokenizers import META_FILE

    folder = data or config.get("data")
    tokenizer = family = None
    if folder and Path(folder).is_dir():
        try:
            manifest = load_manifest(folder)
        except UserError:
            manifest = None
        if manifest:
            tokenizer, family = manifest["tokenizer"].get("name"), dataset_family(manifest["sources"])
        else:  # a nanoGPT folder: its name (openwebtext, shakespeare_char) is all there is, and as nanoGPT's
            # sample.py assumes, a meta.pkl means its own (character) vocabulary, none means GPT-2's
            family = references.data_family(Path(folder).name)
            tokenizer = "char" if (Path(folder) / "meta.pkl").is_file() else "gpt2"
    if tokenizer is None:
        try:
            tokenizer = json.loads((run_dir / "tokenizer" / META_FILE).read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            pass
    return tokenizer, family


def where_it_stands(run: RunLog, params: float | None, identity: tuple[str | None, str | None]) -> str | None:
    """The last val loss beside the published runs that match (or why none does); None without a val loss."""
    last = next((e for e in reversed(run.evals) if finite(e.val_loss) and finite(e.tokens)), None)
    if last is None or not params:
        return None
    return references.where_run_stands(params, *identity, last.tokens, last.val_loss)
