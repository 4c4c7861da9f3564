"""Features: the one preprocessing path shared by training and the scorer.

``fit`` learns a :class:`FeatureContract` (vocabularies, imputation values, normalisation statistics) from
a training DataFrame; ``transform`` turns a DataFrame or a list of `flights.scheduled` records into the
model's named input arrays. Only fields of ``FlightScheduled`` are read: nothing known after departure
(delays, cancellation, diversion, actual arrival) can reach a feature. The contract travels with the model,
so a champion is always scored with the contract it was trained with.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from ml import contracts

log = logging.getLogger(__name__)

# Bumped whenever the meaning of a feature changes: a contract fitted by other code is refused.
CONTRACT_VERSION = 1

NUMERIC_INPUT = "numeric"
CATEGORICAL_PREFIX = "cat_"

# Reserved categorical indices; vocabulary entries start at VOCAB_OFFSET.
MISSING_INDEX = 0
OOV_INDEX = 1
VOCAB_OFFSET = 2

# Categoricals, with the minimum training frequency that earns a vocabulary entry (rarer -> OOV).
# Tail numbers, flight numbers, routes and manufacturers were tried and left out: their embeddings
# memorise the training months and lowered the AUC on the following month.
MIN_FREQUENCY: dict[str, int] = {
    "carrier": 1, "origin": 1, "dest": 5, "plane_type": 1, "plane_engine": 1, "dow": 1, "dep_hour": 1,
}
WEATHER_FIELDS = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib")
PLANE_NUMERIC_FIELDS = ("plane_year", "plane_seats", "plane_engines")
# Optional numeric source fields get a 0/1 missing indicator besides imputation: a missing registry entry
# or weather reading is itself informative.
INDICATOR_FIELDS = (*WEATHER_FIELDS, *PLANE_NUMERIC_FIELDS)
REQUIRED_FIELDS = ("sched_dep_utc", "sched_arr_utc", "year", "month", "day", "sched_dep_time",
                   "sched_arr_time", "carrier", "origin", "dest", "distance")
OPTIONAL_FIELDS = (*WEATHER_FIELDS, *PLANE_NUMERIC_FIELDS, "plane_type", "plane_engine")
# Never read: known only after departure (the label and its ingredients).
LEAKAGE_FIELDS = frozenset({"dep_delay", "arr_delay", "cancelled", "diverted", "arr_utc", "delayed"})
# Numeric values are clipped to these training quantiles: a network extrapolates linearly, so a July heat
# wave after a spring training window (or a sensor glitch at serving time) would otherwise drive it far off.
CLIP_QUANTILES = (0.001, 0.999)
# Besides its standardised value, each non-indicator numeric is given a piecewise-linear encoding over
# training quantile bins: it lets the network fit thresholds (visibility under a mile, any rain) the way a
# tree would, and it is bounded, so it cannot extrapolate.
QUANTILE_BINS = 8


def _input_schema() -> dict[str, str]:
    """Name -> Arrow type of every FlightScheduled field read ("?" marks an optional field)."""
    schema = contracts.arrow_schema(contracts.FlightScheduled)
    return {name: f"{schema.field(name).type}{'?' if schema.field(name).nullable else ''}"
            for name in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)}


class FeatureContract(BaseModel):
    """What a model expects and how to build it from `flights.scheduled` fields; JSON round-trips."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    contract_version: int
    input_schema: dict[str, str]
    vocabularies: dict[str, list[str]]
    numeric_features: list[str]
    fill: list[float]
    lower: list[float]
    upper: list[float]
    center: list[float]
    scale: list[float]
    bin_edges: dict[str, list[float]]
    rows_fitted: int
    fitted_through: str

    @property
    def fingerprint(self) -> str:
        """Short content hash, for logs and registry tags."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def numeric_width(self) -> int:
        """Columns of the ``numeric`` input: standardised values, then the bin encodings."""
        return len(self.numeric_features) + sum(len(e) - 1 for e in self.bin_edges.values())

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Embedding input size per categorical, reserved indices included."""
        return {name: len(vocab) + VOCAB_OFFSET for name, vocab in self.vocabularies.items()}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureContract:
        """Rebuild a contract; raises ValueError when it was fitted by another contract version."""
        contract = cls.model_validate(dict(data))
        if contract.contract_version != CONTRACT_VERSION:
            raise ValueError(f"feature contract v{contract.contract_version} cannot be used by features "
                             f"v{CONTRACT_VERSION}")
        return contract


