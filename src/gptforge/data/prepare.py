"""sources -> tokenized shards + manifest: incremental, parallel, constant memory, committed as it goes.

One prepare run adds one dataset version, a part with a short name ("fineweb-edu", "wikipedia"; `--part`).
It commits after each source file (or group of small files): an interrupted run keeps every file it finished
and the same command continues with the rest, and the result is the same wherever it was interrupted
(part_writer.py). Readers see the part once the run has finished. One writer at a time: prepare holds a lock
on DATA_DIR (released by the OS if the process dies); readers never wait for it. A full disk or another OS
error is one line naming the file, the space needed and free; the data committed before stays intact.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from gptforge.data.manifest import MANIFEST, empty_manifest, load_manifest, orphan_files
from gptforge.data.part_writer import TOKENIZER_DIR, PartWriter, new_pending
from gptforge.data.parts import check_part_name, derive_part_name, val_parts
from gptforge.data.provenance import Record, recorded_role
from gptforge.data.shards import DTYPES, format_for_vocab
from gptforge.data.sources import Source, SourceOptions, open_sources
from gptforge.data.tokenizers import CharTokenizer, Tokenizer, load_tokenizer, train_bpe
from gptforge.errors import UserError
from gptforge.fsutil import LOCK_FILE, WriteFailed, exclusive_lock, usable_cores, write_failure_line
from gptforge.progress import Progress

DEFAULT_VAL_FRACTION = 0.01
COMMIT_TOKENS = 10_000_000  # commit after a source file once this many tokens are waiting (~40 MB of text)


def _check_out_dir(out: Path) -> dict | None:
    """The manifest of `out` (a directory prepare made and locked), or None for a new dataset."""
    manifest = load_manifest(out)
    if manifest is None:
        leftovers = set(orphan_files(out, None))
        others = [p for p in out.iterdir() if p not in leftovers and p.name not in (TOKENIZER_DIR, LOCK_FILE)]
        if others:
            raise UserError(
                f"--out {out} is not empty and has no manifest.json: not a gptforge dataset, refusing to write into it"
            )
    return manifest


def _resolve_tokenizer(out: Path, manifest: dict | None, requested: str | None) -> Tokenizer | None:
    """The dataset's tokenizer; None means `char` on a fresh dataset (built from the sources later)."""
    if manifest is not None:
        existing = load_tokenizer(out / TOKENIZER_DIR)
        if requested not in (None, "char"):
            wanted = load_tokenizer(requested)
            if wanted.identity()["hash"] != existing.identity()["hash"]:
                raise UserError(
                    f"DATA_DIR {out} was made with tokenizer {existing.name!r}; --tokenizer {requested} is a different "
                    "tokenizer (prepare into a new DATA_DIR, or leave --tokenizer out to use the dataset's)"
                )
        elif requested == "char" and existing.kind != "char":
            raise UserError(f"DATA_DIR {out} was made with tokenizer {existing.name!r}, not a character vocabulary")
        return existing
    if requested == "char":
        return None
    return load_tokenizer(requested or "gpt2")


def _resolve_split(manifest: dict | None, split: str | None, val_fraction: float | None) -> dict:
    if manifest is not None:
        rule = manifest["split"]
        if split is not None and split != rule["rule"]:
            raise UserError(f"this dataset uses --split {rule['rule']}; it cannot change to {split} when appending")
        if val_fraction is not None and val_fraction != rule["val_fraction"]:
            raise UserError(
                f"this dataset uses --val-fraction {rule['val_fraction']}; changing it would move existing documents"
            )
        return rule
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {fraction}")
    return {"rule": split or "hash", "val_fraction": fraction, "hash": "crc32 of the UTF-8 text < val_fraction * 2**32"}


def _new_sources(sources: list[Source], manifest: dict | None) -> list[Source]:
    """Drop sources already in the dataset or committed by its unfinished run (that one quietly: the rerun
    says how many files were done); refuse a known path whose content changed."""
    manifest = manifest or {}
    done = (manifest.get("pending") or {}).get("sources", [])
    known = manifest.get("sources", []) + done
    known_prints = {s["fingerprint"]: s["path"] for s in known}
    known_paths = {os.path.realpath(s["path"]) for s in known}
    done_prints = {s["fingerprint"] for s in done}
    fresh, seen, skipped = [], set(), []
    for source in sources:
        source.check()
        fp = source.fingerprint()
        if fp in done_prints:
            continue
        if fp in known_prints or fp in seen:
            where = known_prints.get(fp, "another source of this run")
            same = os.path.realpath(where) == os.path.realpath(source.path)
            also = "" if same else f" (same content as {where})"
            skipped.append(f"skipping {source.path}: already in the dataset{also}")
            continue
        if os.path.realpath(source.path) in known_paths:
            raise UserError(
                f"source {source.path} changed since it was added to this dataset (fingerprint differs); "
                "to add the new content, give it a new file name"
            )
        seen.add(fp)
        fresh.append(source)
    for line in skipped[:5]:
        print(line)
    if len(skipped) > 5:
        print(f"... and {len(skipped) - 5} more sources already in the dataset")
    return fresh


