"""DATA_DIR/manifest.json: what a dataset holds, and the one place that says which shards are real.

`shards` lists what readers read (every finished dataset version). While a prepare run is unfinished,
`pending` holds what it has committed so far (its sources and shards, durable but not read by training), so a
rerun continues it. Shards listed in neither (left by an interrupted prepare) are never read; the next prepare
removes them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_json

MANIFEST = "manifest.json"
FORMAT = "gptforge-dataset"
FORMAT_VERSION = 2  # 2: shard sha256 and max id, parts, pending runs (version 1 manifests are read as they are)
SHARD_NAME = re.compile(r"^(train|val)_(\d{6,})\.bin$")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def empty_manifest(tokenizer_identity: dict, split_rule: dict, shard_tokens: int) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
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
    if not isinstance(manifest.get("format_version", 1), int) or manifest.get("format_version", 1) > FORMAT_VERSION:
        raise UserError(f"manifest {path} has format version {manifest.get('format_version')!r}, newer than this "
                        f"gptforge reads ({FORMAT_VERSION}): upgrade gptforge")
    for key in ("tokenizer", "split", "shards", "sources", "totals"):
        if key not in manifest:
            raise UserError(f"manifest {path} is missing its {key!r} entry")
    return manifest


def save_manifest(data_dir: str | Path, manifest: dict) -> None:
    atomic_write_json(Path(data_dir) / MANIFEST, manifest)


def listed_shards(data_dir: str | Path, manifest: dict, split: str) -> list[tuple[Path, int]]:
    return [(Path(data_dir) / s["file"], int(s["tokens"])) for s in manifest["shards"][split]]


def listed_files(manifest: dict | None) -> set[str]:
    """Shard files the manifest owns: the finished versions' and an unfinished run's."""
    if not manifest:
        return set()
    groups = [manifest["shards"], (manifest.get("pending") or {}).get("shards", {})]
    return {s["file"] for shards in groups for split in ("train", "val") for s in shards.get(split, [])}


def next_shard_index(manifest: dict, split: str) -> int:
    """The first shard number after every listed one of `split`."""
    numbers = [int(m.group(2)) for f in listed_files(manifest) if (m := SHARD_NAME.match(f)) and m.group(1) == split]
    return max(numbers, default=-1) + 1


def orphan_files(data_dir: str | Path, manifest: dict | None) -> list[Path]:
    """Shard-like or temporary files the manifest does not list: leftovers of an interrupted prepare."""
    listed = listed_files(manifest)
    out = []
    for p in sorted(Path(data_dir).iterdir()):
        if p.name in listed:
            continue
        if SHARD_NAME.match(p.name) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            out.append(p)
    return out
