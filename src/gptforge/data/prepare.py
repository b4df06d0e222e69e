"""sources -> tokenized shards + manifest. Incremental, parallel, constant memory.

One call of `prepare` is one transaction: shards are written as they fill, the manifest is
rewritten (atomically) only at the end, so a crash or Ctrl-C at any moment leaves the previous
dataset exactly as valid as it was, and the next run redoes the unfinished work.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from gptforge.data.manifest import empty_manifest, load_manifest, orphan_files, save_manifest
from gptforge.data.shard_streams import ShardSequence, move_tail
from gptforge.data.sources import Source, SourceOptions, open_sources
from gptforge.data.tokenizers import CharTokenizer, Tokenizer, load_tokenizer, train_bpe
from gptforge.errors import UserError
from gptforge.fsutil import usable_cores
from gptforge.progress import Progress

DEFAULT_VAL_FRACTION = 0.01
MIN_VAL_TOKENS = 100_000  # hash split on a fresh dataset: at least this much val (or 10% of a tiny corpus)
BATCH_CHARS = 4 << 20  # text handed to the tokenizer threads at once
PIECE_CHARS = 1 << 18  # long documents are cut into pieces this size so they use every core too
TOKENIZER_DIR = "tokenizer"


def in_val(text: str, val_fraction: float) -> bool:
    """The hash split: a document's place depends only on its own text, so appends never move it.

    CRC-32 of the UTF-8 text: uniform enough to split by, and 4x faster than blake2b, which matters
    because it runs beside the tokenizer threads.
    """
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) < val_fraction * 2**32


def safe_pieces(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Cut a long text where tokenizing the pieces gives exactly the tokens of the whole.

    A cut goes right before a newline that is followed by a non-space character: GPT-2's
    pre-tokenizer makes that newline a token of its own, and the whitespace before it another,
    whichever way the text is split.
    """
    if len(text) <= piece_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        pos = text.find("\n", start + piece_chars)
        while pos != -1 and not (pos + 1 < len(text) and not text[pos + 1].isspace()):
            pos = text.find("\n", pos + 1)
        if pos == -1:
            break
        pieces.append(text[start:pos])
        start = pos
    pieces.append(text[start:])
    return pieces


@dataclass
class SourceTally:
    """What one source contributed in this run, in run-stream coordinates for each split."""

    documents: int = 0
    characters: int = 0
    short_skipped: int = 0
    train: list[int] = field(default_factory=lambda: [0, 0])  # [start, end) in this run's train stream
    val: list[int] = field(default_factory=lambda: [0, 0])


def _batches(sources: list[Source], min_chars: int, tallies: dict[int, SourceTally]) -> Iterator[tuple[int, list[str]]]:
    """(source index, documents) batches of about BATCH_CHARS characters, in order."""
    for index, source in enumerate(sources):
        tally = tallies[index]
        batch, chars = [], 0
        for doc in source.documents():
            if len(doc) < min_chars:
                tally.short_skipped += 1
                continue
            batch.append(doc)
            chars += len(doc)
            if chars >= BATCH_CHARS:
                yield index, batch
                batch, chars = [], 0
        if batch:
            yield index, batch
        yield index, []  # marks the end of this source


