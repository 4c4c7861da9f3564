"""The flight features: the one preprocessing path shared by training, evaluation and the scorer.

``fit`` learns a :class:`FlightPreprocessing` (vocabularies, imputation values, normalisation statistics, and
the smoothed share of delayed flights per route, carrier and origin hour) from training rows; ``transform``
turns an Arrow table, a DataFrame or a list of `flights.scheduled` records into the model's named input arrays.
Only fields of ``FlightScheduled`` are read: nothing known after departure (delays, cancellation, diversion,
actual arrival) can reach a feature; the label reaches one only through the rates of the training rows. The
fitted preprocessing travels with the model, so a champion is always scored with the preprocessing it was
trained with.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ml.contracts import field_types
from ml.preprocessing import Preprocessing
from use_cases.flight_delay.contracts import FlightScheduled

log = logging.getLogger(__name__)

# Bumped whenever the meaning of a feature changes: a preprocessing fitted by other code is refused.
VERSION = 2

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
INPUT_FIELDS = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)
# The string fields, each read as a category (a few hundred distinct values at most).
STRING_FIELDS = ("carrier", "origin", "dest", "plane_type", "plane_engine")
LABEL = "delayed"
# History-derived features: the share of delayed flights per key (one or two categoricals, by their vocabulary
# codes) in the training rows, smoothed towards the overall share by RATE_PRIOR_WEIGHT pseudo-flights, so an
# unseen key gets the overall share. Fitted on the training window only and carried in the fitted
# preprocessing. Only keys with hundreds of flights each: a rate of a rare key (a tail number, a flight
# number) mostly repeats its own training labels, and models that read them, the network and a gradient-boosted
# tree alike, scored 0.01-0.03 AUC lower on the next month.
RATE_KEYS: dict[str, tuple[str, ...]] = {
    "route": ("origin", "dest"), "carrier": ("carrier",), "origin_hour": ("origin", "dep_hour"),
    "carrier_origin": ("carrier", "origin"),
}
RATE_PRIOR_WEIGHT = 100.0
# Never read: known only after departure (the label and its ingredients).
LEAKAGE_FIELDS = frozenset({"dep_delay", "arr_delay", "cancelled", "diverted", "arr_utc", "delayed"})
# Numeric values are clipped to these training quantiles: a network extrapolates linearly, so a July heat
# wave after a spring training window (or a sensor glitch at serving time) would otherwise drive it far off.
CLIP_QUANTILES = (0.001, 0.999)
# Besides its standardised value, each non-indicator numeric is given a piecewise-linear encoding over
# training quantile bins: it lets the network fit thresholds (visibility under a mile, any rain) the way a
# tree would, and it is bounded, so it cannot extrapolate.
QUANTILE_BINS = 8
# A fit reads its rows this many at a time, and its numeric statistics from at most FIT_SAMPLE_ROWS of them (a
# fixed-seed sample): half a million rows pin quantiles and moments down as closely as a million do, against all
# rows of ten years (docs/performance.md), and hold a fixed amount of memory. A year of flights is fitted on every
# row.
FIT_CHUNK_ROWS = 1 << 16
FIT_SAMPLE_ROWS = 500_000


def _input_schema() -> dict[str, str]:
    """Name -> Arrow type of every FlightScheduled field read ("?" marks an optional field)."""
    types = field_types(FlightScheduled)
    return {name: types[name] for name in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)}


class FlightPreprocessing(Preprocessing):
    """What a model expects and how to build it from `flights.scheduled` fields; JSON round-trips."""

    VERSION = VERSION

    use_case: Literal["flight_delay"] = "flight_delay"
    vocabularies: dict[str, list[str]]
    numeric_features: list[str]
    fill: list[float]
    lower: list[float]
    upper: list[float]
    center: list[float]
    scale: list[float]
    bin_edges: dict[str, list[float]]
    rate_prior: float
    # name -> smoothed delayed share by the codes of RATE_KEYS[name]: a list, or a list of lists for two parts
    rates: dict[str, list[float] | list[list[float]]]

    @property
    def numeric_width(self) -> int:
        """Columns of the ``numeric`` input: standardised values, then the bin encodings."""
        return len(self.numeric_features) + sum(len(e) - 1 for e in self.bin_edges.values())

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Embedding input size per categorical, reserved indices included."""
        return {name: len(vocab) + VOCAB_OFFSET for name, vocab in self.vocabularies.items()}


