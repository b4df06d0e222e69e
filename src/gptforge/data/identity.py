"""A dataset's content identity, so a resumed run can tell "the same dataset", "a grown superset of it" and
"another dataset" apart, whatever the folders are called.

A gptforge dataset's identity is a chain: each version's id hashes the previous id, the tokenizer, the split
rule and the sha256 and size of every shard the version added (computed while prepare wrote them). A dataset
that grew keeps its old chain as a prefix. Versions written before shards had hashes use their sources'
fingerprints instead. A nanoGPT folder has one link: a hash of its files' sizes and first and last MiB.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

SAMPLE_BYTES = 1 << 20


def _digest(payload) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def version_identity(previous: str, tokenizer_hash: str, split: dict, train: list[dict], val: list[dict]) -> str:
    """The id of a version that added the shard entries `train` and `val` (each with sha256 and tokens)."""
    shards = [[[s["sha256"], int(s["tokens"])] for s in entries] for entries in (train, val)]
    return _digest(["gptforge-version", previous, tokenizer_hash, split, *shards])


def _legacy_identity(previous: str, manifest: dict, version: dict) -> str:
    number = version.get("version")
    prints = [s.get("fingerprint") for s in manifest.get("sources", []) if s.get("version") == number]
    return _digest(["gptforge-legacy-version", previous, manifest["tokenizer"].get("hash"), manifest.get("split"),
                    prints, version.get("train_tokens"), version.get("val_tokens")])


def dataset_identity(manifest: dict) -> dict:
    """{"kind", "tokenizer", "versions": [id per version, oldest first], "train_tokens", "val_tokens"}:
    small and JSON-able, for a checkpoint to keep and `compare_identity` to check later."""
    chain, previous = [], ""
    for version in manifest.get("versions", []):
        previous = version.get("identity") or _legacy_identity(previous, manifest, version)
        chain.append(previous)
    totals = manifest.get("totals", {})
    return {"kind": "gptforge", "tokenizer": manifest["tokenizer"].get("hash"), "versions": chain,
            "train_tokens": int(totals.get("train_tokens", 0)), "val_tokens": int(totals.get("val_tokens", 0))}


def _file_sample(path: Path) -> list:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(SAMPLE_BYTES)
        f.seek(max(size - SAMPLE_BYTES, 0))
        tail = f.read(SAMPLE_BYTES)
    return [path.name, size, hashlib.sha256(head).hexdigest(), hashlib.sha256(tail).hexdigest()]


def nanogpt_identity(folder: Path, vocab_size: int, train_tokens: int, val_tokens: int) -> dict:
    """A nanoGPT folder's identity from its files' sizes and first and last MiB: cheap on a 17 GB train.bin,
    and any re-export or another corpus changes it."""
    link = _digest(["nanogpt", vocab_size, _file_sample(folder / "train.bin"), _file_sample(folder / "val.bin")])
    return {"kind": "nanogpt", "tokenizer": f"nanogpt-vocab-{vocab_size}", "versions": [link],
            "train_tokens": train_tokens, "val_tokens": val_tokens}


@dataclass
class IdentityCheck:
    relation: str  # "same", "grown" or "other"
    detail: str  # one line for the user

    @property
    def compatible(self) -> bool:
        return self.relation in ("same", "grown")


def compare_identity(before: dict, now: dict) -> IdentityCheck:
    """How the dataset `now` relates to the one a run saw `before` (both from `dataset_identity`)."""
    if before.get("kind") != now.get("kind"):  # a gptforge DATA_DIR against a nanoGPT folder
        return IdentityCheck("other", f"the checkpoint's is a {before.get('kind')} dataset of "
                                      f"{before.get('train_tokens', 0):,} train tokens, this is a {now.get('kind')} "
                                      f"one of {now.get('train_tokens', 0):,}")
    old, new = list(before.get("versions", [])), list(now.get("versions", []))
    if before.get("tokenizer") != now.get("tokenizer"):
        return IdentityCheck("other", f"another tokenizer ({before.get('tokenizer')} then, {now.get('tokenizer')} now)")
    if new == old:
        return IdentityCheck("same", f"the same dataset ({len(new)} version(s))")
    if new[: len(old)] == old:
        return IdentityCheck("grown", f"the same dataset grown from {len(old)} to {len(new)} version(s) "
                                      f"({before.get('train_tokens', 0):,} -> {now.get('train_tokens', 0):,} "
                                      "train tokens)")
    differ = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), None)
    if differ is None:
        return IdentityCheck("other", f"the dataset has {len(new)} version(s), fewer than the {len(old)} it had")
    return IdentityCheck("other", f"its version {differ + 1} holds other data than the checkpoint's version "
                                  f"{differ + 1} (the checkpoint's dataset: {len(old)} version(s), "
                                  f"{before.get('train_tokens', 0):,} train tokens; this one: {len(new)} version(s), "
                                  f"{now.get('train_tokens', 0):,})")