def _read_ahead(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run `iterator` in a thread so reading and decoding overlap with tokenizing."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(e)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class _Encoder:
    """Tokenizes batches on all cores (tiktoken releases the GIL) into one array per split.

    `submit` returns at once: a coordinator thread splits, hashes and assembles a batch while the
    caller writes the previous one, so the cores never wait for the disk.
    """

    def __init__(self, tokenizer: Tokenizer, workers: int, rule: dict):
        self.tokenizer = tokenizer
        self.workers = workers
        self.rule = rule
        self.pool = ThreadPoolExecutor(workers)
        self.coordinator = ThreadPoolExecutor(1)
        self.eot = np.array([tokenizer.eot_id], dtype=np.uint32)

    def submit(self, docs: list[str]) -> Future:
        return self.coordinator.submit(self._encode, docs)

    def _encode_pieces(self, pieces: list[str]) -> list[np.ndarray]:
        return [self.tokenizer.encode(p) for p in pieces]

    def _encode(self, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(train tokens, val tokens) of a batch; every document starts with end-of-text."""
        pieces, owner = [], []
        for i, doc in enumerate(docs):
            for piece in safe_pieces(doc):
                pieces.append(piece)
                owner.append(i)
        n_tasks = min(len(pieces), self.workers * 4)  # a few tasks per thread balances uneven lengths
        chunks = [pieces[i::n_tasks] for i in range(n_tasks)]
        to_val = [self.rule["rule"] == "hash" and in_val(d, self.rule["val_fraction"]) for d in docs]
        encoded: list = [None] * len(pieces)
        for i, chunk in enumerate(self.pool.map(self._encode_pieces, chunks)):
            encoded[i::n_tasks] = chunk
        parts: dict[bool, list[np.ndarray]] = {False: [], True: []}
        last_owner = -1
        for i, toks in zip(owner, encoded):
            if i != last_owner:
                parts[to_val[i]].append(self.eot)
                last_owner = i
            parts[to_val[i]].append(toks)
        empty = np.zeros(0, dtype=np.uint32)
        return tuple(np.concatenate(parts[v]) if parts[v] else empty for v in (False, True))

    def close(self) -> None:
        self.coordinator.shutdown()
        self.pool.shutdown()


def _check_out_dir(out: Path) -> dict | None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    manifest = load_manifest(out) if out.exists() else None
    if manifest is None and out.exists():
        leftovers = set(orphan_files(out, None))
        others = [p for p in out.iterdir() if p not in leftovers and p.name != TOKENIZER_DIR]
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
    """Drop sources already in the dataset; refuse a known path whose content changed."""
    known_prints = {s["fingerprint"]: s["path"] for s in (manifest or {}).get("sources", [])}
    known_paths = {os.path.realpath(s["path"]): s for s in (manifest or {}).get("sources", [])}
    fresh, seen = [], set()
    for source in sources:
        source.check()
        fp = source.fingerprint()
        old = known_paths.get(os.path.realpath(source.path))
        if fp in known_prints or fp in seen:
            where = known_prints.get(fp, "another source of this run")
            same = os.path.realpath(where) == os.path.realpath(source.path)
            print(f"skipping {source.path}: already in the dataset" + ("" if same else f" (same content as {where})"))
            continue
        if old is not None:
            raise UserError(
                f"source {source.path} changed since it was added to this dataset (fingerprint differs); "
                "to add the new content, give it a new file name"
            )
        seen.add(fp)
        fresh.append(source)
    return fresh


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
) -> dict:
    """Tokenize `specs` into DATA_DIR `out` (creating or appending). Returns the manifest written."""
    out = Path(out)
    if shard_tokens <= 0:
        raise UserError(f"--shard-tokens must be positive, got {shard_tokens}")
    manifest = _check_out_dir(out)
    tok = _resolve_tokenizer(out, manifest, tokenizer)
    rule = _resolve_split(manifest, split, val_fraction)
    options = options or SourceOptions()
    if workers:
        options = dataclasses.replace(options, workers=workers)
    sources = _new_sources(open_sources(specs, options), manifest)
    if not sources:
        print(f"nothing to add: every source is already in {out}")
        return manifest or {}
    if tok is None:
        print("building the character vocabulary (one pass over the sources)...")
        tok = CharTokenizer.from_texts(doc for s in sources for doc in s.documents())
        for s in sources:
            s.counters.clear()
    fresh = manifest is None
    if fresh:
        manifest = empty_manifest(tok.identity(), rule, shard_tokens)
    created_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    for leftover in orphan_files(out, manifest):  # from an interrupted run: this run redoes that work
        leftover.unlink()

    train = ShardSequence(out, "train", len(manifest["shards"]["train"]), manifest["shard_tokens"], tok.vocab_size)
    val = ShardSequence(out, "val", len(manifest["shards"]["val"]), manifest["shard_tokens"], tok.vocab_size)
    tallies = {i: SourceTally() for i in range(len(sources))}
    encoder = _Encoder(tok, workers or usable_cores(), rule)
    progress = Progress(total_bytes=sum(s.path.stat().st_size for s in sources))
    started = time.time()
    try:
        in_flight: deque = deque()  # (source index, docs, future): written in order, two batches ahead

        def write_oldest() -> None:
            index, docs, future = in_flight.popleft()
            train_tokens, val_tokens = future.result()
            train.write(train_tokens)
            val.write(val_tokens)
            tallies[index].documents += len(docs)
            tallies[index].characters += sum(map(len, docs))
            progress.update(len(docs), len(train_tokens) + len(val_tokens), sum(map(len, docs)))

        for index, docs in _read_ahead(_batches(sources, min_chars, tallies)):
            if docs:
                in_flight.append((index, docs, encoder.submit(docs)))
                if len(in_flight) > 2:
                    write_oldest()
                continue
            while in_flight:  # end of a source: its spans in both streams are now known
                write_oldest()
            tallies[index].train[1], tallies[index].val[1] = train.total, val.total
            progress.source_done(sources[index].path.stat().st_size)
            if index + 1 in tallies:
                tallies[index + 1].train[0], tallies[index + 1].val[0] = train.total, val.total
        progress.finish()
        train.close()
        moved = move_tail(train, val, _tail_tokens(rule, fresh, train.total, val.total))
        val.close()
        if train.total == 0 and val.total == 0:
            raise UserError(
                "the sources hold no documents (all empty"
                + (f" or shorter than --min-chars {min_chars}" if min_chars else "")
                + ")"
            )
        if fresh:
            tok.save(out / TOKENIZER_DIR)
        _record(manifest, sources, tallies, train, val, moved, time.time() - started)
        save_manifest(out, manifest)
    except BaseException:
        train.abort()
        val.abort()
        if created_dir:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        encoder.close()
    _print_summary(manifest, sources, tallies, time.time() - started)
    return manifest


def _tail_tokens(rule: dict, fresh: bool, train_total: int, val_total: int) -> int:
    """How much of this run's train stream moves to val: the tail split, or the small-corpus minimum."""
    run_total = train_total + val_total
    if rule["rule"] == "tail":
        return round(run_total * rule["val_fraction"])
    if not fresh or rule["val_fraction"] == 0:
        return 0
    target = max(round(run_total * rule["val_fraction"]), min(MIN_VAL_TOKENS, run_total // 10))
    return max(target - val_total, 0) if val_total < target / 2 else 0


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def _record(manifest, sources, tallies, train: ShardSequence, val: ShardSequence, moved: int, seconds: float) -> None:
    """Add this run's shards, sources and a new dataset version to the manifest (in memory)."""
    cut = train.total  # run-train coordinates >= cut moved to val, after the hash-val tokens
    val_before_tail = val.total - moved
    version = len(manifest["versions"]) + 1
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["shards"]["train"] += [{"file": s.file, "tokens": s.tokens} for s in train.shards]
    manifest["shards"]["val"] += [{"file": s.file, "tokens": s.tokens} for s in val.shards]
    for index, source in enumerate(sources):
        t = tallies[index]
        train_span = (t.train[0], min(t.train[1], cut))
        tail_span = (max(t.train[0], cut), t.train[1])
        val_spans = [tuple(t.val)]
        if tail_span[1] > tail_span[0]:
            val_spans.append((val_before_tail + tail_span[0] - cut, val_before_tail + tail_span[1] - cut))
        train_tokens = max(0, train_span[1] - train_span[0])
        val_tokens = sum(b - a for a, b in val_spans)
        files = [f for a, b, f in train.ranges() if _overlap((a, b), train_span)]
        files += [f for a, b, f in val.ranges() if any(_overlap((a, b), span) for span in val_spans)]
        manifest["sources"].append({
            "path": str(source.path),
            "kind": source.kind,
            "fingerprint": source.fingerprint(),
            "version": version,
            "added": now,
            "documents": t.documents,
            "characters": t.characters,
            "tokens": train_tokens + val_tokens,
            "train_tokens": train_tokens,
            "val_tokens": val_tokens,
            "skipped": {**source.counters, **({"shorter_than_min_chars": t.short_skipped} if t.short_skipped else {})},
            "shards": files,
        })
    totals = manifest["totals"]
    totals["sources"] += len(sources)
    totals["documents"] += sum(t.documents for t in tallies.values())
    totals["characters"] += sum(t.characters for t in tallies.values())
    totals["train_tokens"] += train.total
    totals["val_tokens"] += val.total
    totals["tokens"] = totals["train_tokens"] + totals["val_tokens"]
    manifest["versions"].append({
        "version": version,
        "added": now,
        "sources": [str(s.path) for s in sources],
        "train_tokens": totals["train_tokens"],
        "val_tokens": totals["val_tokens"],
        "seconds": round(seconds, 2),
    })


def _print_summary(manifest: dict, sources: list[Source], tallies: dict[int, SourceTally], seconds: float) -> None:
    docs = sum(t.documents for t in tallies.values())
    chars = sum(t.characters for t in tallies.values())
    added = manifest["sources"][-len(sources):]
    tokens = sum(s["tokens"] for s in added)
    skipped: dict[str, int] = {}
    for s in added:
        for k, v in s["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    totals = manifest["totals"]
    print(
        f"added {len(sources)} source(s): {docs:,} documents, {chars:,} characters, {tokens:,} tokens "
        f"({chars / max(tokens, 1):.2f} chars/token) in {seconds:.1f}s "
        f"({tokens / max(seconds, 1e-9) / 1e6:.2f}M tokens/s)"
    )
    print(
        f"  train {sum(s['train_tokens'] for s in added):,} tokens, val {sum(s['val_tokens'] for s in added):,} tokens "
        f"(split: {manifest['split']['rule']}, val fraction {manifest['split']['val_fraction']})"
    )
    if skipped:
        print("  skipped: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sorted(skipped.items())))
    print(
        f"dataset version {len(manifest['versions'])}: {totals['documents']:,} documents, "
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