@dataclass(frozen=True, eq=False)
class FittedArrays:
    """A FlightPreprocessing's statistics as numpy arrays and its vocabularies as Arrow value sets, built once
    per preprocessing (``of``): a scorer transforms small batches often."""

    fill: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    # One entry per bin-encoding column: the numeric feature it reads, its bin's lower edge and width.
    bin_source: np.ndarray
    # Bin t's value is clip(x * bin_scale - bin_shift, 0, 1) = (x - lower edge) / width, in float32.
    bin_scale: np.ndarray
    bin_shift: np.ndarray
    vocabularies: dict[str, pa.Array]
    rates: dict[str, np.ndarray]

    @classmethod
    def of(cls, fitted: FlightPreprocessing) -> FittedArrays:
        """The arrays of ``fitted``, from a small cache of the preprocessings seen last."""
        hit = _ARRAYS.get(id(fitted))
        if hit is not None and hit[0] is fitted:  # the object itself is held, so its id is not reused
            return hit[1]
        position = {name: i for i, name in enumerate(fitted.numeric_features)}
        edges = [(position[name], np.asarray(e)) for name, e in fitted.bin_edges.items()]
        arrays = cls(
            fill=np.asarray(fitted.fill), lower=np.asarray(fitted.lower), upper=np.asarray(fitted.upper),
            center=np.asarray(fitted.center), scale=np.asarray(fitted.scale),
            bin_source=np.asarray([p for p, e in edges for _ in e[:-1]], dtype=np.intp),
            bin_scale=(1 / np.concatenate([np.diff(e) for _, e in edges])).astype("float32") if edges
            else np.empty(0, "float32"),
            bin_shift=(np.concatenate([e[:-1] / np.diff(e) for _, e in edges])).astype("float32") if edges
            else np.empty(0, "float32"),
            vocabularies={name: pa.array(vocab, pa.string()) for name, vocab in fitted.vocabularies.items()},
            rates={name: np.asarray(table) for name, table in fitted.rates.items()})
        with _ARRAYS_LOCK:  # the scorer's loop and its model watcher (canary) both transform
            _ARRAYS[id(fitted)] = (fitted, arrays)
            while len(_ARRAYS) > ARRAYS_CACHED:
                _ARRAYS.pop(next(iter(_ARRAYS)))
        return arrays


# Preprocessings in use at once: the serving model's and a candidate's in the scorer, a few in a training run.
ARRAYS_CACHED = 8
_ARRAYS: dict[int, tuple[FlightPreprocessing, FittedArrays]] = {}
_ARRAYS_LOCK = threading.Lock()


def input_shapes(fitted: FlightPreprocessing) -> dict[str, tuple[int, ...]]:
    """Name -> shape of one row of each model input ``transform`` yields."""
    return {NUMERIC_INPUT: (fitted.numeric_width,), **{CATEGORICAL_PREFIX + name: () for name in fitted.vocabularies}}


def index_ranges(fitted: FlightPreprocessing) -> dict[str, int]:
    """Name -> number of distinct codes of each categorical input (reserved indices included)."""
    return {CATEGORICAL_PREFIX + name: size for name, size in fitted.vocab_sizes.items()}


