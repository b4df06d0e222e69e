"""`gptforge inspect DATA_DIR|RUN_DIR`: a summary, and a full verification of what is on disk."""

from __future__ import annotations

from pathlib import Path

from gptforge.data.manifest import MANIFEST, listed_shards, load_manifest, orphan_files
from gptforge.data.shards import HEADER_BYTES, NANOGPT_NAMES, open_shard, read_header, shard_format
from gptforge.errors import UserError
from gptforge.fsutil import sha256_file


def _shard_problem(path: Path, entry: dict, vocab: int) -> str | None:
    try:
        arr = open_shard(path, vocab_size=vocab, check_ids=True)
    except UserError as e:
        return str(e)
    if len(arr) != entry["tokens"]:
        return f"shard {path}: holds {len(arr):,} tokens but the manifest says {entry['tokens']:,}"
    if entry.get("sha256") and sha256_file(path, offset=HEADER_BYTES) != entry["sha256"]:
        return f"shard {path}: its tokens' sha256 differs from the manifest's (changed after prepare wrote it)"
    return None


def verify_dataset(data_dir: Path, manifest: dict) -> list[str]:
    """Problems found in the shards the manifest lists, an unfinished run's included (empty list: all good)."""
    problems = []
    vocab = int(manifest["tokenizer"]["vocab_size"])
    pending = (manifest.get("pending") or {}).get("shards", {})
    for split in ("train", "val"):
        found = [_shard_problem(data_dir / e["file"], e, vocab) for e in manifest["shards"][split]]
        found += [_shard_problem(data_dir / e["file"], e, vocab) for e in pending.get(split, [])]
        problems += [p for p in found if p]
        counted = sum(e["tokens"] for e in manifest["shards"][split])
        expected = manifest["totals"][f"{split}_tokens"]
        if not problems and counted != expected:
            problems.append(f"{split} shards hold {counted:,} tokens but the manifest totals say {expected:,}")
    return problems


def _part_val(version: dict) -> str:
    """The val share a version's own documents got, and by which rule (manifests before parts lack it)."""
    if "val_ranges" not in version:
        return ""
    tokens = sum(b - a for a, b in version["val_ranges"])
    return f"; its val: {tokens:,} tokens" + (f" ({version['val_rule']})" if version.get("val_rule") else "")


def _inspect_dataset(data_dir: Path) -> int:
    manifest = load_manifest(data_dir)
    tok, totals = manifest["tokenizer"], manifest["totals"]
    print(f"dataset {data_dir}")
    print(f"  tokenizer {tok['name']} (vocab {tok['vocab_size']:,}, end-of-text id {tok['eot_id']})")
    split = manifest["split"]
    minimum = " per document and a minimum per part" if split["rule"] == "hash" else ""
    print(f"  split {split['rule']}, val fraction {split['val_fraction']}{minimum}: val is "
          f"{totals['val_tokens'] / max(totals['tokens'], 1):.2%} of the tokens")
    print(f"  {totals['sources']} sources, {totals['documents']:,} documents, {totals['characters']:,} characters, "
          f"{totals['tokens']:,} tokens ({totals['characters'] / max(totals['tokens'], 1):.2f} chars/token)")
    print(f"  train {totals['train_tokens']:,} tokens in {len(manifest['shards']['train'])} shards; "
          f"val {totals['val_tokens']:,} tokens in {len(manifest['shards']['val'])} shards")
    for v in manifest.get("versions", []):
        part = f" part {v['part']!r}," if v.get("part") else ""
        print(
            f"  version {v['version']} ({v['added']}):{part} +{len(v['sources'])} sources -> "
            f"{v['train_tokens']:,} train, {v.get('val_tokens', 0):,} val tokens" + _part_val(v)
        )
    pending = manifest.get("pending")
    if pending:
        print(f"  unfinished prepare run of part {pending['part']!r} (started {pending['started']}): "
              f"{len(pending['sources'])} files committed, not yet read by training; rerun its command to finish it")
    leftovers = orphan_files(data_dir, manifest)
    if leftovers:
        print(f"  {len(leftovers)} file(s) from an interrupted prepare are not part of the dataset "
              f"(the next prepare removes them): {', '.join(p.name for p in leftovers[:5])}")
    problems = verify_dataset(data_dir, manifest)
    for line in problems:
        print(f"  BAD: {line}")
    if problems:
        raise UserError(f"dataset {data_dir}: {len(problems)} problem(s) found (listed above)")
    formats = sorted({shard_format(path) for split in ("train", "val") for path, _ in
                      listed_shards(data_dir, manifest, split)})
    print(f"  verified: every shard's header, size, sha256 and token ids (< {tok['vocab_size']:,}) are good; "
          f"tokens {', '.join(formats)}")
    return 0


def _inspect_nanogpt(data_dir: Path) -> int:
    print(f"nanoGPT data folder {data_dir}")
    for name in NANOGPT_NAMES:
        path = data_dir / name
        if path.exists():
            print(f"  {name}: {_describe_shard(path)}")
    return 0


def _describe_shard(path: Path) -> str:
    arr = open_shard(path)
    largest = int(arr.max()) if len(arr) else 0
    return f"{len(arr):,} tokens, {shard_format(path)}, largest id {largest:,}"


def _headered_shards(folder: Path) -> list[Path]:
    """The .bin files of a folder that carry a shard header (an llm.c or modded-nanogpt data folder)."""
    return sorted(p for p in folder.glob("*.bin") if p.is_file() and p.stat().st_size and read_header(p))


def _inspect_shard_folder(folder: Path, shards: list[Path]) -> int:
    print(f"shard folder {folder} (no {MANIFEST}: an llm.c / modded-nanogpt data folder)")
    bad = 0
    for path in shards:
        try:
            print(f"  {path.name}: {_describe_shard(path)}")
        except UserError as e:
            print(f"  BAD: {e}")
            bad += 1
    if bad:
        raise UserError(f"shard folder {folder}: {bad} bad shard(s) (listed above)")
    return 0


def inspect_command(path: str) -> int:
    target = Path(path)
    if not target.exists():
        raise UserError(f"{path} does not exist")
    if target.is_file():
        print(f"shard {target}: {_describe_shard(target)}")
        return 0
    if (target / MANIFEST).exists():
        return _inspect_dataset(target)
    if (target / "checkpoints").is_dir() or (target / "metrics.jsonl").exists() or (target / "config.toml").exists():
        from gptforge.train.checkpoint import verify_run

        lines = verify_run(target)
        print(f"run {target}")
        for line in lines:
            print(f"  {line}")
        return 0
    if any((target / n).exists() for n in NANOGPT_NAMES):
        return _inspect_nanogpt(target)
    shards = _headered_shards(target)
    if shards:
        return _inspect_shard_folder(target, shards)
    raise UserError(f"{path} is neither a gptforge DATA_DIR (no {MANIFEST}) nor a run directory (no checkpoints/)")
