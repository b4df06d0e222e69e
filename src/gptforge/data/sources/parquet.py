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
        schema = pf.schema_arrow
        if column not in schema.names:
            raise UserError(
                f"source {self.path}: no column {column!r}; its columns are {', '.join(schema.names)} "
                "(choose with --text-column)"
            )
        kind = schema.field(column).type
        if not _is_text(pa, kind):  # (a number or bytes column used to count as empty rows, silently)
            columns = ", ".join(f"{f.name} ({f.type})" for f in schema)
            raise UserError(f"source {self.path}: column {column!r} holds {kind} values, not text; "
                            f"choose the text column with --text-column (its columns: {columns})")
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


def _is_text(pa, kind) -> bool:
    """Strings in any of Arrow's layouts (an all-null column has type null: its rows count as empty)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    is_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_view(kind) or pa.types.is_null(kind)
