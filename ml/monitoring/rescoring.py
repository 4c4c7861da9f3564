"""The serving version against the previous one on the same events: a closed window's labelled rows scored again
by the previous version (its model and fitted preprocessing from MLflow), both judged by the use case's metric
function of the live metric. Windows of different events differ by the events alone (a month's AUC swings by
more than a rollback margin), so the rollback compares on the same ones."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd

from ml.monitoring.policy import Comparison
from ml.monitoring.windows import Window
from ml.registry import Registry
from ml.use_cases import UseCase

log = logging.getLogger(__name__)

# Versions whose model is kept loaded (the previous version is usually the same from window to window).
MODELS_KEPT = 2


class Rescorer:
    """Scores window rows with a registered version; models and preprocessings are cached per version."""

    def __init__(self, uc: UseCase, registry: Registry, metric: str, *, min_share: float = 0.5) -> None:
        self.uc, self.registry, self.metric, self.min_share = uc, registry, metric, min_share
        self._models: OrderedDict[int, Any] = OrderedDict()
        self._preprocessings: dict[int, Any] = {}
        self._warned: set[tuple[int, str]] = set()

    def compare(self, w: Window, previous: int, rows: pd.DataFrame, found: np.ndarray) -> Comparison | None:
        """``w``'s version and ``previous`` on the window events of ``rows`` (``found``: their positions in the
        window); None, logged once per version and cause, when they cannot be compared (too few rows still held,
        a version not in MLflow, no metric function of the live metric)."""
        if len(found) < self.min_share * len(w.y):
            self._warn(previous, "rows", f"only {len(found)} of the window's {len(w.y)} events still have their label "
                       "row (raise MONITOR_LABEL_ROWS)")
            return None
        try:
            serving_fn = self._metric_function(w.version)
            previous_fn = self._metric_function(previous)
            if serving_fn is None or previous_fn is None:
                self._warn(previous, "metric", f"the use case gives no metric function of {self.metric}")
                return None
            scores = self.uc.scores(self._model(previous), self._preprocessing(previous), rows)
        except Exception as e:  # noqa: BLE001 - a version that cannot be scored is not compared; the floor still holds
            self._warn(previous, type(e).__name__, f"v{previous} cannot score the window ({e})")
            return None
        y = w.y[found]
        return Comparison(previous_version=previous, value=float(serving_fn(y, w.scores[found], None)),
                          previous_value=float(previous_fn(y, scores, None)), events=len(found))

    def _metric_function(self, version: int):
        return self.uc.metric_functions(self._preprocessing(version)).get(self.metric)

    def _preprocessing(self, version: int):
        if version not in self._preprocessings:
            client = self.registry.client()
            run_id = client.get_model_version(self.registry.name, str(version)).run_id
            self._preprocessings[version] = self.uc.load_preprocessing(self.registry.preprocessing(run_id))
        return self._preprocessings[version]

    def _model(self, version: int):
        if version in self._models:
            self._models.move_to_end(version)
        else:
            self._models[version] = self.registry.load_predictor(version)
            while len(self._models) > MODELS_KEPT:
                self._models.popitem(last=False)
        return self._models[version]

    def _warn(self, version: int, cause: str, message: str) -> None:
        if (version, cause) not in self._warned:
            self._warned.add((version, cause))
            log.warning("%s: no comparison with v%d on the same events, only the floor applies: %s", self.uc.name,
                        version, message)

