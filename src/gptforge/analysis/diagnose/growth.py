"""Dataset versions in a run, from its own records: which version of the dataset it trained on when, the
tokens and epochs each version got, and what the val loss did after each growth.

The trainer writes a "start" event at every launch (with the dataset's version and size then) and a
"data_grew" event when a resume finds new shards appended by `gptforge prepare`. Epochs are counted per
version: the tokens trained while a version was the dataset over that version's train tokens, so "2.0
epochs over 1B tokens, then 0.5 over 3B" reads as such instead of as one mixed count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gptforge.analysis import curves
from gptforge.analysis.runlog import RunLog, finite, val_parts

MIN_CHANGE = 0.01  # nats: a val change smaller than this (or than twice the evals' scatter) is no change
USED_UP_EPOCHS = 1.0  # below one pass over the old data, more data cannot have been what the run lacked


@dataclass(frozen=True)
class VersionSpan:
    """The steps during which one version of the dataset was the training data."""

    version: int | None
    train_tokens: int | None
    val_tokens: int | None
    start_step: int
    end_step: int
    start_tokens: int
    end_tokens: int

    @property
    def tokens(self) -> int:
        return self.end_tokens - self.start_tokens

    @property
    def epochs(self) -> float | None:
        return self.tokens / self.train_tokens if self.train_tokens else None


@dataclass(frozen=True)
class PartChange:
    """One dataset part's val loss around a growth (from the evals' per-part val losses)."""

    name: str
    new: bool  # added by this growth: no val loss before it
    before: float | None  # the last eval at or before the growth (the trainer measures the checkpoint on the grown
    # val split at the growth step, so a new part has one too)
    first: float | None  # the first eval after it
    last: float | None  # the last eval after it (before the next growth)

    @property
    def base(self) -> float | None:
        return self.before if self.before is not None else self.first

    @property
    def change(self) -> float | None:
        return None if self.base is None or self.last is None else self.last - self.base

    def describe(self) -> str:
        base = self.base
        label = f"{self.name} (new)" if self.new else self.name
        if base is None or self.last is None:
            return f"{label}: too few evals"
        return f"{label} {base:.2f} -> {self.last:.2f} ({self.change:+.2f})"


@dataclass(frozen=True)
class Growth:
    """One growth of the train data, and the val loss around it."""

    step: int
    tokens: int  # trained before the growth
    old: VersionSpan
    new: VersionSpan
    val_before: tuple[float, float] | None  # (step, loss): the last eval at or before the growth, old val set
    after: list[tuple[float, float]]  # evals after the growth, until the next one
    trend_before: curves.Trend
    trend_after: curves.Trend
    lr_before: float | None
    lr_after: float | None
    verdict: str  # helped, falling_as_before, no_change, worse, too_early; blind (no val of the new data);
    # with per-part val losses also capacity (no part moves) and forgetting (new learned, old worse)
    tolerance: float
    parts: list[PartChange]

    @property
    def val_set_changed(self) -> bool:
        return None not in (self.old.val_tokens, self.new.val_tokens) and self.old.val_tokens != self.new.val_tokens

    @property
    def val_has_new_data(self) -> bool | None:
        """Whether the val split took in part of the added data (None when a side's size is unknown)."""
        if self.parts:
            return any(p.new for p in self.parts)
        return None if None in (self.old.val_tokens, self.new.val_tokens) else self.val_set_changed

    @property
    def change(self) -> float | None:
        """Val loss now (the last eval before the next growth) minus just before the growth."""
        return self.after[-1][1] - self.val_before[1] if self.after and self.val_before else None


def _marks(run: RunLog) -> list[dict]:
    """(step, version, train and val tokens) at every launch and growth, in step order."""
    marks: dict[int, dict] = {}
    for e in sorted(run.starts, key=lambda s: s.step):
        mark = {"version": e.dataset_version, "train": e.dataset_train_tokens, "val": e.dataset_val_tokens}
        if mark["train"] is not None:
            marks[e.step] = mark
    for e in run.data_grew:  # the authority on growth, also where a start event lacks the dataset fields
        mark = marks.setdefault(e.step, {"version": None, "train": None, "val": None})
        mark.update(version=_known(e.version, mark["version"]), train=_known(e.new_train_tokens, mark["train"]))
    return [dict(step=s, **marks[s]) for s in sorted(marks)]


def _known(value, otherwise):
    return otherwise if value is None else value


def version_spans(run: RunLog, last_step: int, tokens_seen: int) -> list[VersionSpan]:
    """One span per dataset version the run trained on, in order (launches on an unchanged dataset merge)."""
    bounds: list[dict] = []
    for mark in _marks(run):
        if bounds and (mark["version"], mark["train"]) == (bounds[-1]["version"], bounds[-1]["train"]):
            continue
        bounds.append(mark)
    spans = []
    for i, b in enumerate(bounds):
        start = 0 if i == 0 else b["step"]
        end = bounds[i + 1]["step"] if i + 1 < len(bounds) else max(last_step, start)
        end_tokens = run.tokens_at(end) if i + 1 < len(bounds) else max(tokens_seen, run.tokens_at(start))
        spans.append(VersionSpan(b["version"], b["train"], b["val"], start, end, run.tokens_at(start) if i else 0,
                                 end_tokens))
    return spans


def _lr_near(run: RunLog, step: int, after: bool) -> float | None:
    side = [e for e in run.logs if finite(e.lr) and (e.step > step if after else e.step <= step)]
    if not side:
        return None
    return (side[0] if after else side[-1]).lr


def _part_changes(run: RunLog, step: int, end_step: int) -> list[PartChange]:
    before = [val_parts(e) for e in run.evals if e.step <= step and val_parts(e)]
    after = [val_parts(e) for e in run.evals if step < e.step <= end_step and val_parts(e)]
    if not after:
        return []
    earlier = [val_parts(e) for e in run.evals if e.step < step and val_parts(e)]  # (not the growth step's own)
    seen = set().union(*earlier) if earlier else set()
    names = list(dict.fromkeys(n for parts in after for n in parts))
    first = {n: next(p[n] for p in after if n in p) for n in names}
    last = {n: next(p[n] for p in reversed(after) if n in p) for n in names}
    return [PartChange(n, n not in seen, before[-1].get(n) if before else None, first[n], last[n]) for n in names]


def _parts_verdict(parts: list[PartChange], tol: float) -> str:
    """What the per-part val losses say: the new data learned, the old kept, or nothing moving."""
    new = [p.change for p in parts if p.new and p.change is not None]
    old = [p.change for p in parts if not p.new and p.change is not None]
    learned = any(c <= -tol for c in new + old)
    old_worse = any(c >= tol for c in old)
    if learned:
        return "forgetting" if old_worse and any(c <= -tol for c in new) else "helped"
    return "worse" if old_worse or any(c >= tol for c in new) else "capacity"


def _verdict(val_before, after, trend_before: curves.Trend, trend_after: curves.Trend, step: int,
             parts: list[PartChange], val_changed: bool | None) -> tuple[str, float]:
    noises = [t.noise for t in (trend_after, trend_before) if math.isfinite(t.noise)]
    tol = max(MIN_CHANGE, 2 * noises[0]) if noises else MIN_CHANGE
    if val_before is None or len(after) < 2:
        return "too_early", tol
    if parts:
        return _parts_verdict(parts, tol), tol
    if val_changed is False:
        return "blind", tol  # the val split is all old data: it cannot show what the new data did
    change = after[-1][1] - val_before[1]
    if change >= tol:
        return "worse", tol
    if change > -tol:
        return "no_change", tol
    # val fell: credit the new data unless the old curve was already falling as fast
    if trend_before.status == "improving" and trend_before.end > trend_before.start:
        rate = trend_before.change / (trend_before.end - trend_before.start)
        if change > 1.5 * rate * (after[-1][0] - step):
            return "falling_as_before", tol
    return "helped", tol


def growths(run: RunLog, spans: list[VersionSpan]) -> list[Growth]:
    val = [(float(e.step), float(e.val_loss)) for e in run.evals if finite(e.val_loss)]
    out = []
    for i in range(1, len(spans)):
        old, new = spans[i - 1], spans[i]
        if old.train_tokens is None or new.train_tokens is None or new.train_tokens <= old.train_tokens:
            continue  # another dataset of the same size or smaller is a change, not a growth
        step = new.start_step
        before = [p for p in val if old.start_step <= p[0] <= step]
        after = [p for p in val if step < p[0] <= new.end_step]
        trend_before, trend_after = curves.trend(before), curves.trend(after)
        parts = _part_changes(run, step, new.end_step)
        val_changed = None if None in (old.val_tokens, new.val_tokens) else old.val_tokens != new.val_tokens
        verdict, tol = _verdict(before[-1] if before else None, after, trend_before, trend_after, step, parts,
                                val_changed)
        out.append(Growth(step, new.start_tokens, old, new, before[-1] if before else None, after, trend_before,
                          trend_after, _lr_near(run, step, after=False), _lr_near(run, step, after=True), verdict, tol,
                          parts))
    return out


# ------------------------------------------------------------------------------------------- words


def describe_span(span: VersionSpan) -> str:
    size = f"{span.train_tokens:,} train tokens" if span.train_tokens else "size unknown"
    epochs = f" = {span.epochs:.2f} epochs over it" if span.epochs is not None else ""
    return f"{size}; steps {span.start_step:,}-{span.end_step:,}: {span.tokens:,} tokens trained{epochs}"


def describe_growth(g: Growth) -> str:
    """One line: when the data grew and what the val loss did after."""
    text = (f"at step {g.step:,} ({g.tokens:,} tokens seen): {g.old.train_tokens:,} -> {g.new.train_tokens:,} train "
            f"tokens (version {g.old.version} -> {g.new.version})")
    if g.val_before and g.after:
        text += (f"; val {g.val_before[1]:.4f} before -> {g.after[-1][1]:.4f} at step {g.after[-1][0]:,.0f} "
                 f"({g.change:+.4f})")
    elif g.val_before:
        text += f"; val {g.val_before[1]:.4f} before, no eval since"
    if g.trend_after.status != "unknown":
        text += f", {g.trend_after.status} since"
    return text


ADD_MORE = ("more data helps this model: add more (gptforge download ... --start N --shards M, gptforge prepare "
            "... --out DATA_DIR, then gptforge train --init_from=resume with a larger --max_iters)")


def _evidence(g: Growth) -> list[str]:
    ev = [f"the train data grew {describe_growth(g)}"]
    if g.old.epochs is not None:
        ev.append(f"version {g.old.version} was trained on for {g.old.epochs:.2f} epochs before it grew; "
                  f"version {g.new.version}: {g.new.epochs:.2f} epochs so far")
    if g.trend_before.status != "unknown":
        ev.append(f"before the growth the val loss was {g.trend_before.status} ({g.trend_before.change:+.4f} over the "
                  f"last {g.trend_before.end - g.trend_before.start:,.0f} steps)")
    if g.lr_before is not None and g.lr_after is not None:
        ev.append(f"learning rate {g.lr_before:.3g} before the resume, {g.lr_after:.3g} after")
    if g.parts:
        ev.append("val loss per part since the growth: " + "; ".join(p.describe() for p in g.parts))
    elif g.val_set_changed:
        ev.append(f"the val split grew too ({g.old.val_tokens:,} -> {g.new.val_tokens:,} tokens): the loss before and "
                  "after are on different texts, so the trend since the growth is the cleaner signal")
    return ev


def _by_parts(g: Growth, ev: list[str]) -> tuple[int, str, list[str], list[str]] | None:
    """The verdicts only per-part val losses can give."""
    new = ", ".join(p.describe() for p in g.parts if p.new) or "no new part has val tokens"
    old = ", ".join(p.describe() for p in g.parts if not p.new) or "no old part"
    if g.verdict == "helped":
        return 50, f"Adding data helped: the model learns the new data ({new}) and keeps the old ({old})", ev, [
            ADD_MORE]
    if g.verdict == "forgetting":
        return 62, f"The new data is learned at the old data's expense: {old} since step {g.step:,}", ev, [
            "a larger model holds both (n_layer / n_embd up; `gptforge plan` sizes it)",
            "or resume with a lower --learning_rate: a large LR on the new text overwrites more of the old"]
    if g.verdict == "capacity":
        return 60, f"No change after adding data at step {g.step:,}: the model looks capacity-limited", ev, [
            f"no part's val loss moved by {g.tolerance:.3f} (the noise) since the growth: more data alone does not "
            "help this model; a larger one (n_layer / n_embd up, `gptforge plan` sizes it) will use it",
            "or let the LR decay further (a lower min_lr) to squeeze the rest"]
    return None


def _blind(g: Growth, ev: list[str]) -> tuple[int, str, list[str], list[str]]:
    ev.append(f"the val split has {g.new.val_tokens:,} tokens before and after the growth: the added text got no "
              "val tokens, so the val loss measures the old data only")
    change = g.change
    if change is not None and change >= g.tolerance:
        ev.append(f"val (old data only) rose {change:+.3f}: the model is moving towards the new text, which is not "
                  "overfitting")
    return 62, f"The data grew at step {g.step:,}, but the val split holds none of the new data", ev, [
        "score the new data itself: `gptforge eval RUN_DIR --data DIR` on a dataset prepared from the new part "
        "alone (same tokenizer); newer gptforge gives every added part a share of val",
        "a val loss of old data that rises a little while the model learns new text is expected; watch that it stops"]


def finding_parts(g: Growth) -> tuple[int, str, list[str], list[str]]:
    ev = _evidence(g)
    change, n_after = g.change, len(g.after)
    if g.parts and (found := _by_parts(g, ev)):
        return found
    if g.verdict == "blind":
        return _blind(g, ev)
    if g.verdict == "helped":
        return 50, f"Adding data helped: val fell {-change:.2f} after the data grew at step {g.step:,}", ev, [ADD_MORE]
    used_up = g.old.epochs is None or g.old.epochs >= USED_UP_EPOCHS
    not_used_up = (f"version {g.old.version} had {g.old.epochs:.2f} epochs when it grew: the model had not run out of "
                   "data, so new data is not expected to change the curve yet" if not used_up else None)
    if g.verdict == "falling_as_before":
        return 15, f"The val loss kept falling after the data grew at step {g.step:,}, no faster than before", ev, [
            not_used_up or "too early to credit the new data: the loss was falling as fast before; diagnose again "
                           "after more evals"]
    if g.verdict == "worse":
        advice = ["look at the new data (gptforge inspect DATA_DIR): a different or noisier text raises the loss until "
                  "the model adapts"]
        if g.lr_before and g.lr_after and g.lr_after > 1.5 * g.lr_before:
            advice.insert(0, f"the LR jumped at the resume ({g.lr_before:.3g} -> {g.lr_after:.3g}): resume with a "
                             "lower --learning_rate, or --lr_decay_iters at the old max_iters to stay at min_lr")
        if g.parts:
            rose = ", ".join(p.describe() for p in g.parts if (p.change or 0) >= g.tolerance)
            return 65, f"Val got worse after the data grew at step {g.step:,}: {rose}", ev, advice
        return 65, f"Val rose {change:+.2f} after the data grew at step {g.step:,}", ev, advice
    if g.verdict == "no_change":
        if not used_up:
            return 55, (f"No change after adding data at step {g.step:,}: the old data was not used up "
                        f"({g.old.epochs:.2f} epochs)"), ev, [
                not_used_up + "; data was not what limited this run: train longer, or a larger model"]
        return 45, f"No change in the val loss after adding data at step {g.step:,}", ev, [
            f"val moved {change:+.4f} (under {g.tolerance:.3f}, the noise); it mixes old and new text, so it cannot "
            "tell a model that learns the new data while forgetting the old from one that learns nothing: the "
            "per-part val losses (`val_parts` in metrics.jsonl) can, and only they show a capacity limit",
            "let it run a few more evals; if nothing moves, a larger model (`gptforge plan` sizes it)"]
    return 15, f"The data grew at step {g.step:,}; too few evals since to judge what it did", ev, [
        f"let it run: {n_after} eval(s) since the growth; diagnose again after a few more"]
