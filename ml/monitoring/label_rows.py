"""The most recent label records, bounded, looked up by key: a closed window's events as rows (features and
label), which the monitor scores again with the previous version to compare two versions on the same events."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


class LabelRows:
    """Label tables as decoded, oldest dropped first once more than ``max_rows`` rows are held."""

    def __init__(self, key: str, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.key, self.max_rows = key, max_rows
        self._tables: deque[pa.Table] = deque()
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self._tables.append(table)
        self._rows += table.num_rows
        while self._rows - self._tables[0].num_rows >= self.max_rows:
            self._rows -= self._tables.popleft().num_rows

    def rows(self, keys: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
        """(rows, positions): the held rows of ``keys`` in the order of ``keys`` (a key's latest record), and
        where in ``keys`` each row belongs; keys no longer held (or never labelled) are left out."""
        if not self._tables or not len(keys):
            return pd.DataFrame(), np.empty(0, np.int64)
        table = pa.concat_tables(self._tables)
        table = table.filter(pc.is_in(table.column(self.key), value_set=pa.array(list(keys), table.schema.field(
            self.key).type)))
        # Nullable integers stay integers, as the snapshots load them (ml.snapshot).
        frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        frame = frame.drop_duplicates(self.key, keep="last").set_index(self.key, drop=False)
        where = frame.index.get_indexer(pd.Index(keys))
        found = np.flatnonzero(where >= 0)
        return frame.iloc[where[found]].reset_index(drop=True), found