def input_table(data: pa.Table | pd.DataFrame | Sequence[Mapping[str, Any]], *, carry: Sequence[str] = ()
                ) -> pa.Table:
    """The fields ``transform`` reads (and the columns named in ``carry``, when present) as an Arrow table; a
    DataFrame's numeric and Arrow-backed columns and a table's columns are not copied. Raises ValueError naming
    the required fields it lacks."""
    wanted = (*INPUT_FIELDS, *carry)
    if isinstance(data, pa.Table):
        names = set(data.column_names)
        table = data if len(names) == len(wanted) and names.issuperset(wanted) else \
            data.select([name for name in wanted if name in names])
    else:
        df = data if isinstance(data, pd.DataFrame) else pd.DataFrame.from_records(list(data))
        if len(df) == 0:  # an empty batch (no records, hence no columns) transforms to empty arrays
            return pa.table({name: pa.nulls(0) for name in INPUT_FIELDS})
        try:
            table = pa.table({name: _arrow(df[name]) for name in wanted if name in df.columns})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"input does not convert to Arrow: {e}") from e
    names = set(table.column_names)
    absent = [name for name in REQUIRED_FIELDS if name not in names]
    if absent:
        raise ValueError(f"input lacks required flights.scheduled fields: {absent}")
    return _gatherable(table)


def _gatherable(table: pa.Table) -> pa.Table:
    """``table`` with each string column of several chunks (a frame read from many snapshot files has one per
    file) dictionary-encoded into one chunk: rows taken at random positions from it, as training's batches are,
    come about eight times faster than from the chunks, for 4 bytes a row. ``_strings`` decodes what is taken."""
    for i, field in enumerate(table.schema):
        column = table.column(i)
        if column.num_chunks > 1 and (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            encoded = pa.chunked_array([chunk.dictionary_encode() for chunk in column.chunks])
            table = table.set_column(i, field.name, encoded.unify_dictionaries().combine_chunks())
    return table


def _arrow(series: pd.Series) -> pa.Array:
    if isinstance(series.dtype, pd.DatetimeTZDtype):  # as UTC instants (pandas' .values drops the zone)
        return pa.array(series.dt.tz_convert(None).to_numpy(), type=pa.timestamp("ns", tz="UTC"))
    return pa.array(series, from_pandas=True)


def _column(table: pa.Table, name: str) -> pa.Array:
    """One field as a single array; an absent optional field is all null."""
    i = table.schema.get_field_index(name)
    if i < 0:
        return pa.nulls(table.num_rows)
    col = table.column(i)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _num(table: pa.Table, name: str) -> np.ndarray:
    """A numeric field as float64, NaN where null; raises ValueError for a non-numeric type."""
    col = _column(table, name)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type)
            or pa.types.is_boolean(col.type)):
        raise ValueError(f"field {name} has type {col.type}, expected a number")
    if col.null_count == 0 and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        # Without an Arrow kernel call: the scorer transforms small batches a hundred times a second.
        return col.to_numpy().astype(np.float64)
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)


def _epoch_seconds(table: pa.Table, name: str) -> np.ndarray:
    """A timestamp field (Arrow timestamp or ISO 8601 string with a zone) as UTC epoch seconds, NaN if null."""
    col = _column(table, name)
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            col = pc.cast(col, pa.timestamp("ns", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"field {name}: {e}") from e
    if not pa.types.is_timestamp(col.type):
        raise ValueError(f"field {name} has type {col.type}, expected a timestamp")
    # Milliseconds since the epoch are exact in float64 (nanoseconds are not).
    if col.type.unit == "ms" and col.null_count == 0:  # the contract's own type, as decoded
        return col.to_numpy().view(np.int64).astype(np.float64) / 1e3
    ms = pc.cast(pc.cast(col, pa.timestamp("ms", tz=col.type.tz), safe=False), pa.int64())
    return pc.cast(ms, pa.float64()).to_numpy(zero_copy_only=False) / 1e3


def _strings(table: pa.Table, name: str) -> pa.Array:
    col = _column(table, name)
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())


