"""read_ahead: the thread that reads sources ahead of the tokenizer ends, with its source closed, before the
consumer goes on. Before: a consumer that stopped early (an error, Ctrl-C) left the thread blocked or still
closing a Wikipedia worker pool while the interpreter exited, and the resource tracker then warned of a leaked
semaphore (seen as 1 Ctrl-C'd prepare in 20)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from gptforge.data.encode import read_ahead


class Source:
    """An endless iterator that records when it is closed, and by which thread."""

    def __init__(self, close_seconds: float = 0.0):
        self.close_seconds = close_seconds
        self.closed_by: str | None = None
        self.items = self._items()

    def _items(self):
        try:
            yield from itertools.count()
        finally:
            time.sleep(self.close_seconds)  # a worker pool takes a moment to shut down
            self.closed_by = threading.current_thread().name


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.main_thread() and t.daemon]


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_closing_the_reader_closes_its_source_and_ends_its_thread_first(depth):
    before = set(reader_threads())
    source = Source(close_seconds=0.2)
    reader = read_ahead(source.items, depth=depth)
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.05)  # the thread has filled the queue and waits to hand over the next item
    reader.close()
    assert source.closed_by is not None and source.closed_by != threading.main_thread().name
    assert set(reader_threads()) == before


def test_an_interrupt_in_the_consumer_still_waits_for_the_source_to_close():
    source = Source(close_seconds=0.2)
    reader = read_ahead(source.items)
    next(reader)
    with pytest.raises(KeyboardInterrupt):
        reader.throw(KeyboardInterrupt)
    assert source.closed_by is not None


def test_an_error_in_the_source_reaches_the_consumer_after_the_items_before_it():
    def failing():
        yield from (1, 2)
        raise ValueError("damaged input")

    reader = read_ahead(failing())
    assert next(reader) == 1 and next(reader) == 2
    with pytest.raises(ValueError, match="damaged input"):
        next(reader)


def test_a_finished_source_gives_every_item_in_order():
    assert list(read_ahead(iter(range(1000)), depth=3)) == list(range(1000))
