"""MediaWiki XML dumps (.xml or .xml.bz2; UTF-8 or UTF-16; any language) -> one clean article each.

The main process only reads: it decompresses (in parallel threads when indexed_bzip2 is
installed), cuts the stream into batches of whole <page> elements and hands them to a pool of
processes that parse and clean them (wikitext.clean). Results come back in dump order through a
bounded window, so memory stays constant for a dump of any size. Workers start with forkserver
(forking a process that runs threads is unsafe), so a script that reads a multi-batch dump must
guard its entry point with `if __name__ == "__main__":`, as for any multiprocessing code.

A truncated or corrupt dump is an error naming the file and how far it got. With keep_partial the
articles before the damage are kept instead. The standard library's bz2 checks a block's CRC
only after emitting its text (a flipped bit can come out as wrong text first), so on that path a
batch is only handed out once the next one has decompressed cleanly; indexed_bzip2 verifies each
block before returning it (300 random bit flips: never wrong text before the error).
"""

from __future__ import annotations

import bz2
import codecs
import re
import sys
from collections import Counter, deque
from pathlib import Path
from typing import Iterator

from gptforge.data.sources.base import Source, SourceOptions
from gptforge.data.sources.lifetimes import parallel_bz2, worker_pool
from gptforge.data.sources.wikitext import DEFAULT_NAMES, WikiNames, clean
from gptforge.errors import UserError
from gptforge.fsutil import usable_cores

try:  # parallel bzip2 decompression; the standard library's single-threaded bz2 otherwise
    import indexed_bzip2
except ImportError:  # pragma: no cover - depends on the environment
    indexed_bzip2 = None

BATCH_BYTES = 2 << 20  # XML per task sent to a worker: big enough to amortise the IPC
READ_BYTES = 1 << 20
HEAD_BYTES = 1 << 20  # the root element must appear this early
_PAGE_END = b"</page>"


class DamagedDump(Exception):
    """The dump stops being readable part way; `trusted` says if the text just before is sound."""

    def __init__(self, what: str, trusted: bool):
        super().__init__(what)
        self.what = what
        self.trusted = trusted


