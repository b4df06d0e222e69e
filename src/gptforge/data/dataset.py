"""Opening a dataset for reading: a gptforge DATA_DIR (manifest + shards) or a nanoGPT data folder.

Train and val are each one stream of token ids over their shards (memory-mapped, concatenated in manifest
order); the dataset also knows its vocabulary, its end-of-text id, its version and its tokenizer.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptforge.data.manifest import listed_shards, load_manifest
from gptforge.data.nanogpt_meta import read_meta_pkl
from gptforge.data.shards import open_shard
from gptforge.data.tokenizers import GPT2_EOT, GPT2_VOCAB, CharTokenizer, Tokenizer, load_tokenizer
from gptforge.errors import UserError


class TokenStream:
    """Several memmapped shards read as one stream of token ids."""

    def __init__(self, shards: list[np.ndarray], names: list[str]):
        self.shards = shards
        self.names = names
        self.starts = np.cumsum([0] + [len(s) for s in shards]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def read(self, start: int, length: int) -> np.ndarray:
        out = np.empty(length, dtype=np.int64)
        i = bisect.bisect_right(self.starts, start) - 1
        filled = 0
        while filled < length:
            offset = start + filled - self.starts[i]
            piece = self.shards[i][offset : offset + length - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            i += 1
        return out


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

    @property
    def train_tokens(self) -> int:
        return len(self.train)

    @property
    def val_tokens(self) -> int:
        return len(self.val)


def _manifest_version(manifest: dict) -> int:
    versions = manifest.get("versions") or []
    if versions and isinstance(versions[-1], dict) and "version" in versions[-1]:
        return int(versions[-1]["version"])
    return len(versions)


def _open_split(data_dir: Path, manifest: dict, split: str) -> TokenStream:
    shards, names = [], []
    for path, listed in listed_shards(data_dir, manifest, split):
        tokens = open_shard(path)
        if len(tokens) != listed:
            raise UserError(f"shard {path} holds {len(tokens)} tokens but {data_dir}/manifest.json lists {listed}")
        shards.append(tokens)
        names.append(path.name)
    return TokenStream(shards, names)


def _nanogpt_vocab(data_dir: Path) -> tuple[int, int | None]:
    meta = data_dir / "meta.pkl"
    if not meta.is_file():
        return GPT2_VOCAB, GPT2_EOT  # nanoGPT's openwebtext/shakespeare folders use GPT-2's BPE
    info = read_meta_pkl(meta)
    return int(info["vocab_size"]), None  # nanoGPT's character vocabularies have no end-of-text token


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
        tok = manifest["tokenizer"]
        train, val = _open_split(data_dir, manifest, "train"), _open_split(data_dir, manifest, "val")
        tok_dir = data_dir / "tokenizer"
        return Dataset(data_dir, train, val, int(tok["vocab_size"]), tok.get("eot_id"),
                       tok_dir if tok_dir.is_dir() else None, _manifest_version(manifest), "gptforge", tok)
    if (data_dir / "train.bin").is_file() and (data_dir / "val.bin").is_file():
        vocab, eot = _nanogpt_vocab(data_dir)
        train = TokenStream([open_shard(data_dir / "train.bin")], ["train.bin"])
        val = TokenStream([open_shard(data_dir / "val.bin")], ["val.bin"])
        return Dataset(data_dir, train, val, vocab, eot, None, 0, "nanogpt")
    raise UserError(f"{data_dir} has neither a manifest.json (gptforge prepare) nor train.bin and val.bin (nanoGPT)")


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