def _integer_labels(values: np.ndarray) -> pa.Array:
    """Whole numbers as strings ("5"), null where NaN: categories such as the day of week."""
    known = np.isfinite(values)
    return pc.cast(pa.array(np.where(known, values, 0).astype("int64"), mask=~known), pa.string())


def _day_of_week(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Monday = 0 ... Sunday = 6 of the calendar date; NaN where a part is missing or the date invalid."""
    valid = np.isfinite(year) & np.isfinite(month) & np.isfinite(day) & (month >= 1) & (month <= 12) & (day >= 1)
    y, m, d = (np.where(valid, v, 1).astype("int64") for v in (year, month, day))
    first = (y - 1970).astype("datetime64[Y]").astype("datetime64[M]") + (m - 1)
    date = first.astype("datetime64[D]") + (d - 1)
    valid &= date.astype("datetime64[M]") == first  # 30 February rolls into March: not a date
    # 1970-01-01 was a Thursday (3).
    return np.where(valid, (date.astype("int64") + 3) % 7, np.nan)


def _cyclic(out: dict[str, np.ndarray], name: str, value: np.ndarray, period: float) -> None:
    angle = 2 * np.pi * value / period
    out[f"{name}_sin"] = np.sin(angle)
    out[f"{name}_cos"] = np.cos(angle)


def _raw_features(table: pa.Table) -> tuple[dict[str, np.ndarray], dict[str, pa.Array]]:
    """Unscaled numeric features (float64, NaN where unknown) and categorical strings (null where unknown)."""
    dep_hhmm, arr_hhmm = _num(table, "sched_dep_time"), _num(table, "sched_arr_time")
    # Local (New York) clock time of departure: delays build up through the day as aircraft rotate.
    dep_hour = dep_hhmm // 100 + dep_hhmm % 100 / 60
    arr_hour = arr_hhmm // 100 + arr_hhmm % 100 / 60
    year = _num(table, "year")
    block = (_epoch_seconds(table, "sched_arr_utc") - _epoch_seconds(table, "sched_dep_utc")) / 60
    distance = _num(table, "distance")
    w = {name: _num(table, name) for name in WEATHER_FIELDS}

    num: dict[str, np.ndarray] = {"dep_hour": dep_hour}
    _cyclic(num, "dep_hour", dep_hour, 24)
    _cyclic(num, "arr_hour", arr_hour, 24)
    num["block_minutes"] = block
    with np.errstate(divide="ignore", invalid="ignore"):
        num["log_distance"] = np.log(distance)
        # Scheduled speed: a padded (slow) schedule marks routes the airline expects to be congested.
        num["sched_mph"] = distance / np.where(block > 0, block, np.nan) * 60
    for name in ("temp", "dewp", "humid", "wind_speed", "wind_gust", "pressure", "visib"):
        num[name] = w[name]
    # Dew-point spread near zero means saturated air: fog, low ceilings, thunderstorms.
    num["dewpoint_spread"] = w["temp"] - w["dewp"]
    num["log_precip"] = np.log1p(w["precip"])
    _cyclic(num, "wind_dir", w["wind_dir"], 360)
    plane = {name: _num(table, name) for name in PLANE_NUMERIC_FIELDS}
    num["plane_age"] = year - plane["plane_year"]
    num["plane_seats"] = plane["plane_seats"]
    num["plane_engines"] = plane["plane_engines"]
    # Null (or NaN) in the source is NaN here, so the indicators read the arrays already built.
    source = {**w, **plane}
    for name in INDICATOR_FIELDS:
        num[f"{name}_missing"] = np.isnan(source[name]).astype("float64")

    return num, _categoricals(table, year, dep_hhmm)


def _categoricals(table: pa.Table, year: np.ndarray | None = None, dep_hhmm: np.ndarray | None = None
                  ) -> dict[str, pa.Array]:
    """The categorical strings (null where unknown); ``year`` and ``dep_hhmm`` when already read."""
    year = _num(table, "year") if year is None else year
    dep_hhmm = _num(table, "sched_dep_time") if dep_hhmm is None else dep_hhmm
    cat = {name: _strings(table, name) for name in STRING_FIELDS}
    cat["dow"] = _integer_labels(_day_of_week(year, _num(table, "month"), _num(table, "day")))
    cat["dep_hour"] = _integer_labels(dep_hhmm // 100)
    return cat


def _codes(vocabularies: Mapping[str, pa.Array], cat: dict[str, pa.Array]) -> dict[str, np.ndarray]:
    """Each categorical's vocabulary code (int32): MISSING_INDEX where null, OOV_INDEX where unseen."""
    out = {}
    for name, vocab in vocabularies.items():
        labels = cat[name]
        index = pc.index_in(labels, value_set=vocab)  # null where unseen or null
        if index.null_count == 0:
            codes = index.to_numpy() + VOCAB_OFFSET
        else:
            found = index.to_numpy(zero_copy_only=False)
            codes = np.where(np.isnan(found), OOV_INDEX, found + VOCAB_OFFSET)
            if labels.null_count:
                codes[pc.is_null(labels).to_numpy(zero_copy_only=False)] = MISSING_INDEX
        out[name] = codes.astype("int32")
    return out


def _count_rates(counts: dict[str, tuple[np.ndarray, np.ndarray]], codes: dict[str, np.ndarray],
                 sizes: dict[str, int], y: np.ndarray) -> None:
    """Add to ``counts`` (per RATE_KEYS entry: rows and delayed rows of every code, or code pair) those of the rows
    with these ``codes`` and labels ``y``."""
    for name, parts in RATE_KEYS.items():
        shape = tuple(sizes[part] for part in parts)
        flat = np.ravel_multi_index(tuple(codes[part] for part in parts), shape)
        n, delayed = counts.setdefault(name, (np.zeros(int(np.prod(shape))), np.zeros(int(np.prod(shape)))))
        n += np.bincount(flat, minlength=len(n))
        delayed += np.bincount(flat, weights=y, minlength=len(n))


def _rates(counts: dict[str, tuple[np.ndarray, np.ndarray]], sizes: dict[str, int], prior: float
           ) -> dict[str, list[float] | list[list[float]]]:
    """Per RATE_KEYS entry, the delayed share of every code (pair), smoothed towards ``prior``."""
    return {name: ((delayed + RATE_PRIOR_WEIGHT * prior) / (n + RATE_PRIOR_WEIGHT))
            .reshape(tuple(sizes[part] for part in RATE_KEYS[name])).tolist()
            for name, (n, delayed) in counts.items()}


def _rate_features(num: dict[str, np.ndarray], codes: dict[str, np.ndarray], rates: Mapping[str, np.ndarray]
                   ) -> None:
    """Add ``rate_<name>`` to ``num``: the fitted rate of each row's key."""
    for name, table in rates.items():
        num[f"rate_{name}"] = table[tuple(codes[part] for part in RATE_KEYS[name])]


def labels(table: pa.Table) -> np.ndarray:
    """The label of every row of ``table`` as float64 (1.0 delayed), NaN where unknown; ValueError without it."""
    if LABEL not in table.column_names:
        raise ValueError(f"the rows lack the label {LABEL!r}: training and fitting the flight preprocessing read it")
    return _num(table, LABEL)


def fit(data: pd.DataFrame | pa.Table, rows: np.ndarray | None = None, *, y: np.ndarray | None = None
        ) -> FlightPreprocessing:
    """Learn vocabularies, imputation values, normalisation statistics and delay rates from training rows
    (labelled: the rates read ``delayed``): every row of ``data``, or those at the positions ``rows`` in that
    order. A table (``input_table(..., carry=(LABEL,))``) is read in place; ``y``, the label of every row of
    ``data`` as ``labels`` reads it, spares reading it again when the caller holds it. ``fit_parts`` does the
    fitting, ``FIT_CHUNK_ROWS`` rows at a time. Raises ValueError on zero rows, a missing label, ``y`` of another
    length, or a required field absent.
    """
    rows = np.arange(len(data)) if rows is None else np.asarray(rows)
    if len(rows) == 0:
        raise ValueError("cannot fit the flight preprocessing on zero rows")
    table = input_table(data, carry=(LABEL,))
    if y is not None and len(y) != len(table):
        raise ValueError(f"y holds {len(y)} labels for {len(table)} rows")
    y = (labels(table) if y is None else np.asarray(y, dtype="float64"))[rows]

    def parts() -> Iterator[tuple[pa.Table, np.ndarray]]:
        for start in range(0, len(rows), FIT_CHUNK_ROWS):
            at = np.arange(start, min(start + FIT_CHUNK_ROWS, len(rows)))
            yield table.take(rows[at]), at

    return fit_parts(parts, y)


def fit_parts(parts: Callable[[], Iterable[tuple[pa.Table, np.ndarray]]], y: np.ndarray) -> FlightPreprocessing:
    """``fit`` on the ``len(y)`` rows that each call of ``parts`` yields, in any order and chunking, each part with
    every row's place among them (``0 .. len(y) - 1``; ``y`` holds their labels in that order): the same rows
    give the same fit however they are read (``ml.row_scan.selected``: rows picked from a snapshot's row groups).

    Vocabularies and delay rates count every row; the numeric statistics (fill, clip bounds, centre, scale, bin
    edges) read a fixed-seed sample of ``FIT_SAMPLE_ROWS`` places when there are more, so fitting on years of
    flights holds no float copy of all of them. ``parts`` is called twice. Raises ValueError on zero rows or a
    missing label.
    """
    n = len(y)
    if n == 0:
        raise ValueError("cannot fit the flight preprocessing on zero rows")
    y = np.asarray(y, dtype="float64")
    if np.isnan(y).any():
        raise ValueError(f"fitting the flight preprocessing needs the label {LABEL!r} on every row")
    sample = np.arange(n) if n <= FIT_SAMPLE_ROWS else \
        np.sort(np.random.default_rng(0).choice(n, FIT_SAMPLE_ROWS, replace=False))
    # Each place's slot in the sample, or -1.
    slot = np.full(n, -1, dtype=np.int64)
    slot[sample] = np.arange(len(sample))
    # First pass: category counts, the sample's numeric features, the latest departure.
    counts: dict[str, Counter] = {}
    raw: dict[str, np.ndarray] = {}
    latest = []
    for part, at in parts():
        slots = slot[at]
        kept = slots >= 0
        num, cat = _raw_features(part)
        for name, values in cat.items():
            found = pc.value_counts(values.drop_null())
            counts.setdefault(name, Counter()).update(
                dict(zip(found.field("values").to_pylist(), found.field("counts").to_pylist(), strict=True)))
        for name, values in num.items():
            raw.setdefault(name, np.empty(len(sample)))[slots[kept]] = values[kept]
        latest.append(np.nanmax(_epoch_seconds(part, "sched_dep_utc")))
        del part, num, cat
    vocabularies = {name: sorted(value for value, count in found.items() if count >= MIN_FREQUENCY[name])
                    for name, found in counts.items()}
    # Second pass: each row's codes, counted into the delay rates; the sample's codes kept for its rate features.
    vocab = {name: pa.array(values, pa.string()) for name, values in vocabularies.items()}
    sizes = {name: len(values) + VOCAB_OFFSET for name, values in vocabularies.items()}
    rate_counts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sample_codes = {name: np.empty(len(sample), "int32") for name in vocab}
    for part, at in parts():
        slots = slot[at]
        kept = slots >= 0
        codes = _codes(vocab, _categoricals(part))
        _count_rates(rate_counts, codes, sizes, y[at])
        for name, values in codes.items():
            sample_codes[name][slots[kept]] = values[kept]
    rate_prior = float(y.mean())
    rates = _rates(rate_counts, sizes, rate_prior)
    _rate_features(raw, sample_codes, {name: np.asarray(table) for name, table in rates.items()})
    del sample_codes, rate_counts
    names, fill, lower, upper, center, scale, bin_edges = list(raw), [], [], [], [], [], {}
    for name in names:  # one feature at a time, each column dropped once read: no second copy of the block
        values = pd.Series(raw.pop(name), copy=False)
        f = values.median()
        f = 0.0 if np.isnan(f) else float(f)
        # Indicators keep their full 0/1 range: a rare one (0.1% missing) would otherwise be clipped to 0.
        indicator = name.endswith("_missing")
        lo, hi = (0.0, 1.0) if indicator else values.quantile(list(CLIP_QUANTILES)).fillna(f).tolist()
        filled = values.fillna(f).clip(lo, hi)
        del values
        fill.append(f)
        lower.append(lo)
        upper.append(hi)
        center.append(float(filled.mean()))
        # A constant column (e.g. an indicator never set in training) keeps scale 1 rather than dividing by 0.
        std = float(filled.std(ddof=0))
        scale.append(std if std > 1e-9 else 1.0)
        edges = np.unique(np.quantile(filled, np.linspace(0, 1, QUANTILE_BINS + 1)))
        # Indicators, near-constant columns (two edges or fewer) and the delay rates (already a delay share per
        # key, which the network reads as it is) gain nothing from an encoding.
        if not indicator and not name.startswith("rate_") and len(edges) > 2:
            bin_edges[name] = edges.tolist()
    fitted_through = pd.Timestamp(np.nanmax(latest), unit="s", tz="UTC")
    fitted = FlightPreprocessing(
        version=VERSION, input_schema=_input_schema(), vocabularies=vocabularies, numeric_features=names,
        fill=fill, lower=lower, upper=upper, center=center, scale=scale, bin_edges=bin_edges, rate_prior=rate_prior,
        rates=rates, rows_fitted=n, fitted_through=fitted_through.isoformat(),
    )
    log.info("fitted flight preprocessing v%d %s on %d rows (numeric statistics on %d): %d numeric features, "
             "vocab sizes %s", VERSION, fitted.fingerprint, n, len(sample), len(names), fitted.vocab_sizes)
    return fitted


def transform(fitted: FlightPreprocessing,
              data: pa.Table | pd.DataFrame | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Model inputs for rows of an Arrow table, a DataFrame or a list of records.

    Returns ``{"numeric": float32 (n, k)}`` plus ``{"cat_<name>": int32 (n,)}`` per categorical. Missing
    values (None, NaN, or an absent optional field) are imputed; an unseen category maps to ``OOV_INDEX``.
    Raises ValueError when a required field is absent or has the wrong type.
    """
    num, cat = _raw_features(input_table(data))
    a = FittedArrays.of(fitted)
    codes = _codes(a.vocabularies, cat)
    _rate_features(num, codes, a.rates)
    values = np.column_stack([num[name] for name in fitted.numeric_features]) if len(num["dep_hour"]) \
        else np.empty((0, len(fitted.numeric_features)))
    np.copyto(values, np.broadcast_to(a.fill, values.shape), where=np.isnan(values))
    np.clip(values, a.lower, a.upper, out=values)
    numeric = np.empty((len(values), fitted.numeric_width), dtype="float32")
    k = len(fitted.numeric_features)
    numeric[:, :k] = (values - a.center) / a.scale
    # Bin t reads 0 below its lower edge, 1 above its upper edge, and the fraction in between; in float32 and
    # in place, as this block is most of the numeric input's columns.
    bins = numeric[:, k:]
    np.take(values.astype("float32"), a.bin_source, axis=1, out=bins)
    bins *= a.bin_scale
    bins -= a.bin_shift
    np.clip(bins, 0.0, 1.0, out=bins)
    return {NUMERIC_INPUT: numeric, **{CATEGORICAL_PREFIX + name: c for name, c in codes.items()}}
