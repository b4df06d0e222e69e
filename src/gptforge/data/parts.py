"""Dataset parts: every prepare run adds a dataset version that belongs to a named part ("fineweb-edu",
"wikipedia", ...), and every part gets its own share of val, so training and eval can report val loss per part
and show whether new data helps and old data is forgotten.

A part's name comes from its sources (or `--part NAME`); versions that share a name form one part. Its val
tokens are recorded as ranges of the val stream. Which share of a part's stream goes to val: the hash split
per document, plus the small-corpus minimum per part; the tail split; or the dataset's own validation file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from gptforge.errors import UserError

MIN_VAL_TOKENS = 100_000  # hash split: a part gets at least this much val (or 10% of a tiny part)
GENERIC = {"", "shard", "shards", "part", "parts", "data", "file", "files", "train", "val", "input", "doc", "docs",
           "text", "texts", "chunk", "split", "wiki", "out", "tmp", "raw"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


def check_part_name(name: str) -> str:
    if not NAME.match(name):
        raise UserError(f"--part {name!r}: use 1-40 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def _clean(word: str) -> str:
    word = re.sub(r"[^a-z0-9._-]+", "-", word.lower())
    return re.sub(r"[-_.\d]+$", "", word).strip("-_.")[:40]


def derive_part_name(paths: list[str], kinds: list[str]) -> str:
    """A short name for a part from its sources: 'wikipedia' for dumps and wikiextractor's output, else the
    files' common name ('tinyshakespeare', 'enwiki-books'), else their folder's ('fineweb-edu' for
    shard_00000.parquet, ...)."""
    if kinds and all(k in ("wikipedia", "wikiextractor") for k in kinds):
        return "wikipedia"
    stems = [os.path.basename(p).split(".")[0] for p in paths]
    common = _clean(os.path.commonprefix(stems)) if stems else ""
    if len(common) >= 3 and common not in GENERIC:
        return common
    parents = {os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths}
    folder = _clean(os.path.commonprefix(sorted(parents))) if parents else ""
    if len(folder) >= 3 and folder not in GENERIC:
        return folder
    kind = kinds[0] if kinds and len(set(kinds)) == 1 else "data"
    return kind if kind != "?" else "data"


@dataclass
class ValPart:
    """One part's share of the val stream: [start, end) ranges in val-stream token coordinates."""

    name: str
    versions: list[int] = field(default_factory=list)
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(b - a for a, b in self.ranges)


def version_parts(manifest: dict) -> list[dict]:
    """Per dataset version: its part name and val ranges. Manifests written before parts existed get them
    from the versions' cumulative token counts and their sources' names."""
    out, val_end = [], 0
    for v in manifest.get("versions", []):
        number = int(v.get("version", len(out) + 1))
        if "val_ranges" in v:
            ranges = [(int(a), int(b)) for a, b in v["val_ranges"]]
        else:
            end = int(v.get("val_tokens", val_end))
            ranges = [(val_end, end)] if end > val_end else []
        val_end = max([val_end] + [b for _, b in ranges])
        name = v.get("part")
        if not name:
            sources = [s for s in manifest.get("sources", []) if s.get("version") == number]
            name = derive_part_name([s["path"] for s in sources], [s.get("kind", "?") for s in sources])
        out.append({"version": number, "part": name, "val_ranges": ranges})
    return out


def val_parts(manifest: dict) -> list[ValPart]:
    """The val stream by part, in the order the parts were first added."""
    parts: dict[str, ValPart] = {}
    for v in version_parts(manifest):
        part = parts.setdefault(v["part"], ValPart(v["part"]))
        part.versions.append(v["version"])
        part.ranges.extend(r for r in v["val_ranges"] if r[1] > r[0])
    return list(parts.values())


def val_share(rule: dict, val_mode: str, train_tokens: int, val_tokens: int) -> tuple[int, str]:
    """(tokens to move from the end of the part's train stream to val, how the part's val was chosen)."""
    total, fraction = train_tokens + val_tokens, rule["val_fraction"]
    if val_mode == "val_files":
        return 0, "the dataset's validation file"
    if rule["rule"] == "tail":
        return round(total * fraction), f"the last {fraction:g} of the stream"
    if fraction == 0:
        return 0, "--val-fraction 0"
    target = max(round(total * fraction), min(MIN_VAL_TOKENS, total // 10))
    if val_tokens < target / 2:
        return target - val_tokens, "hash split, topped up to the small-part minimum from the end of the stream"
    return 0, f"hash split at {fraction:g}"