class WikipediaSource(Source):
    kind = "wikipedia"

    def __init__(self, path: Path, options: SourceOptions):
        super().__init__(path, options)
        self.workers = options.workers or usable_cores()
        # progress, kept apart from `counters` (which prepare reports as things skipped)
        self.xml_bytes_read = 0
        self.pages_read = 0
        self.articles = 0

    def check(self) -> None:
        """Fail fast on a file that is not a MediaWiki dump (or not bzip2 when it claims to be)."""
        super().check()
        chunks = self._xml_chunks(parallel=False)
        head = b""
        try:
            for chunk in chunks:
                head += chunk
                if b"<mediawiki" in head or len(head) >= HEAD_BYTES:
                    break
        except DamagedDump as e:
            if b"<mediawiki" not in head:
                raise UserError(f"source {self.path}: {e.what}") from None
        finally:
            chunks.close()
        if b"<mediawiki" not in head[:HEAD_BYTES]:
            raise UserError(
                f"source {self.path}: not a MediaWiki XML dump (no <mediawiki> element at its start); "
                "expected a pages-articles .xml or .xml.bz2 file"
            )

    def documents(self) -> Iterator[str]:
        batches = self._batches()
        results = _ordered_map(batches, self.workers)
        try:
            for docs, counts in results:
                self.articles += len(docs)
                self.counters.update(counts)
                yield from docs
        except DamagedDump as e:
            where = f"after {self.xml_bytes_read / 1e6:.1f} MB of XML and {self.pages_read} complete pages"
            if not self.options.keep_partial:
                raise UserError(
                    f"source {self.path}: {e.what} {where}; nothing from it was added. Download it again, "
                    "or rerun with --keep-partial to keep the articles before the damage"
                ) from None
            self.counters["truncated"] = 1
            print(f"warning: {self.path}: {e.what} {where}; kept the {self.articles} "
                  "articles before it (--keep-partial)", file=sys.stderr)
        finally:
            results.close()  # stops the workers if the caller gives up early
            batches.close()

    def _batches(self) -> Iterator[tuple[bytes, WikiNames]]:
        """Batches of whole pages as UTF-8 XML, each with the dump's namespace names.

        One batch is held back until the next has been read cleanly (see the module doc).
        """
        names = None
        parts: list[bytes] = []  # read but not yet batched (joined only when a batch is due)
        size = 0
        held = None
        chunks = self._xml_chunks(parallel=True)
        try:
            for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if names is None:
                    head = b"".join(parts)
                    parts = [head]
                    start = head.find(b"<page>")
                    if start < 0 and size < HEAD_BYTES and b"</mediawiki>" not in head:
                        continue
                    names = _names_from_header(head[: start if start >= 0 else size])
                if size < BATCH_BYTES:
                    continue
                pending = b"".join(parts)
                while len(pending) >= BATCH_BYTES:
                    cut = pending.rfind(_PAGE_END, 0, BATCH_BYTES)
                    if cut < 0:
                        cut = pending.find(_PAGE_END, BATCH_BYTES)  # a page longer than a batch
                        if cut < 0:
                            break  # keep reading until it ends
                    cut += len(_PAGE_END)
                    if held is not None:
                        yield self._count(held), names
                    held, pending = pending[:cut], pending[cut:]
                parts, size = [pending], len(pending)
        except DamagedDump as e:
            pending = b"".join(parts)
            if e.trusted:  # everything decompressed so far is sound: keep its whole pages
                if held is not None:
                    yield self._count(held), names
                yield self._count(pending[: pending.rfind(_PAGE_END) + len(_PAGE_END)]), names or DEFAULT_NAMES
            raise
        finally:
            chunks.close()
        pending = b"".join(parts)
        if names is None:
            names = _names_from_header(pending)
        if held is not None:
            yield self._count(held), names
        if b"</mediawiki>" not in pending:
            if b"<page>" in pending:
                # the pages complete before the cut are sound: only the tail is missing
                yield self._count(pending[: pending.rfind(_PAGE_END) + len(_PAGE_END)]), names
            raise DamagedDump("the XML ends before </mediawiki> (the file is cut short)", trusted=True)
        yield self._count(pending), names

    def _count(self, batch: bytes) -> bytes:
        self.xml_bytes_read += len(batch)
        self.pages_read += batch.count(_PAGE_END)
        return batch

    def _xml_chunks(self, parallel: bool) -> Iterator[bytes]:
        """The dump's XML as UTF-8 bytes, decompressed and transcoded as needed."""
        raw = self._decompressed_chunks(parallel)
        try:
            first = b""
            for chunk in raw:
                first += chunk
                if len(first) >= 4:
                    break
            encoding = _sniff_encoding(first)
            if encoding == "utf-8":
                yield first[3:] if first.startswith(codecs.BOM_UTF8) else first
                yield from raw
                return
            decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
            yield decoder.decode(first).encode("utf-8")
            for chunk in raw:
                yield decoder.decode(chunk).encode("utf-8")
            yield decoder.decode(b"", final=True).encode("utf-8")
        finally:
            raw.close()

    def _decompressed_chunks(self, parallel: bool) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            magic = f.read(4)
            f.seek(0)
            if not (magic[:3] == b"BZh" and magic[3:4].isdigit()):
                yield from iter(lambda: f.read(READ_BYTES), b"")
                return
            if parallel and indexed_bzip2 is not None and self.workers > 1:
                yield from _parallel_bz2(self.path, self.workers)
            else:
                yield from _stdlib_bz2(f)


def _parallel_bz2(path: Path, threads: int) -> Iterator[bytes]:
    chunks = parallel_bz2(path, threads, read_bytes=1 << 18)  # a failing read returns nothing: keep them small
    try:
        yield from chunks
    except (RuntimeError, ValueError, OSError, EOFError):
        # indexed_bzip2 reports both a cut and a bit flip this way, without detail
        raise DamagedDump("the bzip2 data is truncated or corrupt", trusted=True) from None
    finally:
        chunks.close()


def _stdlib_bz2(f) -> Iterator[bytes]:
    """Single-threaded decompression; handles multistream dumps (streams back to back)."""
    decompressor = bz2.BZ2Decompressor()
    fed_since_stream_start = False
    for block in iter(lambda: f.read(1 << 16), b""):  # small reads: stop soon after any damage
        while block:
            try:
                out = decompressor.decompress(block)
            except OSError:
                raise DamagedDump(f"the bzip2 data is corrupt near byte {f.tell():,}", trusted=False) from None
            fed_since_stream_start = True
            if out:
                yield out
            if not decompressor.eof:
                break
            block = decompressor.unused_data
            decompressor = bz2.BZ2Decompressor()
            fed_since_stream_start = False
    if fed_since_stream_start and not decompressor.eof:
        raise DamagedDump(f"the bzip2 data is truncated at byte {f.tell():,}", trusted=True)


