"""Writing one part of a dataset (one prepare run): sources -> shards, committed as it goes, then the version.

The manifest's `pending` entry is the unfinished part: after each source file, or group of small files of at
least `commit_tokens` tokens, the shards written so far are closed and listed there together with the files'
entries, and the manifest is replaced atomically. An interrupted run therefore keeps every committed file, and
a rerun continues from the last commit with the same shard numbers and stream positions, so the part comes
out the same wherever it was interrupted. `finish` settles the part's val share (which needs the whole part:
the tail split and the small-part minimum), turns the pending entry into a dataset version and only then shows
the part to readers. No listed file is ever modified: a split shard is copied and the original removed after
the commit.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from gptforge.data.encode import Encoder, batches, read_ahead
from gptforge.data.identity import dataset_identity, version_identity
from gptforge.data.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    load_manifest,
    next_shard_index,
    orphan_files,
    save_manifest,
)
from gptforge.data.parts import val_share
from gptforge.data.shard_streams import ShardSequence, WrittenShard, split_off_tail
from gptforge.data.sources import Source
from gptforge.data.tokenizers import Tokenizer
from gptforge.fsutil import writing
from gptforge.progress import Progress

TOKENIZER_DIR = "tokenizer"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_pending(part: str, settings: dict, val_mode: str) -> dict:
    return {"part": part, "started": now(), "settings": settings, "val_mode": val_mode, "seconds": 0.0,
            "shards": {"train": [], "val": []}, "sources": []}


@dataclass
class _Tally:
    documents: int = 0
    characters: int = 0
    cut_long_runs: int = 0


class PartWriter:
    """Writes the sources of the manifest's pending part and commits; `finish` makes it a dataset version."""

    def __init__(self, out: Path, manifest: dict, tok: Tokenizer, workers: int, commit_tokens: int,
                 save_tokenizer: bool):
        self.out, self.manifest, self.tok, self.workers = out, manifest, tok, workers
        self.pending, self.rule = manifest["pending"], manifest["split"]
        self.commit_tokens, self.save_tokenizer = commit_tokens, save_tokenizer
        shard_tokens = manifest["shard_tokens"]
        self.train = ShardSequence(out, "train", next_shard_index(manifest, "train"), shard_tokens, tok.vocab_size)
        self.val = ShardSequence(out, "val", next_shard_index(manifest, "val"), shard_tokens, tok.vocab_size)
        # this part's stream positions where this process starts: what earlier runs committed
        self.train_base = sum(s["tokens"] for s in self.pending["shards"]["train"])
        self.val_base = sum(s["tokens"] for s in self.pending["shards"]["val"])
        self.marks = [self.train_base, self.val_base]  # positions at the end of the last finished source
        self.waiting: list[dict] = []  # finished sources not yet committed
        self.committed_here = 0  # tokens this process wrote that are committed
        self.clock = time.time()

    @property
    def part_tokens(self) -> int:
        return self.train_base + self.val_base + self.train.total + self.val.total

    def route(self, role: str | None) -> str:
        if role == "val":
            return "val"
        return "hash" if self.pending["val_mode"] == "hash" else "train"

    def write(self, sources: list[Source], roles: list[str | None], min_chars: int, progress: Progress) -> None:
        encoder = Encoder(self.tok, self.workers, self.rule["val_fraction"])
        short, tallies = [0] * len(sources), [_Tally() for _ in sources]
        in_flight: deque = deque()  # (source index, docs, future): written in order, two batches ahead

        def write_oldest() -> None:
            index, docs, future = in_flight.popleft()
            encoded = future.result()
            self.train.write(encoded.train)
            self.val.write(encoded.val)
            chars = sum(map(len, docs))
            tally = tallies[index]
            tally.documents, tally.characters = tally.documents + len(docs), tally.characters + chars
            tally.cut_long_runs += encoded.forced_cuts
            progress.update(len(encoded.train) + len(encoded.val), chars)

        try:
            current = -1
            with contextlib.closing(read_ahead(batches(sources, min_chars, short))) as documents:
                for index, docs in documents:
                    if index != current:
                        current = index
                        progress.start_file(sources[index].path.stat().st_size)
                    if docs:
                        in_flight.append((index, docs, encoder.submit(docs, self.route(roles[index]))))
                        if len(in_flight) > 2:
                            write_oldest()
                        continue
                    while in_flight:  # end of a source: its spans in both streams are now known
                        write_oldest()
                    self._source_done(sources[index], roles[index], tallies[index], short[index])
                    progress.file_done()
                    waiting_tokens = self.train.total + self.val.total - self.committed_here
                    if self.part_tokens and (waiting_tokens >= self.commit_tokens or index == len(sources) - 1):
                        self.commit()
                        progress.commit()
        except BaseException:
            self.abort()
            raise
        finally:
            encoder.close()

    def _source_done(self, source: Source, role: str | None, tally: _Tally, short: int) -> None:
        ends = [self.train_base + self.train.total, self.val_base + self.val.total]
        skipped = {**source.counters, **({"shorter_than_min_chars": short} if short else {})}
        self.waiting.append({
            "path": str(source.path), "kind": source.kind, "fingerprint": source.fingerprint(),
            **({"role": role} if role == "val" else {}),
            "documents": tally.documents, "characters": tally.characters, "skipped": skipped,
            **({"cut_long_runs": tally.cut_long_runs} if tally.cut_long_runs else {}),
            "train": [self.marks[0], ends[0]], "val": [self.marks[1], ends[1]],
        })
        self.marks = ends

    def commit(self) -> None:
        """Make the shards and files finished so far durable: close the open shards, list them, save."""
        self.pending["shards"]["train"] += [s.entry() for s in self.train.take()]
        self.pending["shards"]["val"] += [s.entry() for s in self.val.take()]
        self.pending["sources"] += self.waiting
        self.pending["seconds"] = round(self.pending["seconds"] + time.time() - self.clock, 2)
        if self.save_tokenizer:  # before the manifest that needs it
            with writing(self.out / TOKENIZER_DIR):
                self.tok.save(self.out / TOKENIZER_DIR)
            self.save_tokenizer = False
        self.manifest["format_version"] = FORMAT_VERSION
        with writing(self.out / MANIFEST):
            save_manifest(self.out, self.manifest)
        self.waiting, self.clock = [], time.time()
        self.committed_here = self.train.total + self.val.total

    def abort(self) -> None:
        """After a failure: remove every shard the manifest on disk does not list (partial ones included)."""
        with contextlib.suppress(OSError):  # cleaning up must not hide the error that brought us here
            self.train.abort()
            self.val.abort()
            for leftover in orphan_files(self.out, load_manifest(self.out)):
                leftover.unlink(missing_ok=True)

    def finish(self) -> dict:
        """Settle the part's val share, add it to the dataset as a new version, save. Returns the version."""
        try:
            return self._finish()
        except BaseException:
            self.abort()
            raise

    def _finish(self) -> dict:
        pending = self.pending
        train = [WrittenShard.from_entry(e) for e in pending["shards"]["train"]]
        val = list(pending["shards"]["val"])
        train_total, val_total = sum(s.tokens for s in train), sum(s["tokens"] for s in val)
        move, how = val_share(self.rule, pending["val_mode"], train_total, val_total)
        replaced: list[str] = []
        if move:
            head = ShardSequence(self.out, "train", self.train.next_index, self.train.shard_tokens, self.tok.vocab_size)
            train, replaced = split_off_tail(self.out, train, move, head, self.val)
            val += [s.entry() for s in self.val.take()]
        version = self._add_version([s.entry() for s in train], val, train_total - move, val_total, how)
        with writing(self.out / MANIFEST):
            save_manifest(self.out, self.manifest)
        for name in replaced:  # no longer listed: the new manifest is durable
            (self.out / name).unlink(missing_ok=True)
        return version

    def _add_version(self, train: list[dict], val: list[dict], cut: int, hash_val: int, how: str) -> dict:
        """Move the pending part into the dataset (in memory): shards, sources, totals and a version entry.

        `cut`: this part's train tokens from there on went to val, after its `hash_val` tokens."""
        m, pending = self.manifest, self.manifest.pop("pending")
        number, added = len(m["versions"]) + 1, now()
        part_train, part_val = sum(s["tokens"] for s in train), sum(s["tokens"] for s in val)
        totals = m["totals"]
        train_at, val_at = totals["train_tokens"], totals["val_tokens"]
        previous = (dataset_identity(m)["versions"] or [""])[-1]
        for entry in pending["sources"]:
            m["sources"].append(_final_source(entry, train, val, cut, hash_val, number, pending["part"], added))
        m["shards"]["train"] += train
        m["shards"]["val"] += val
        totals["sources"] += len(pending["sources"])
        totals["documents"] += sum(s["documents"] for s in pending["sources"])
        totals["characters"] += sum(s["characters"] for s in pending["sources"])
        totals["train_tokens"] += part_train
        totals["val_tokens"] += part_val
        totals["tokens"] = totals["train_tokens"] + totals["val_tokens"]
        version = {
            "version": number, "part": pending["part"], "added": added,
            "sources": [s["path"] for s in pending["sources"]],
            "train_tokens": totals["train_tokens"], "val_tokens": totals["val_tokens"],
            "train_range": [train_at, train_at + part_train],
            "val_ranges": [[val_at, val_at + part_val]] if part_val else [], "val_rule": how,
            "identity": version_identity(previous, m["tokenizer"]["hash"], m["split"], train, val),
            "seconds": round(pending["seconds"] + time.time() - self.clock, 2),
        }
        m["versions"].append(version)
        return version


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def _files(shards: list[dict], spans: list[tuple[int, int]]) -> list[str]:
    out, pos = [], 0
    for s in shards:
        if any(_overlap((pos, pos + s["tokens"]), span) for span in spans):
            out.append(s["file"])
        pos += s["tokens"]
    return out


def _final_source(entry: dict, train: list[dict], val: list[dict], cut: int, hash_val: int, version: int,
                  part: str, added: str) -> dict:
    """A pending source entry (part stream spans) as the manifest keeps it once its part is finished."""
    (a, b), (va, vb) = entry["train"], entry["val"]
    train_span = (a, min(b, cut))
    val_spans = [(va, vb)]
    if b > max(a, cut):  # the end of its train stream moved to val, after the part's hash-split val
        val_spans.append((hash_val + max(a, cut) - cut, hash_val + b - cut))
    train_tokens = max(0, train_span[1] - train_span[0])
    val_tokens = sum(y - x for x, y in val_spans)
    final = {k: v for k, v in entry.items() if k not in ("train", "val")}
    final.update(version=version, part=part, added=added, tokens=train_tokens + val_tokens,
                 train_tokens=train_tokens, val_tokens=val_tokens,
                 shards=_files(train, [train_span]) + _files(val, val_spans))
    return final
