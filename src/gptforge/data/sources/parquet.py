"""Parquet shards (FineWeb, FineWeb-Edu, nanochat's), streamed one record batch at a time with pyarrow."""

from __future__ import annotations

from typing import Iterator

from gptforge.data.sources.base import Source
from gptforge.errors import UserError

BATCH_ROWS = 1024


class ParquetSource(Source):
    kind = "parquet"

    def _open(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
            raise UserError(f"source {self.path}: not a readable parquet file ({e})") from None
        column = self.options.text_column
        names = pf.schema_arrow.names
        if column not in names:
            raise UserError(
                f"source {self.path}: no column {column!r}; its columns are {', '.join(names)} "
                "(choose with --text-column)"
            )
        return pf, column

    def check(self) -> None:
        """Fail fast on a bad file before any document of the run is written."""
        self._open()

    def documents(self) -> Iterator[str]:
        import pyarrow as pa

        pf, column = self._open()
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[column]):
                for text in batch.column(0).to_pylist():
                    if not isinstance(text, str) or not text.strip():
                        self.counters["empty_skipped"] += 1
                        continue
                    yield text
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
            raise UserError(f"source {self.path}: corrupt parquet data ({e})") from None
