"""nanoGPT's meta.pkl (a character vocabulary) read as plain data: a pickle that would build anything but
dicts, strings and numbers is refused instead of run."""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

from gptforge.errors import UserError

MAX_VOCAB = 1 << 16  # nanoGPT writes train.bin / val.bin as uint16


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes build (dicts, strings, numbers, lists, tuples) plus the
    dict/str/int constructors; any other class or function is refused instead of imported."""

    ALLOWED = {("builtins", "dict"), ("builtins", "str"), ("builtins", "int")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, and only plain data is accepted")


def read_meta_pkl(path) -> dict:
    """nanoGPT's meta.pkl as a dict with an int vocab_size and, for character data, itos {int: str} and
    stoi {str: int}; a file that is anything else (or would run code) is a UserError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(f).load()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a plain nanoGPT meta.pkl: refused to load it ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is not a nanoGPT meta.pkl: it holds a {type(meta).__name__}, not a dict")
    vocab = meta.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
        raise UserError(f"{path}: 'vocab_size' must be a positive integer, got {vocab!r}")
    if vocab > MAX_VOCAB:  # e.g. 10^12 would have the model allocate its embedding: 512 TB
        raise UserError(f"{path}: 'vocab_size' is {vocab:,}, but nanoGPT's .bin files hold uint16 token ids, so a "
                        f"vocabulary has at most {MAX_VOCAB:,} entries")
    itos, stoi = meta.get("itos"), meta.get("stoi")
    if itos is not None:
        if not isinstance(itos, dict) or sorted(itos) != list(range(len(itos))) or \
                not all(isinstance(s, str) for s in itos.values()):
            raise UserError(f"{path}: 'itos' must map the ids 0..n-1 to strings")
        if len(itos) != vocab:
            raise UserError(f"{path}: 'itos' has {len(itos)} entries but vocab_size is {vocab}")
    if stoi is not None:
        if not isinstance(stoi, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in stoi.items()):
            raise UserError(f"{path}: 'stoi' must map strings to ids")
        if itos is not None and any(itos.get(i) != s for s, i in stoi.items()):
            raise UserError(f"{path}: 'stoi' and 'itos' disagree")
    return meta
