"""Number and duration formats, the same everywhere gptforge prints them."""

from __future__ import annotations

GIB = 1024**3


def count(n: float) -> str:
    """124475904 -> '124.5M', 7.6e9 -> '7.60B'."""
    n = float(n)
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            value = n / div
            return f"{value:.2f}{unit}" if value < 10 else f"{value:.1f}{unit}"
    return f"{n:.0f}"


def ppl(ppl: float) -> str:
    """5.7546 -> '5.75'; a diverged run's 7.95e117 -> '7.95e+117', not 118 digits."""
    return f"{ppl:.2f}" if ppl < 1e6 else f"{ppl:.3g}"


def byte_size(nbytes: int) -> str:
    """3_600_000 -> '3.6 MB' (decimal units, as disks are sold)."""
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= div:
            return f"{nbytes / div:,.1f} {unit}"
    return f"{nbytes:,} bytes"


def gib(nbytes: float) -> str:
    if nbytes < 0.1 * GIB:
        return f"{nbytes / 2**20:.1f} MiB"
    return f"{nbytes / GIB:.2f} GiB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a (peak FLOP/s unknown)"
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def clock(seconds: float) -> str:
    """Elapsed or remaining time: '7s', '2m05s', '1h02m03s'."""
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
