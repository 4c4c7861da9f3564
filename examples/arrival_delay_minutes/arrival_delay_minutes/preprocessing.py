"""The preprocessing of this use case: the flight features (fitted by the flight delay use case's code, the
same pre-departure inputs) and the target's scaling. The model learns the delay in units of ``target_scale``
around ``target_center`` (the training median), clipped to the training quantiles: a few flights hours late
would otherwise dominate the loss."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import model_validator

from ml.preprocessing import Preprocessing
from use_cases.flight_delay import preprocessing as flight_features

VERSION = 1
LABEL = "arr_delay"
TARGET_QUANTILES = (0.005, 0.995)


class ArrivalPreprocessing(Preprocessing):
    """Flight features and the target's centre, scale and clip range; JSON round-trips."""

    VERSION = VERSION

    use_case: Literal["arrival_delay_minutes"] = "arrival_delay_minutes"
    features: flight_features.FlightPreprocessing
    target_center: float
    target_scale: float
    target_low: float
    target_high: float

    @model_validator(mode="after")
    def _features_of_this_code(self) -> ArrivalPreprocessing:
        if self.features.version != flight_features.VERSION:
            raise ValueError(f"flight features v{self.features.version} cannot be read by the code of "
                             f"v{flight_features.VERSION}")
        return self

    def minutes(self, scaled: np.ndarray) -> np.ndarray:
        """Model outputs back in minutes, within the training range."""
        return np.clip(np.asarray(scaled, "float64").reshape(-1) * self.target_scale + self.target_center,
                       self.target_low, self.target_high)

    def scaled(self, minutes: pd.Series | np.ndarray) -> np.ndarray:
        """Delays in minutes as the model's target."""
        clipped = np.clip(np.asarray(minutes, "float64"), self.target_low, self.target_high)
        return ((clipped - self.target_center) / self.target_scale).astype("float32")


def fit(rows: pd.DataFrame) -> ArrivalPreprocessing:
    """Fit the features on all ``rows`` and the target's scaling on their delays (rows with a delay only).
    Raises ValueError on zero rows."""
    features = flight_features.fit(rows)
    y = rows[LABEL].dropna().astype("float64")
    if len(y) == 0:
        raise ValueError("no row carries an arrival delay to fit the target on")
    low, high = y.quantile(TARGET_QUANTILES).tolist()
    clipped = y.clip(low, high)
    return ArrivalPreprocessing(
        version=VERSION, input_schema=features.input_schema, rows_fitted=len(rows),
        fitted_through=features.fitted_through, features=features, target_center=float(clipped.median()),
        target_scale=float(max(clipped.std(ddof=0), 1.0)), target_low=low, target_high=high)