def _frame(data: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The input as a DataFrame holding every field read; absent optional fields become missing."""
    columns = [*REQUIRED_FIELDS, *OPTIONAL_FIELDS]
    df = data if isinstance(data, pd.DataFrame) else pd.DataFrame.from_records(list(data))
    if len(df) == 0:
        # An empty batch (no records, hence no columns) transforms to empty arrays.
        return pd.DataFrame(columns=columns)
    absent = [name for name in REQUIRED_FIELDS if name not in df.columns]
    if absent:
        raise ValueError(f"input lacks required flights.scheduled fields: {absent}")
    return df.reindex(columns=columns)


def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").astype("float64")


def _str(s: pd.Series) -> pd.Series:
    """Strings with None/NaN (and pandas NA) kept as missing."""
    return s.astype("object").where(s.notna(), None)


def _cyclic(out: dict[str, np.ndarray], name: str, value: pd.Series, period: float) -> None:
    angle = 2 * np.pi * value.to_numpy(dtype="float64") / period
    out[f"{name}_sin"] = np.sin(angle)
    out[f"{name}_cos"] = np.cos(angle)


def _raw_features(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Unscaled numeric features (NaN where unknown) and categorical strings (None where unknown)."""
    dep_hhmm, arr_hhmm = _num(df["sched_dep_time"]), _num(df["sched_arr_time"])
    # Local (New York) clock time of departure: delays build up through the day as aircraft rotate.
    dep_hour = dep_hhmm // 100 + dep_hhmm % 100 / 60
    arr_hour = arr_hhmm // 100 + arr_hhmm % 100 / 60
    date = pd.to_datetime(pd.DataFrame({"year": _num(df["year"]), "month": _num(df["month"]),
                                        "day": _num(df["day"])}), errors="coerce")
    dep_utc = pd.to_datetime(df["sched_dep_utc"], utc=True, format="ISO8601")
    arr_utc = pd.to_datetime(df["sched_arr_utc"], utc=True, format="ISO8601")
    block = (arr_utc - dep_utc).dt.total_seconds() / 60
    distance = _num(df["distance"])
    w = {name: _num(df[name]) for name in WEATHER_FIELDS}

    num: dict[str, np.ndarray] = {"dep_hour": dep_hour.to_numpy()}
    _cyclic(num, "dep_hour", dep_hour, 24)
    _cyclic(num, "arr_hour", arr_hour, 24)
    num["block_minutes"] = block.to_numpy()
    num["log_distance"] = np.log(distance.to_numpy())
    # Scheduled speed: a padded (slow) schedule marks routes the airline expects to be congested.
    num["sched_mph"] = (distance / block.where(block > 0) * 60).to_numpy()
    for name in ("temp", "dewp", "humid", "wind_speed", "wind_gust", "pressure", "visib"):
        num[name] = w[name].to_numpy()
    # Dew-point spread near zero means saturated air: fog, low ceilings, thunderstorms.
    num["dewpoint_spread"] = (w["temp"] - w["dewp"]).to_numpy()
    num["log_precip"] = np.log1p(w["precip"].to_numpy())
    _cyclic(num, "wind_dir", w["wind_dir"], 360)
    num["plane_age"] = (_num(df["year"]) - _num(df["plane_year"])).to_numpy()
    num["plane_seats"] = _num(df["plane_seats"]).to_numpy()
    num["plane_engines"] = _num(df["plane_engines"]).to_numpy()
    for name in INDICATOR_FIELDS:
        num[f"{name}_missing"] = df[name].isna().to_numpy(dtype="float64")

    cat = {
        "carrier": df["carrier"], "origin": df["origin"], "dest": df["dest"],
        "plane_type": df["plane_type"], "plane_engine": df["plane_engine"],
        "dow": date.dt.day_of_week.map("{:.0f}".format, na_action="ignore"),
        "dep_hour": (dep_hhmm // 100).map("{:.0f}".format, na_action="ignore"),
    }
    return pd.DataFrame(num, index=df.index), {k: _str(v) for k, v in cat.items()}


def fit(df: pd.DataFrame) -> FeatureContract:
    """Learn vocabularies, imputation values and normalisation statistics from training rows."""
    if len(df) == 0:
        raise ValueError("cannot fit a feature contract on zero rows")
    frame = _frame(df)
    num, cat = _raw_features(frame)
    vocabularies = {}
    for name, values in cat.items():
        counts = values.value_counts(dropna=True)
        vocabularies[name] = sorted(str(v) for v in counts.index[counts >= MIN_FREQUENCY[name]])
    fill = num.median().fillna(0.0)
    # Indicators keep their full 0/1 range: a rare one (0.1% missing) would otherwise be clipped to 0.
    indicators = num.columns.str.endswith("_missing")
    lower = num.quantile(CLIP_QUANTILES[0]).fillna(fill).where(~indicators, 0.0)
    upper = num.quantile(CLIP_QUANTILES[1]).fillna(fill).where(~indicators, 1.0)
    filled = num.fillna(fill).clip(lower, upper, axis=1)
    center = filled.mean()
    # A constant column (e.g. an indicator never set in training) keeps scale 1 rather than dividing by 0.
    scale = filled.std(ddof=0).where(lambda s: s > 1e-9, 1.0)
    bin_edges = {}
    for name in num.columns:
        edges = np.unique(np.quantile(filled[name], np.linspace(0, 1, QUANTILE_BINS + 1)))
        # Indicators and near-constant columns (two edges or fewer) gain nothing from an encoding.
        if not indicators[num.columns.get_loc(name)] and len(edges) > 2:
            bin_edges[name] = edges.tolist()
    fitted_through = pd.to_datetime(frame["sched_dep_utc"], utc=True, format="ISO8601").max()
    contract = FeatureContract(
        contract_version=CONTRACT_VERSION, input_schema=_input_schema(), vocabularies=vocabularies,
        numeric_features=list(num.columns), fill=fill.tolist(), lower=lower.tolist(), upper=upper.tolist(),
        center=center.tolist(), scale=scale.tolist(), bin_edges=bin_edges,
        rows_fitted=len(df), fitted_through=fitted_through.isoformat(),
    )
    log.info("fitted feature contract v%d %s on %d rows: %d numeric features, vocab sizes %s",
             CONTRACT_VERSION, contract.fingerprint, len(df), len(contract.numeric_features), contract.vocab_sizes)
    return contract


def transform(contract: FeatureContract, data: pd.DataFrame | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Model inputs for rows of a DataFrame or a list of records.

    Returns ``{"numeric": float32 (n, k)}`` plus ``{"cat_<name>": int32 (n,)}`` per categorical. Missing
    values (None, NaN, or an absent optional field) are imputed; an unseen category maps to ``OOV_INDEX``.
    Raises ValueError when a required field is absent.
    """
    frame = _frame(data)
    num, cat = _raw_features(frame)
    num = num[contract.numeric_features]
    values = num.to_numpy(dtype="float64")
    values = np.where(np.isnan(values), np.asarray(contract.fill), values)
    values = np.clip(values, np.asarray(contract.lower), np.asarray(contract.upper))
    parts = [(values - np.asarray(contract.center)) / np.asarray(contract.scale)]
    position = {name: i for i, name in enumerate(contract.numeric_features)}
    for name, edges in contract.bin_edges.items():
        e = np.asarray(edges)
        # Bin t reads 0 below its lower edge, 1 above its upper edge, and the fraction in between.
        parts.append(np.clip((values[:, [position[name]]] - e[:-1]) / np.diff(e), 0.0, 1.0))
    out = {NUMERIC_INPUT: np.concatenate(parts, axis=1).astype("float32")}
    for name, vocab in contract.vocabularies.items():
        index = {v: i + VOCAB_OFFSET for i, v in enumerate(vocab)}
        codes = cat[name].map(index).astype("float64")
        codes = codes.where(cat[name].notna(), MISSING_INDEX).fillna(OOV_INDEX)
        out[CATEGORICAL_PREFIX + name] = codes.to_numpy(dtype="int32")
    return out
