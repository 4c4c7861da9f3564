"""Rows by position from a source read only front to back, a chunk at a time (a snapshot's Parquet row groups):
gather chosen rows, or pick them out chunk by chunk, in one pass that holds one chunk of the source besides them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

# A scan: each call reads the rows afresh, in position order, as consecutive tables of the same columns.
Scan = Callable[[], Iterable[pa.Table]]


def table_scan(table: pa.Table, rows: int = 1 << 16) -> Scan:
    """A scan of ``table`` in slices of ``rows`` (no copy): an in-memory table read as a snapshot's files are."""
    return lambda: (table.slice(start, rows) for start in range(0, table.num_rows, rows))


def one_chunk(column: pa.ChunkedArray) -> pa.Array:
    """``column`` as one array, the dictionaries of a dictionary column's chunks unified first."""
    if column.num_chunks == 1:
        return column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.unify_dictionaries()
    return column.combine_chunks()


def gather(scan: Scan, positions: np.ndarray) -> pa.Table:
    """The rows at ``positions`` (distinct, in any order) in that order, each column one chunk, from one pass of
    ``scan`` that stops after the last of them: only those rows are held, not the source. Raises IndexError on a
    position past the source's end, ValueError on a scan of no chunk."""
    positions = np.asarray(positions, dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    wanted = positions[order]
    parts: list[pa.Table] = []
    start = 0
    for chunk in scan():
        a, b = np.searchsorted(wanted, [start, start + chunk.num_rows])
        if b > a or not parts:  # the first chunk's (maybe empty) rows keep the schema
            parts.append(chunk.take(wanted[a:b] - start))
        start += chunk.num_rows
        if b == len(wanted):  # every row found: the rest is not read
            break
    if not parts:
        raise ValueError("gather from a scan of no rows")
    if len(wanted) and wanted[-1] >= start:
        raise IndexError(f"position {int(wanted[-1])} is past the {start} rows scanned")
    table = pa.concat_tables(parts)
    del parts
    table = pa.Table.from_arrays([one_chunk(column) for column in table.columns], schema=table.schema)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    table = table.take(back)
    # Arrow's allocator keeps what the pass freed (the row groups read, the copies above) for reuse; a gather is
    # repeated each epoch, so give it back rather than hold a pass's worth for nothing between them.
    pa.default_memory_pool().release_unused()
    return table


def selected(scan: Scan, where: np.ndarray) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Each chunk of ``scan`` cut to the rows whose entry of ``where`` (one per position) is not negative, with
    those entries: a pass over chosen rows, each with its place among them (``where[position]``)."""
    start = 0
    for chunk in scan():
        at = where[start:start + chunk.num_rows]
        start += chunk.num_rows
        keep = at >= 0
        if keep.all():
            yield chunk, at
        elif keep.any():
            kept = np.flatnonzero(keep)
            yield chunk.take(kept), at[kept]