def _ordered_map(tasks: Iterator, workers: int) -> Iterator[tuple[list[str], Counter]]:
    """clean_batch over tasks, results in task order, at most 2 x workers in flight.

    A dump of a single batch is cleaned in this process: starting workers would cost more.
    A DamagedDump raised by `tasks` surfaces only after every earlier result was yielded.
    """
    first = next(tasks, None)
    if first is None:
        return
    try:
        second = next(tasks, None)
    except DamagedDump:
        yield clean_batch(*first)
        raise
    if second is None or workers <= 1:
        for task in (first, second):
            if task is not None:
                yield clean_batch(*task)
        for task in tasks:
            yield clean_batch(*task)
        return
    with worker_pool(workers) as pool:
        window = deque([pool.submit(clean_batch, *first), pool.submit(clean_batch, *second)])
        damage = None
        try:
            for task in tasks:
                window.append(pool.submit(clean_batch, *task))
                while len(window) > 2 * workers:
                    yield window.popleft().result()
        except DamagedDump as e:
            damage = e
        while window:
            yield window.popleft().result()
        if damage is not None:
            raise damage


# (no two quantifiers here can take the same characters: a hostile page cannot make them backtrack)
_REDIRECT_TEXT = re.compile(r"\s*#[^\s\[\]]+\s*(?::\s*)?\[\[[^\]\n]+\]\]")
_CHAR_REF = re.compile(r"&#(?:x([0-9a-fA-F]{1,8})|([0-9]{1,8}));")  # longer ones are no code point: left as text


def clean_batch(batch: bytes, names: WikiNames) -> tuple[list[str], Counter]:
    """Parse and clean every <page> in a piece of dump XML: (documents, counters)."""
    counts: Counter[str] = Counter()
    try:
        xml = batch.decode("utf-8")
    except UnicodeDecodeError:
        xml = batch.decode("utf-8", errors="replace")
        counts["invalid_utf8_replaced"] += xml.count("\ufffd") - batch.count("\ufffd".encode())
    docs = []
    for page in _pages(xml):
        title = _xml_unescape(_between(page, "<title>", "</title>") or "").strip()
        ns = _between(page, "<ns>", "</ns>")
        namespace = int(ns) if ns and ns.strip().lstrip("-").isdigit() else names.namespace_of(title)
        if namespace != 0:
            counts["other_namespace_skipped"] += 1
            continue
        text = _xml_unescape(_last_text(page))
        if "<redirect" in page or _REDIRECT_TEXT.match(text):
            counts["redirects_skipped"] += 1
            continue
        body = clean(text, names)
        if not body:
            counts["empty_skipped"] += 1
            continue
        docs.append(f"{title}\n\n{body}")
    return docs, counts


def _pages(xml: str) -> Iterator[str]:
    end = 0
    while True:
        start = xml.find("<page>", end)
        if start < 0:
            return
        end = xml.find("</page>", start)
        if end < 0:
            return
        yield xml[start + 6:end]


def _between(page: str, start: str, end: str) -> str | None:
    i = page.find(start)
    if i < 0:
        return None
    i += len(start)
    j = page.find(end, i)
    return page[i:j] if j >= 0 else None


def _last_text(page: str) -> str:
    """The wikitext of the page's last revision ('' for <text/> or a deleted revision)."""
    i = page.rfind("<text")
    if i < 0:
        return ""
    j = page.find(">", i)
    if j < 0 or page[j - 1] == "/":
        return ""
    k = page.find("</text>", j)
    return page[j + 1:k] if k >= 0 else page[j + 1:]


def _xml_unescape(s: str) -> str:
    if "&" not in s:
        return s
    s = s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'")
    if "&#" in s:
        s = _CHAR_REF.sub(_char, s)
    return s.replace("&amp;", "&")  # last, so "&amp;lt;" stays the wikitext "&lt;"


def _char(m: re.Match) -> str:
    code = int(m.group(1), 16) if m.group(1) else int(m.group(2))
    return chr(code) if 0 < code < 0x110000 and not 0xD800 <= code < 0xE000 else "\ufffd"


_NAMESPACE = re.compile(rb'<namespace key="(-?\d+)"[^<>]*?(?:/>|>([^<]*)</namespace>)')


def _names_from_header(head: bytes) -> WikiNames:
    """Namespace names from <siteinfo>; English defaults for a dump without one."""
    found = {int(k): _xml_unescape(v.decode("utf-8", "replace")).strip() for k, v in _NAMESPACE.findall(head)}
    return WikiNames.from_siteinfo(found) if found else DEFAULT_NAMES


def _sniff_encoding(head: bytes) -> str:
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if head.startswith(b"<\x00"):
        return "utf-16-le"
    if head.startswith(b"\x00<"):
        return "utf-16-be"
    m = re.match(rb"<\?xml[^>]*encoding=[\"']([A-Za-z0-9._-]+)", head)
    if m:
        try:
            name = codecs.lookup(m.group(1).decode()).name
        except LookupError:
            return "utf-8"
        return "utf-8" if name in ("utf-8", "ascii") else name
    return "utf-8"
