"""DATA_DIR/manifest.json: what a dataset holds, and the one place that says which shards are real.

Shards not listed in the manifest (left by an interrupted prepare) are never read; the next prepare
overwrites them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_json

MANIFEST = "manifest.json"
FORMAT = "gptforge-dataset"
SHARD_NAME = re.compile(r"^(train|val)_(\d{6,})\.bin$")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def empty_manifest(tokenizer_identity: dict, split_rule: dict, shard_tokens: int) -> dict:
    return {
        "format": FORMAT,
        "format_version": 1,
        "tokenizer": tokenizer_identity,
        "split": split_rule,
        "shard_tokens": shard_tokens,
        "shards": {"train": [], "val": []},
        "sources": [],
        "versions": [],
        "totals": {"sources": 0, "documents": 0, "characters": 0, "tokens": 0, "train_tokens": 0, "val_tokens": 0},
    }


def load_manifest(data_dir: str | Path) -> dict | None:
    """The manifest of `data_dir`, None when there is none; a corrupt one is an error."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"manifest {path} is unreadable or not JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"manifest {path} is not a gptforge dataset manifest")
    for key in ("tokenizer", "split", "shards", "sources", "totals"):
        if key not in manifest:
            raise UserError(f"manifest {path} is missing its {key!r} entry")
    return manifest


def save_manifest(data_dir: str | Path, manifest: dict) -> None:
    atomic_write_json(Path(data_dir) / MANIFEST, manifest)


def listed_shards(data_dir: str | Path, manifest: dict, split: str) -> list[tuple[Path, int]]:
    return [(Path(data_dir) / s["file"], int(s["tokens"])) for s in manifest["shards"][split]]


def orphan_files(data_dir: str | Path, manifest: dict | None) -> list[Path]:
    """Shard-like or temporary files the manifest does not list: leftovers of an interrupted prepare."""
    listed = set()
    if manifest:
        listed = {s["file"] for split in ("train", "val") for s in manifest["shards"][split]}
    out = []
    for p in sorted(Path(data_dir).iterdir()):
        if p.name in listed:
            continue
        if SHARD_NAME.match(p.name) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            out.append(p)
    return out
