"""Statistics of loss curves, as pure functions over (x, y) points: line fits over the recent window,
plateau / improving / rising verdicts against the curve's own noise, smoothing, spikes, stability."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

RECENT_FRACTION = 0.3  # "recent" = the last 30% of the run's steps
MIN_POINTS = 5
PLATEAU_FLOOR = 0.01  # a fitted change under 1% of the loss over the window counts as flat, however certain


@dataclass(frozen=True)
class Fit:
    slope: float
    intercept: float
    residual_std: float  # the noise around the line
    slope_se: float  # standard error of the slope

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x


def fit_line(xs: list[float], ys: list[float]) -> Fit | None:
    """Least squares y = a + b x, with the residual noise and the slope's standard error."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    rss = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    resid = math.sqrt(rss / (n - 2)) if n > 2 else 0.0
    return Fit(slope, intercept, resid, resid / math.sqrt(sxx))


def recent(points: list[tuple[float, float]], fraction: float = RECENT_FRACTION,
           min_points: int = MIN_POINTS) -> list[tuple[float, float]]:
    """The points in the last `fraction` of the x range (at least `min_points` of them when available)."""
    if not points:
        return []
    first, last = points[0][0], points[-1][0]
    cut = last - fraction * (last - first)
    window = [p for p in points if p[0] >= cut]
    return window if len(window) >= min_points else points[-min_points:]


@dataclass(frozen=True)
class Trend:
    status: str  # "improving", "plateau", "rising", "uncertain" (too noisy), "unknown" (too few points)
    start: float  # x range of the window
    end: float
    level: float  # the fitted loss at the window's end
    change: float  # fitted loss change across the window (negative: falling)
    change_se: float  # its standard error
    noise: float  # residual std of the points around the fit
    points: int


def trend(points: list[tuple[float, float]], fraction: float = RECENT_FRACTION, since: float | None = None) -> Trend:
    """Is the curve still falling over its recent window, flat, or rising, compared with its noise?
    With `since` the window starts after that x (e.g. where the data grew and the val set changed)."""
    window = recent(points, fraction)
    if since is not None:
        window = [p for p in window if p[0] > since]
    fit = fit_line([p[0] for p in window], [p[1] for p in window]) if len(window) >= 3 else None
    if fit is None:
        last = points[-1] if points else (0.0, math.nan)
        return Trend("unknown", last[0], last[0], last[1], 0.0, math.inf, math.nan, len(window))
    start, end = window[0][0], window[-1][0]
    change, change_se = fit.slope * (end - start), fit.slope_se * (end - start)
    level = fit.at(end)
    floor = PLATEAU_FLOOR * abs(level)
    if change < -max(2 * change_se, floor):
        status = "improving"
    elif change > max(2 * change_se, floor / 2):
        status = "rising"
    elif 2 * change_se <= 2 * floor:
        status = "plateau"  # precise enough that a real drop (2% of the loss) would have shown
    else:
        status = "uncertain"  # too few or too noisy points to tell flat from falling
    return Trend(status, start, end, level, change, change_se, fit.residual_std, len(window))


def smooth(values: list[float], span: int) -> list[float]:
    """Exponential moving average over about `span` points, bias-corrected so it starts at the data."""
    if span <= 1:
        return list(values)
    alpha, avg, weight, out = 2.0 / (span + 1), 0.0, 0.0, []
    for v in values:
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(avg / weight)
    return out


def smoothing_span(n: int) -> int:
    return max(1, min(50, n // 20))


@dataclass(frozen=True)
class Rebound:
    """The largest climb of the smoothed curve above its running minimum."""

    rise: float
    min_x: float  # where the minimum before the climb was
    peak_x: float  # where the climb topped out
    min_value: float
    noise: float  # standard deviation of the smoothed curve's noise: climbs of a few times it are chance


def worst_rebound(points: list[tuple[float, float]]) -> Rebound | None:
    if len(points) < 3:
        return None
    span = smoothing_span(len(points))
    ys = smooth([p[1] for p in points], span)
    alpha = 2.0 / (span + 1)
    noise = point_noise(points) * math.sqrt(alpha / (2 - alpha))  # what an EMA leaves of white noise
    best = None
    low_i = 0
    for i, y in enumerate(ys):
        if y < ys[low_i]:
            low_i = i
        rise = y - ys[low_i]
        if best is None or rise > best.rise:
            best = Rebound(rise, points[low_i][0], points[i][0], ys[low_i], noise)
    return best


def point_noise(points: list[tuple[float, float]]) -> float:
    """Robust standard deviation of single points around the curve, from the differences between
    neighbours (a smooth trend barely moves from one point to the next, so no model of it is needed)."""
    diffs = [abs(b[1] - a[1]) for a, b in zip(points, points[1:])]
    return 1.4826 * statistics.median(diffs) / math.sqrt(2) if diffs else 0.0


def oscillation(points: list[tuple[float, float]]) -> float:
    """Typical deviation of the points from their smoothed curve, relative to the loss level
    (median absolute deviation, so a few spikes do not dominate)."""
    if len(points) < 10:
        return 0.0
    ys = [p[1] for p in points]
    smoothed = smooth(ys, smoothing_span(len(ys)))
    deviations = [abs(y - s) / abs(s) for y, s in zip(ys, smoothed) if s]
    return statistics.median(deviations) if deviations else 0.0


@dataclass(frozen=True)
class Stability:
    median: float
    cv: float  # std / mean
    p10: float
    drift: float  # median of the second half / median of the first half - 1


def stability(values: list[float], skip: int = 2) -> Stability | None:
    """Throughput (or MFU) steadiness, leaving out the first measurements (compile, warm caches)."""
    vals = [v for v in values[skip:] if v is not None and math.isfinite(v)] or [
        v for v in values if v is not None and math.isfinite(v)]
    if len(vals) < 3:
        return None
    mean = statistics.fmean(vals)
    half = len(vals) // 2
    first, second = statistics.median(vals[:half]), statistics.median(vals[half:])
    return Stability(statistics.median(vals), statistics.pstdev(vals) / mean if mean else 0.0,
                     sorted(vals)[len(vals) // 10], second / first - 1 if first else 0.0)
