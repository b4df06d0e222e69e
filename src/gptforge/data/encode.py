"""Documents -> tokens on all cores, for prepare: batching, the hash split, and cutting long documents safely.

A long document is tokenized in pieces (so it uses every core and a bounded amount of memory); the pieces are
cut where GPT-2's pre-tokenizer starts a new piece of text whatever comes before, so the tokens are exactly
those of the whole document. Only a run of more than 2 x PIECE_CHARS characters with no such place (no space
after a non-space, no newline before a non-space: e.g. a megabyte-long "word") is cut inside the run; the
tokens next to that cut may differ from the whole run's, and each such cut is counted in the manifest.
"""

from __future__ import annotations

import queue
import re
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from gptforge.data.sources import Source
from gptforge.data.tokenizers import Tokenizer

BATCH_CHARS = 4 << 20  # text handed to the tokenizer threads at once
PIECE_CHARS = 1 << 18  # long documents are cut into pieces of this size or a little more
# A new pre-token starts at a space that follows a non-space (GPT-2's pattern cannot take a space after a
# non-space into the same piece), and at a newline followed by a non-space. Python's \s is a superset of the
# tokenizer's whitespace, so "\S here" is non-space there too.
SAFE_CUT = re.compile(r"(?<=\S) |\n(?=\S)")


def in_val(text: str, val_fraction: float) -> bool:
    """The hash split: a document's place depends only on its own text, so appends never move it.

    CRC-32 of the UTF-8 text: uniform enough to split by, and 4x faster than blake2b, which matters
    because it runs beside the tokenizer threads.
    """
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) < val_fraction * 2**32


def cut_points(text: str, piece_chars: int = PIECE_CHARS) -> tuple[list[int], int]:
    """Where to cut `text` into pieces of piece_chars..2*piece_chars characters, and how many cuts are forced
    (no safe place within 2*piece_chars: the piece ends there anyway so memory stays bounded)."""
    cuts, forced, start = [], 0, 0
    while len(text) - start > piece_chars:
        limit = start + 2 * piece_chars
        found = SAFE_CUT.search(text, start + piece_chars, min(limit, len(text)))
        if found is not None:
            start = found.start()
        elif limit >= len(text):
            break
        else:
            start, forced = limit, forced + 1
        cuts.append(start)
    return cuts, forced


def pieces_of(text: str, piece_chars: int = PIECE_CHARS) -> tuple[list[str], int]:
    """`text` cut at cut_points, and how many of the cuts were forced."""
    cuts, forced = cut_points(text, piece_chars)
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])], forced


def safe_pieces(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    return pieces_of(text, piece_chars)[0]


def batches(sources: list[Source], min_chars: int, short: list[int]) -> Iterator[tuple[int, list[str]]]:
    """(source index, documents) batches of about BATCH_CHARS characters, in order; after each source's
    documents an empty batch marks its end. Documents shorter than min_chars are counted in short[index]."""
    for index, source in enumerate(sources):
        batch, chars = [], 0
        for doc in source.documents():
            if len(doc) < min_chars:
                short[index] += 1
                continue
            batch.append(doc)
            chars += len(doc)
            if chars >= BATCH_CHARS:
                yield index, batch
                batch, chars = [], 0
        if batch:
            yield index, batch
        yield index, []


def read_ahead(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run `iterator` in a thread so reading and decoding overlap with tokenizing.

    When the consumer stops early (an error, Ctrl-C), the thread stops at its next item, closes `iterator` and
    is waited for. A Wikipedia source shuts its worker pool down when closed: left to a daemon thread, that
    shutdown raced the interpreter's exit, and the resource tracker then warned of a leaked semaphore.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def hand_over(item) -> bool:
        if stop.is_set():
            return False
        q.put(item)
        return True

    def worker():
        try:
            for item in iterator:
                if not hand_over(item):
                    return
            hand_over(done)
        except BaseException as e:  # handed to the consumer, which re-raises it
            hand_over(e)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

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
        while True:  # room for the one put the thread may be in; every later one sees `stop` first
            try:
                q.get_nowait()
            except queue.Empty:
                break
        thread.join()


@dataclass
class Encoded:
    train: np.ndarray
    val: np.ndarray
    forced_cuts: int


class Encoder:
    """Tokenizes batches on all cores (tiktoken releases the GIL) into one array per split.

    `submit` returns at once: a coordinator thread splits, hashes and assembles a batch while the
    caller writes the previous one, so the cores never wait for the disk. `route` says where a batch's
    documents go: "hash" (each by its hash), "train" or "val" (all of them).
    """

    def __init__(self, tokenizer: Tokenizer, workers: int, val_fraction: float):
        self.tokenizer = tokenizer
        self.workers = workers
        self.val_fraction = val_fraction
        self.pool = ThreadPoolExecutor(workers)
        self.coordinator = ThreadPoolExecutor(1)
        self.eot = np.array([tokenizer.eot_id], dtype=np.uint32)

    def submit(self, docs: list[str], route: str) -> Future:
        return self.coordinator.submit(self._encode, docs, route)

    def _encode_pieces(self, pieces: list[str]) -> list[np.ndarray]:
        return [self.tokenizer.encode(p) for p in pieces]

    def _encode(self, docs: list[str], route: str) -> Encoded:
        """Every document starts with end-of-text."""
        pieces, owner, forced = [], [], 0
        for i, doc in enumerate(docs):
            doc_pieces, n_forced = pieces_of(doc)
            forced += n_forced
            pieces.extend(doc_pieces)
            owner.extend([i] * len(doc_pieces))
        n_tasks = min(len(pieces), self.workers * 4)  # a few tasks per thread balances uneven lengths
        chunks = [pieces[i::n_tasks] for i in range(n_tasks)]
        to_val = [route == "val" or (route == "hash" and in_val(d, self.val_fraction)) for d in docs]
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
        train, val = (np.concatenate(parts[v]) if parts[v] else empty for v in (False, True))
        return Encoded(train, val, 0 if self.tokenizer.kind == "char" else forced)  # characters cut anywhere

    def close(self) -> None:
        self.coordinator.shutdown()
        self.pool.shutdown()
