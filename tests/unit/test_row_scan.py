"""Rows by position from a scan: gathered in the order asked, from one pass that stops once they are found; or
picked out chunk by chunk with their places."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ml.row_scan import gather, one_chunk, selected, table_scan


def _table(n: int = 1000) -> pa.Table:
    return pa.table({"i": np.arange(n), "s": pa.array([f"k{i % 7}" for i in range(n)]).dictionary_encode()})


class _Chunks:
    """A scan whose chunks carry their own dictionaries, as a snapshot's row groups do; counts the chunks read."""

    def __init__(self, table: pa.Table, rows: int):
        self.table, self.rows, self.read = table, rows, 0

    def __call__(self):
        for start in range(0, self.table.num_rows, self.rows):
            self.read += 1
            part = self.table.slice(start, self.rows)
            yield pa.table({"i": part["i"], "s": part["s"].cast(pa.string()).combine_chunks().dictionary_encode()})


def test_gather_returns_the_rows_in_the_order_asked_each_column_one_chunk():
    table = _table()
    positions = np.random.default_rng(0).permutation(1000)[:321]
    got = gather(_Chunks(table, 64), positions)
    assert got["i"].to_pylist() == positions.tolist()
    assert got["s"].cast(pa.string()).to_pylist() == [f"k{p % 7}" for p in positions]
    assert all(column.num_chunks == 1 for column in got.columns) and pa.types.is_dictionary(got.schema.field("s").type)


def test_gather_stops_reading_once_every_row_is_found():
    scan = _Chunks(_table(), 100)
    assert gather(scan, np.array([250, 5, 120]))["i"].to_pylist() == [250, 5, 120]
    assert scan.read == 3  # rows 0-299: the last seven chunks are not read
    assert gather(_Chunks(_table(), 100), np.array([], dtype=int)).num_rows == 0


def test_gather_refuses_a_position_past_the_end_and_a_scan_of_nothing():
    with pytest.raises(IndexError, match="1000 is past the 1000 rows"):
        gather(table_scan(_table(), 300), np.array([3, 1000]))
    with pytest.raises(ValueError, match="no rows"):
        gather(lambda: iter([]), np.array([0]))


def test_selected_cuts_each_chunk_to_the_chosen_rows_with_their_places():
    where = np.full(1000, -1)
    where[[999, 3, 4, 640]] = [0, 1, 2, 3]
    parts = list(selected(table_scan(_table(), 300), where))
    assert [(part["i"].to_pylist(), at.tolist()) for part, at in parts] == \
        [([3, 4], [1, 2]), ([640], [3]), ([999], [0])]
    whole = list(selected(table_scan(_table(10), 4), np.arange(10)))
    assert [len(part) for part, _ in whole] == [4, 4, 2]


def test_one_chunk_unifies_the_dictionaries_of_a_dictionary_column():
    column = pa.chunked_array([pa.array(["a", "b"]).dictionary_encode(), pa.array(["c", "a"]).dictionary_encode()])
    assert one_chunk(column).cast(pa.string()).to_pylist() == ["a", "b", "c", "a"]
