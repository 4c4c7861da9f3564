"""The one time-ordered split of labelled rows: everything before a cut, and the latest rows after it.

The pipeline holds out the most recent days to judge challenger and champion on rows neither has seen; a
use case's training holds out the latest fraction for early stopping. Both cut the same way: rows ordered by
the use case's time order (a timestamp column first, then tie-breakers, so the order does not depend on which
partition a row was read from), the latest ones second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def time_order(rows: pd.DataFrame | pa.Table, order: Sequence[str]) -> np.ndarray:
    """Positions of ``rows`` (a frame or an Arrow table) ordered by the columns ``order``: a stable sort, so
    rows with equal keys keep their relative place, as ``time_split`` orders them."""
    if isinstance(rows, pa.Table):
        return pc.sort_indices(rows.select(list(order)),
                               sort_keys=[(name, "ascending") for name in order]).to_numpy()
    keys = rows[list(order)].reset_index(drop=True)
    return keys.sort_values(list(order), kind="stable").index.to_numpy()


def latest_cut(count: int, fraction: float) -> int:
    """How many of ``count`` time-ordered rows come before the latest ``fraction`` of them (in (0, 1));
    raises ValueError otherwise."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    return count - int(round(count * fraction))


def time_split(rows: pd.DataFrame, order: Sequence[str], *, fraction: float | None = None,
               days: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(earlier, latest): ``rows`` ordered by the columns ``order``, split before the latest ``fraction`` of
    them or before the last ``days`` before the latest value of ``order[0]``.

    Give exactly one of ``fraction`` (in (0, 1)) or ``days`` (> 0); raises ValueError otherwise.
    """
    if (fraction is None) == (days is None):
        raise ValueError("give exactly one of fraction or days")
    ordered = rows.sort_values(list(order), kind="stable", ignore_index=True)
    if fraction is not None:
        cut = latest_cut(len(ordered), fraction)
        return ordered.iloc[:cut], ordered.iloc[cut:]
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    time = ordered[order[0]]
    recent = time > time.max() - pd.Timedelta(days=days)
    return ordered[~recent], ordered[recent]
