"""One finding of `gptforge diagnose`: what it is, how it ranks, its evidence and what to try."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Finding:
    kind: str
    score: int  # ranking: higher first
    title: str
    evidence: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
