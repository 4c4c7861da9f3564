"""The baseline the network must match: a gradient-boosted tree on the model's own inputs.

A scikit-learn ``HistGradientBoostingClassifier`` trained on the same rows as the network, reading the same
fitted preprocessing's features (the numeric ones as scaled, each categorical as its vocabulary code, with
native categorical splits where a vocabulary fits in 255 bins). ``benchmarks/model_quality.py`` and the demo
report put its AUC beside the network's: a user who sees a tree beat the network on their own data should
see it here first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from use_cases.flight_delay import preprocessing as prep

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier

# HistGradientBoostingClassifier's native categorical splits take at most max_bins (255) values.
MAX_CATEGORIES = 255


def tree_inputs(fitted: prep.FlightPreprocessing, rows: pa.Table | pd.DataFrame | Sequence[Mapping[str, Any]]
                ) -> tuple[np.ndarray, list[bool]]:
    """The network's inputs as one matrix: scaled numeric features (without the bin columns derived from them,
    which a tree does not need), then each categorical's codes; and which columns are native categoricals."""
    x = prep.transform(fitted, rows)
    k = len(fitted.numeric_features)
    cats = sorted(name for name in x if name.startswith(prep.CATEGORICAL_PREFIX))
    columns = [x[prep.NUMERIC_INPUT][:, :k]] + [x[name].reshape(-1, 1).astype("float32") for name in cats]
    sizes = prep.index_ranges(fitted)
    native = [False] * k + [sizes[name] <= MAX_CATEGORIES for name in cats]
    return np.hstack(columns), native


def train_tree(fitted: prep.FlightPreprocessing, rows: pd.DataFrame, labels: np.ndarray, *, seed: int
               ) -> HistGradientBoostingClassifier:
    """A tree fitted on ``rows`` through ``fitted``'s features, with the library's early stopping."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, native = tree_inputs(fitted, rows)
    tree = HistGradientBoostingClassifier(categorical_features=np.asarray(native), early_stopping=True,
                                          random_state=seed)
    return tree.fit(x, labels)


def tree_probabilities(tree: HistGradientBoostingClassifier, fitted: prep.FlightPreprocessing,
                       rows: pa.Table | pd.DataFrame | Sequence[Mapping[str, Any]]) -> np.ndarray:
    """P(delayed) of each row by ``tree``."""
    x, _ = tree_inputs(fitted, rows)
    return tree.predict_proba(x)[:, 1]
