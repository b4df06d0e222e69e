"""Opening a dataset for reading: a gptforge DATA_DIR (manifest + shards) or a nanoGPT data folder.

Train and val are each one stream of token ids over their shards (memory-mapped, concatenated in manifest
order); the dataset also knows its vocabulary, its end-of-text id, its version, its tokenizer, its val parts
(for val loss per part) and its content identity (for resume: same, grown or another dataset).

Token ids are checked against the vocabulary, cheaply: on open, the largest id of every shard as the manifest
recorded it at prepare time (for a nanoGPT folder, one vectorised pass over each file, remembered by size and
modification time in the folder's .gptforge-ids.json); on every read, the tokens read, so a shard changed
after prepare is named instead of failing deep inside training.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptforge.data.identity import dataset_identity, nanogpt_identity
from gptforge.data.manifest import load_manifest
from gptforge.data.nanogpt_meta import read_meta_pkl
from gptforge.data.parts import ValPart, val_parts
from gptforge.data.shards import check_token_ids, open_shard
from gptforge.data.tokenizers import GPT2_EOT, GPT2_VOCAB, CharTokenizer, Tokenizer, load_tokenizer
from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_json

IDS_CACHE = ".gptforge-ids.json"


class TokenStream:
    """Several memmapped shards (or pieces of shards) read as one stream of token ids."""

    def __init__(self, shards: list[np.ndarray], paths: list[Path], vocab_size: int | None = None,
                 offsets: list[int] | None = None):
        self.shards, self.paths, self.vocab_size = shards, paths, vocab_size
        self.offsets = offsets or [0] * len(shards)  # where each piece starts in its file's tokens
        self.starts = np.cumsum([0] + [len(s) for s in shards]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.paths]

    def read(self, start: int, length: int) -> np.ndarray:
        out = np.empty(length, dtype=np.int64)
        i = bisect.bisect_right(self.starts, start) - 1
        filled = 0
        while filled < length:
            offset = start + filled - self.starts[i]
            piece = self.shards[i][offset : offset + length - filled]
            if self.vocab_size is not None and len(piece) and int(piece.max()) >= self.vocab_size:
                check_token_ids(self.paths[i], piece, self.vocab_size, base=self.offsets[i] + offset)
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            i += 1
        return out

    def subrange(self, start: int, end: int) -> "TokenStream":
        """Tokens [start, end) of this stream as a stream of its own (views, nothing copied)."""
        shards, paths, offsets = [], [], []
        for i, (a, b) in enumerate(zip(self.starts, self.starts[1:])):
            lo, hi = max(start, a), min(end, b)
            if lo < hi:
                shards.append(self.shards[i][lo - a : hi - a])
                paths.append(self.paths[i])
                offsets.append(self.offsets[i] + lo - a)
        return TokenStream(shards, paths, self.vocab_size, offsets)


@dataclass
class Dataset:
    path: Path
    train: TokenStream
    val: TokenStream
    vocab_size: int
    eot_id: int | None
    tokenizer_dir: Path | None
    version: int
    kind: str  # "gptforge" or "nanogpt"
    tokenizer_identity: dict | None = None
    val_parts: list[ValPart] = field(default_factory=list)  # the val stream by dataset part
    identity: dict = field(default_factory=dict)  # content identity: see identity.compare_identity
    unfinished: dict | None = None  # an unfinished prepare run: {"part", "files"}, not part of the streams

    @property
    def train_tokens(self) -> int:
        return len(self.train)

    @property
    def val_tokens(self) -> int:
        return len(self.val)

    def val_part_streams(self) -> list[tuple[str, TokenStream]]:
        """(part name, its val tokens as one stream) for every part with val tokens, for val loss per part."""
        out = []
        for part in self.val_parts:
            pieces = [self.val.subrange(a, b) for a, b in part.ranges]
            if pieces:
                out.append((part.name, _joined(pieces, self.vocab_size)))
        return out


def _joined(streams: list[TokenStream], vocab_size: int | None) -> TokenStream:
    return TokenStream([s for t in streams for s in t.shards], [p for t in streams for p in t.paths], vocab_size,
                       [o for t in streams for o in t.offsets])


def _manifest_version(manifest: dict) -> int:
    versions = manifest.get("versions") or []
    if versions and isinstance(versions[-1], dict) and "version" in versions[-1]:
        return int(versions[-1]["version"])
    return len(versions)


def _open_split(data_dir: Path, manifest: dict, split: str, vocab: int) -> TokenStream:
    shards, paths = [], []
    for entry in manifest["shards"][split]:
        path, listed = data_dir / entry["file"], int(entry["tokens"])
        if int(entry.get("max_id", -1)) >= vocab:
            raise UserError(f"shard {path} holds token ids up to {entry['max_id']}, not below the vocab size {vocab} "
                            f"of {data_dir}/manifest.json: the shards and the tokenizer do not belong together")
        tokens = open_shard(path)
        if len(tokens) != listed:
            raise UserError(f"shard {path} holds {len(tokens)} tokens but {data_dir}/manifest.json lists {listed}")
        shards.append(tokens)
        paths.append(path)
    return TokenStream(shards, paths, vocab)


def _nanogpt_vocab(data_dir: Path) -> tuple[int, int | None]:
    meta = data_dir / "meta.pkl"
    if not meta.is_file():
        return GPT2_VOCAB, GPT2_EOT  # nanoGPT's openwebtext/shakespeare folders use GPT-2's BPE
    info = read_meta_pkl(meta)
    return int(info["vocab_size"]), None  # nanoGPT's character vocabularies have no end-of-text token


def _checked_nanogpt_file(path: Path, vocab: int) -> TokenStream:
    """A nanoGPT .bin whose ids are all below `vocab`: one vectorised max over the file, remembered in the folder's
    .gptforge-ids.json by size and modification time (a file that changed is scanned again)."""
    tokens = open_shard(path)
    cache_path = path.parent / IDS_CACHE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    known = cache.get(path.name)
    if isinstance(known, dict) and all(known.get(k) == v for k, v in key.items()):
        top = int(known.get("max_id", -1))
    else:
        top = max((int(tokens[i : i + (1 << 24)].max()) for i in range(0, len(tokens), 1 << 24)), default=-1)
        try:  # a read-only folder just means scanning again next time
            atomic_write_json(cache_path, {**cache, path.name: {**key, "max_id": top}})
        except OSError:
            pass
    if top >= vocab:
        check_token_ids(path, tokens, vocab)
    return TokenStream([tokens], [path], vocab)


def open_dataset(data_dir: str | Path) -> Dataset:
    """A gptforge DATA_DIR (manifest.json) or a nanoGPT data folder (train.bin, val.bin [, meta.pkl])."""
    if not str(data_dir).strip():
        raise UserError("no dataset given: set --data=DATA_DIR (a directory made by `gptforge prepare`)")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"data directory {str(data_dir)!r} does not exist (set --data=DATA_DIR, made by `gptforge prepare`)"
        )
    manifest = load_manifest(data_dir)
    if manifest is not None:
        return _open_gptforge(data_dir, manifest)
    if (data_dir / "train.bin").is_file() and (data_dir / "val.bin").is_file():
        vocab, eot = _nanogpt_vocab(data_dir)
        train = _checked_nanogpt_file(data_dir / "train.bin", vocab)
        val = _checked_nanogpt_file(data_dir / "val.bin", vocab)
        parts = [ValPart(data_dir.resolve().name or "val", [0], [(0, len(val))] if len(val) else [])]
        return Dataset(data_dir, train, val, vocab, eot, None, 0, "nanogpt", val_parts=parts,
                       identity=nanogpt_identity(data_dir, vocab, len(train), len(val)))
    raise UserError(f"{data_dir} has neither a manifest.json (gptforge prepare) nor train.bin and val.bin (nanoGPT)")


def _open_gptforge(data_dir: Path, manifest: dict) -> Dataset:
    pending = manifest.get("pending")
    unfinished = {"part": pending["part"], "files": len(pending["sources"])} if pending else None
    if not manifest.get("versions") and pending:
        raise UserError(f"{data_dir} holds no finished data yet: its first prepare run (part {pending['part']!r}, "
                        f"{len(pending['sources'])} files committed) is unfinished; rerun that command to finish it")
    tok = manifest["tokenizer"]
    vocab = int(tok["vocab_size"])
    train, val = _open_split(data_dir, manifest, "train", vocab), _open_split(data_dir, manifest, "val", vocab)
    tok_dir = data_dir / "tokenizer"
    return Dataset(data_dir, train, val, vocab, tok.get("eot_id"), tok_dir if tok_dir.is_dir() else None,
                   _manifest_version(manifest), "gptforge", tok, val_parts(manifest), dataset_identity(manifest),
                   unfinished)


def dataset_tokenizer(dataset: Dataset) -> tuple[Tokenizer | None, dict | None]:
    """The tokenizer that made the dataset and its identity (None for a nanoGPT folder we cannot decode)."""
    if dataset.tokenizer_dir is not None:
        tok = load_tokenizer(dataset.tokenizer_dir)
        return tok, dataset.tokenizer_identity or tok.identity()
    if dataset.kind == "gptforge":
        identity = dataset.tokenizer_identity or {}
        if identity.get("kind") == "gpt2" or identity.get("name") == "gpt2":
            return load_tokenizer("gpt2"), identity
        return None, identity
    if (dataset.path / "meta.pkl").is_file():
        meta = read_meta_pkl(dataset.path / "meta.pkl")
        itos = meta.get("itos") if isinstance(meta, dict) else None
        if not itos:
            return None, None
        tok = CharTokenizer([itos[i] for i in range(len(itos))])  # nanoGPT's char vocabulary, same ids
        return tok, tok.identity()
    if dataset.vocab_size == GPT2_VOCAB:
        tok = load_tokenizer("gpt2")
        return tok, tok.identity()
    return None, None