def _check_continuation(out: Path, pending: dict, part: str | None, settings: dict) -> None:
    """A run that finds an unfinished one continues it: it must be the same part, made the same way."""
    done = len(pending["sources"])
    if part is not None and part != pending["part"]:
        raise UserError(
            f"{out} has an unfinished prepare run of part {pending['part']!r} ({done} files done): finish it first "
            f"(rerun its command, or name just its finished files to close it as it is), then add part {part!r}"
        )
    differ = [f"{k} {pending['settings'].get(k)!r} (now {v!r})" for k, v in settings.items()
              if pending["settings"].get(k) != v]
    if differ:
        raise UserError(f"{out} has an unfinished prepare run ({done} files done) made with {', '.join(differ)}: "
                        "rerun it with the same options to finish it")


def _roles(sources: list[Source]) -> list[str | None]:
    """"val" for a named dataset's validation file, as `gptforge download` recorded it beside the file (each
    folder's record read once: a download of thousands of files records them all in one)."""
    records = {folder: Record(folder) for folder in {s.path.parent for s in sources}}
    return [recorded_role(s.path, s.fingerprint().removeprefix("sha256:"), records[s.path.parent]) for s in sources]


def prepare(
    specs: list[str],
    out: str | os.PathLike,
    tokenizer: str | None = None,
    val_fraction: float | None = None,
    split: str | None = None,
    shard_tokens: int = 100_000_000,
    min_chars: int = 0,
    workers: int | None = None,
    options: SourceOptions | None = None,
    part: str | None = None,
    commit_tokens: int = COMMIT_TOKENS,
) -> dict:
    """Tokenize `specs` into DATA_DIR `out` (creating, appending or continuing). Returns the manifest written."""
    out = Path(out)
    if shard_tokens <= 0:
        raise UserError(f"--shard-tokens must be positive, got {shard_tokens}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if part is not None:
        check_part_name(part)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    options = options or SourceOptions()
    if workers:
        options = dataclasses.replace(options, workers=workers)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the directory ({e.strerror})") from None
    with exclusive_lock(out, "gptforge prepare"):
        try:
            return _prepare(specs, out, tokenizer, val_fraction, split, shard_tokens, min_chars, workers, options,
                            part, commit_tokens)
        except BaseException:
            if created and not (out / MANIFEST).exists():  # nothing was committed: leave no directory behind
                shutil.rmtree(out, ignore_errors=True)
            raise


def _prepare(specs, out: Path, tokenizer, val_fraction, split, shard_tokens, min_chars, workers, options, part,
             commit_tokens) -> dict:
    manifest = _check_out_dir(out)
    tok = _resolve_tokenizer(out, manifest, tokenizer)
    rule = _resolve_split(manifest, split, val_fraction)
    settings = {"min_chars": min_chars, "text_column": options.text_column, "doc_separator": options.doc_separator}
    pending = (manifest or {}).get("pending")
    if pending:
        _check_continuation(out, pending, part, settings)
    sources = _new_sources(open_sources(specs, options), manifest)
    for leftover in orphan_files(out, manifest):  # from an interrupted run: never read, its work is redone
        leftover.unlink()
    if not sources and not pending:
        print(f"nothing to add: every source is already in {out}")
        return manifest or {}
    if tok is None:
        print("building the character vocabulary (one pass over the sources)...")
        tok = CharTokenizer.from_texts(doc for s in sources for doc in s.documents())
        for s in sources:
            s.counters.clear()
    save_tokenizer = manifest is None
    if manifest is None:
        manifest = empty_manifest(tok.identity(), rule, shard_tokens)
    roles = _roles(sources)
    if pending is None:
        name = part or derive_part_name([str(s.path) for s in sources], [s.kind for s in sources])
        pending = manifest["pending"] = new_pending(name, settings, "val_files" if "val" in roles else rule["rule"])
    else:
        print(f"continuing the unfinished prepare of part {pending['part']!r}: {len(pending['sources'])} of "
              f"{len(pending['sources']) + len(sources)} files already done")
    continued = len(pending["sources"])
    writer = PartWriter(out, manifest, tok, workers or usable_cores(), commit_tokens, save_tokenizer)
    progress = Progress(len(pending["sources"]) + len(sources), len(pending["sources"]),
                        sum(s.path.stat().st_size for s in sources))
    try:
        writer.write(sources, roles, min_chars, progress)
        if writer.part_tokens == 0:
            raise UserError(
                "the sources hold no documents (all empty"
                + (f" or shorter than --min-chars {min_chars}" if min_chars else "")
                + ")"
            )
        version = writer.finish()
    except WriteFailed as failure:
        raise UserError(_write_failure(failure, progress, writer)) from None
    finally:
        progress.finish()
    _print_summary(manifest, version, continued)
    return manifest


def _write_failure(failure: WriteFailed, progress: Progress, writer: PartWriter) -> str:
    """One line: the file, the space needed (the input left at the output/input ratio so far) and free."""
    consumed, written = progress.input_bytes(), writer.train.total + writer.val.total
    itemsize = DTYPES[format_for_vocab(writer.tok.vocab_size)].itemsize
    ratio = written * itemsize / consumed if consumed and written else 0.5  # text: ~4 bytes a token of 2 bytes
    needed = int((progress.total_bytes - consumed) * ratio)
    done = len((load_manifest(writer.out) or {}).get("pending", {}).get("sources", []))
    return (f"{write_failure_line(failure, needed)}; the earlier data is intact (with {done} files of this run "
            "committed): free some space and rerun the same command to continue")


def _print_summary(manifest: dict, version: dict, continued: int) -> None:
    added = [s for s in manifest["sources"] if s.get("version") == version["version"]]
    docs, chars = sum(s["documents"] for s in added), sum(s["characters"] for s in added)
    train, val = sum(s["train_tokens"] for s in added), sum(s["val_tokens"] for s in added)
    tokens = train + val
    skipped: dict[str, int] = {}
    for s in added:
        for k, v in s["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    earlier = f" ({continued} committed by an earlier, interrupted run)" if continued else ""
    seconds = version["seconds"]  # this run's and what earlier runs committed
    print(
        f"added {len(added)} source(s){earlier}: {docs:,} documents, {chars:,} characters, {tokens:,} tokens "
        f"({chars / max(tokens, 1):.2f} chars/token) in {seconds:.1f}s "
        f"({tokens / max(seconds, 1e-9) / 1e6:.2f}M tokens/s)"
    )
    print(f"  part {version['part']!r}: train {train:,} tokens, val {val:,} tokens = {val / max(tokens, 1):.2%} "
          f"of the part ({version['val_rule']})")
    if skipped:
        print("  skipped: " + ", ".join(f"{k.removesuffix('_skipped').replace('_', ' ')} {v:,}"
                                        for k, v in sorted(skipped.items())))
    cuts = sum(s.get("cut_long_runs", 0) for s in added)
    if cuts:
        print(f"  {cuts:,} cut(s) inside runs of over half a million characters without a space or newline: the "
              "tokens at those cuts may differ from tokenizing the run whole")
    print("  val tokens per part: " + " | ".join(f"{p.name} {p.tokens:,}" for p in val_parts(manifest)))
    if val == 0 and manifest["split"]["val_fraction"] > 0:
        print(f"warning: part {version['part']!r} got no val tokens (its {tokens:,} tokens are too few for a share): "
              "its val loss cannot be measured")
    totals = manifest["totals"]
    print(
        f"dataset version {version['version']}: {totals['documents']:,} documents, "
        f"{totals['train_tokens']:,} train and {totals['val_tokens']:,} val tokens in "
        f"{len(manifest['shards']['train'])} + {len(manifest['shards']['val'])} shards; "
        f"tokenizer {manifest['tokenizer']['name']} (vocab {manifest['tokenizer']['vocab_size']:,})"
    )


def train_tokenizer(specs: list[str], out: str | os.PathLike, vocab_size: int, max_chars: int = 2_000_000_000,
                    options: SourceOptions | None = None, pattern: str = "gpt2",
                    special_tokens: list[str] | tuple = ()) -> Tokenizer:
    """`gptforge tokenizer train`: a byte-level BPE learned from (at most max_chars of) the sources, saved with
    Hugging Face's tokenizer files beside it."""
    from gptforge.data.hf_tokenizer import write_hf_tokenizer

    sources = open_sources(specs, options)
    for s in sources:
        s.check()

    def texts() -> Iterator[str]:
        seen = 0
        for source in sources:
            for doc in source.documents():
                yield doc
                seen += len(doc)
                if seen >= max_chars:
                    return

    started = time.time()
    tok = train_bpe(texts(), vocab_size, out, pattern=pattern, special_tokens=special_tokens)
    write_hf_tokenizer(tok, out)
    specials = f", special tokens {' '.join(tok.special_tokens)}" if len(tok.special_tokens) > 1 else ""
    print(f"trained a byte-level BPE with {tok.vocab_size:,} tokens ({pattern} split pattern{specials}) in "
          f"{time.time() - started:.1f}s -> {out} (also loads with transformers' AutoTokenizer)")
    print(f"use it with: gptforge prepare SOURCE... --tokenizer {out} --out DATA_DIR")
    return tok
