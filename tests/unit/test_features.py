"""The flight preprocessing path: deterministic, leak-free, tolerant of missing optional fields."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml.row_scan import selected, table_scan
from use_cases.flight_delay import preprocessing as features
from use_cases.flight_delay.contracts import FlightScheduled
from use_cases.flight_delay.source import load_completed


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    return load_completed((1, 1), limit=3000)


@pytest.fixture(scope="module")
def fitted(flights: pd.DataFrame) -> features.FlightPreprocessing:
    return features.fit(flights)


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as the scorer sees them: JSON-decoded flights.scheduled events (ISO timestamps, None)."""
    scheduled = list(FlightScheduled.model_fields)
    return [json.loads(FlightScheduled.model_validate(
        {k: (None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}
    ).model_dump_json()) for row in df[scheduled].to_dict("records")]


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_fit_and_transform_are_deterministic(flights, fitted):
    assert features.fit(flights) == fitted
    _assert_same(features.transform(fitted, flights), features.transform(fitted, flights))


def test_output_shapes_and_dtypes(flights, fitted):
    x = features.transform(fitted, flights)
    assert x[features.NUMERIC_INPUT].shape == (len(flights), fitted.numeric_width)
    assert x[features.NUMERIC_INPUT].dtype == np.float32
    assert np.isfinite(x[features.NUMERIC_INPUT]).all()
    for name, size in fitted.vocab_sizes.items():
        codes = x[features.CATEGORICAL_PREFIX + name]
        assert codes.shape == (len(flights),) and codes.dtype == np.int32
        assert codes.min() >= 0 and codes.max() < size


def test_dataframe_and_records_give_the_same_output(flights, fitted):
    rows = flights.head(200)
    _assert_same(features.transform(fitted, rows), features.transform(fitted, _records(rows)))


def test_unseen_category_maps_to_oov_and_none_to_missing(flights, fitted):
    rows = flights.head(3).copy()
    rows["dest"] = ["ZZZ", None, rows["dest"].iloc[2]]
    codes = features.transform(fitted, rows)["cat_dest"]
    assert codes[0] == features.OOV_INDEX
    assert codes[1] == features.MISSING_INDEX
    assert codes[2] >= features.VOCAB_OFFSET


def test_missing_optional_values_and_absent_columns_are_imputed(flights, fitted):
    rows = flights.head(50)
    optional = list(features.OPTIONAL_FIELDS)
    as_none = rows.copy()
    as_none[optional] = None
    absent = rows.drop(columns=optional)
    from_none = features.transform(fitted, as_none)
    _assert_same(from_none, features.transform(fitted, absent))
    _assert_same(from_none, features.transform(fitted, [{k: v for k, v in r.items() if k not in optional}
                                                          for r in _records(rows)]))
    assert np.isfinite(from_none[features.NUMERIC_INPUT]).all()
    missing = [i for i, n in enumerate(fitted.numeric_features) if n == "temp_missing"]
    assert (from_none[features.NUMERIC_INPUT][:, missing] > 0).all()


def test_absent_required_field_is_named(flights, fitted):
    with pytest.raises(ValueError, match="carrier"):
        features.transform(fitted, flights.head(5).drop(columns=["carrier"]))


def test_the_fitted_preprocessing_round_trips_through_json(flights, fitted):
    restored = features.FlightPreprocessing.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert restored == fitted and restored.fingerprint == fitted.fingerprint
    _assert_same(features.transform(fitted, flights.head(100)), features.transform(restored, flights.head(100)))


def test_a_preprocessing_of_another_version_or_use_case_is_refused(fitted):
    with pytest.raises(ValueError, match="v999"):
        features.FlightPreprocessing.from_dict(fitted.to_dict() | {"version": 999})
    with pytest.raises(ValueError, match="use_case"):
        features.FlightPreprocessing.from_dict(fitted.to_dict() | {"use_case": "sensor_anomaly"})


def test_no_post_departure_field_is_read(flights, fitted):
    read = set(fitted.input_schema)
    assert read <= set(FlightScheduled.model_fields)
    assert not read & features.LEAKAGE_FIELDS
    # Scrambling every post-departure column changes nothing.
    scrambled = flights.head(300).copy()
    scrambled["dep_delay"] = 999.0
    scrambled["arr_delay"] = -999.0
    scrambled[["cancelled", "diverted", "delayed"]] = True
    scrambled["arr_utc"] = scrambled["arr_utc"] + pd.Timedelta(hours=5)
    _assert_same(features.transform(fitted, flights.head(300)), features.transform(fitted, scrambled))


def test_delay_rates_are_the_training_rows_smoothed_share_and_the_prior_elsewhere(flights, fitted):
    y = flights["delayed"].to_numpy(dtype=float)
    assert fitted.rate_prior == pytest.approx(y.mean())
    origin, dest = flights["origin"], flights["dest"]
    busiest = (origin + " " + dest).value_counts().index[0].split(" ")
    seen = y[((origin == busiest[0]) & (dest == busiest[1])).to_numpy()]
    w = features.RATE_PRIOR_WEIGHT
    o = fitted.vocabularies["origin"].index(busiest[0]) + features.VOCAB_OFFSET
    d = fitted.vocabularies["dest"].index(busiest[1]) + features.VOCAB_OFFSET
    table = fitted.rates["route"]
    assert table[o][d] == pytest.approx((seen.sum() + w * y.mean()) / (len(seen) + w))
    # A key no training flight had (a dest never seen, or unknown) gets the prior.
    assert table[o][features.MISSING_INDEX] == pytest.approx(y.mean())
    rows = flights[(origin == busiest[0]) & (dest == busiest[1])].head(3).copy()
    rows["dest"] = [busiest[1], "ZZZ", None]  # seen, unseen (pooled with rare ones), unknown
    x = features.transform(fitted, rows)[features.NUMERIC_INPUT]
    i = fitted.numeric_features.index("rate_route")
    raw = x[:, i] * fitted.scale[i] + fitted.center[i]
    expected = np.clip([table[o][d], table[o][features.OOV_INDEX], fitted.rate_prior], fitted.lower[i],
                       fitted.upper[i])
    np.testing.assert_allclose(raw, expected, rtol=1e-5)


def test_fitting_needs_a_label_on_every_row_and_scoring_none(flights, fitted):
    with pytest.raises(ValueError, match="label 'delayed'"):
        features.fit(flights.drop(columns=["delayed"]))
    unlabelled = flights.head(5).astype({"delayed": "object"})
    unlabelled.loc[unlabelled.index[0], "delayed"] = None
    with pytest.raises(ValueError, match="label 'delayed'"):
        features.fit(unlabelled)
    # A scheduled flight has no label: scoring reads none (test_no_post_departure_field_is_read).
    assert "delayed" not in fitted.input_schema


def test_labels_handed_to_fit_give_the_same_preprocessing_and_must_match_the_rows(flights, fitted):
    table = features.input_table(flights, carry=("delayed",))
    y = features.labels(table)
    rows = np.arange(len(flights))[::-2]  # positions in another order: the labels follow them
    assert features.fit(table, rows, y=y).fingerprint == features.fit(table, rows).fingerprint
    assert features.fit(flights, y=y).fingerprint == fitted.fingerprint
    with pytest.raises(ValueError, match=f"y holds {len(y) - 1} labels for {len(y)} rows"):
        features.fit(table, y=y[1:])
    nan = y.copy()
    nan[rows[0]] = np.nan
    with pytest.raises(ValueError, match="label 'delayed' on every row"):
        features.fit(table, rows, y=nan)


def test_empty_batch_gives_empty_arrays(fitted):
    x = features.transform(fitted, [])
    assert x[features.NUMERIC_INPUT].shape == (0, fitted.numeric_width)
    assert all(len(v) == 0 for v in x.values())


def test_a_chunked_table_and_a_rebuilt_preprocessing_give_the_same_output(flights, fitted):
    table = pa.Table.from_pandas(flights.iloc[:300], preserve_index=False)
    chunked = pa.concat_tables([table.slice(0, 100), table.slice(100)])
    rebuilt = features.FlightPreprocessing.from_dict(json.loads(json.dumps(fitted.to_dict())))
    _assert_same(features.transform(fitted, table), features.transform(rebuilt, chunked))
    # The arrays built for a preprocessing are kept for it, and leave it comparable with an equal one.
    assert features.FittedArrays.of(fitted) is features.FittedArrays.of(fitted)
    assert fitted == rebuilt


def test_a_row_transforms_alike_beside_nulls_and_unseen_labels_or_without(flights, fitted):
    """Columns with nulls, and categoricals with unseen labels, take other code paths than clean ones: the
    clean rows must come out the same either way."""
    known = flights.dropna(subset=[*features.WEATHER_FIELDS[:2], *features.PLANE_NUMERIC_FIELDS]).iloc[:40]
    clean = pa.Table.from_pandas(known, preserve_index=False)
    clean = clean.drop_columns([n for n in clean.column_names if clean.column(n).null_count])
    clean = clean.cast(pa.schema([pa.field(f.name, pa.timestamp("ms", tz="UTC")) if pa.types.is_timestamp(f.type)
                                  else f for f in clean.schema]))  # the decoded contract's unit
    messy = [dict(r, temp=None, plane_seats=None, sched_arr_utc=None, dest="ZZZ", carrier=None)
             for r in clean.slice(0, 5).to_pylist()]
    mixed = pa.concat_tables([clean, pa.Table.from_pylist(messy, schema=clean.schema)]).combine_chunks()
    assert {"temp", "plane_seats", "sched_arr_utc"} <= set(mixed.column_names)
    x, y = features.transform(fitted, clean), features.transform(fitted, mixed)
    _assert_same(x, {key: value[:40] for key, value in y.items()})
    assert (y["cat_dest"][40:] == features.OOV_INDEX).all() and (y["cat_carrier"][40:] == features.MISSING_INDEX).all()


def test_fitting_on_rows_by_position_is_fitting_on_those_rows_in_that_order(flights, monkeypatch):
    rows = np.random.default_rng(1).permutation(len(flights))[:2000]
    expected = features.fit(flights.iloc[rows])
    monkeypatch.setattr(features, "FIT_CHUNK_ROWS", 700)  # read in several chunks, the last one partial
    assert features.fit(flights, rows) == expected
    assert features.fit(flights, rows).rows_fitted == 2000


def test_a_fit_from_parts_is_the_fit_on_those_rows_whatever_their_order_and_chunking(flights, monkeypatch):
    monkeypatch.setattr(features, "FIT_SAMPLE_ROWS", 1000)  # the sample's slots, not only every row
    rows = np.random.default_rng(2).permutation(len(flights))[:2500]
    expected = features.fit(flights, rows)
    table = features.input_table(flights, carry=(features.LABEL,))
    y = features.labels(table)[rows]
    # The rows read in chunks of the table's own order, as a snapshot's row groups are, each with its place.
    where = np.full(len(flights), -1)
    where[rows] = np.arange(len(rows))
    assert features.fit_parts(lambda: selected(table_scan(table, 333), where), y) == expected
    # And in any order: the chunks reversed.
    parts = list(selected(table_scan(table, 333), where))[::-1]
    assert features.fit_parts(lambda: iter(parts), y) == expected
    with pytest.raises(ValueError, match="zero rows"):
        features.fit_parts(lambda: iter([]), np.empty(0))


def test_a_sampled_fit_counts_every_row_and_reads_numeric_statistics_from_the_sample(flights, fitted, monkeypatch):
    monkeypatch.setattr(features, "FIT_CHUNK_ROWS", 700)
    monkeypatch.setattr(features, "FIT_SAMPLE_ROWS", 1000)
    sampled = features.fit(flights)
    assert sampled == features.fit(flights)  # a fixed-seed sample
    # Vocabularies, delay rates and the row count come from every row ...
    assert (sampled.vocabularies, sampled.rates, sampled.rate_prior) == \
        (fitted.vocabularies, fitted.rates, fitted.rate_prior)
    assert (sampled.rows_fitted, sampled.fitted_through) == (fitted.rows_fitted, fitted.fitted_through)
    # ... the numeric statistics from a third of them: close to, not equal to, those of all rows.
    assert sampled.numeric_features == fitted.numeric_features and sampled.center != fitted.center
    i = fitted.numeric_features.index("temp")
    assert abs(sampled.center[i] - fitted.center[i]) < 0.2 * fitted.scale[i]
    assert abs(sampled.scale[i] / fitted.scale[i] - 1) < 0.2
    x = features.transform(sampled, flights)
    assert x[features.NUMERIC_INPUT].shape == (len(flights), sampled.numeric_width)
    assert np.isfinite(x[features.NUMERIC_INPUT]).all()


def test_a_table_of_many_chunks_is_taken_from_in_one_chunk_and_transforms_the_same(flights, fitted):
    # As a frame read from many snapshot files: each string column one chunk per file.
    one = features.input_table(flights)
    many = pa.Table.from_batches([b for start in range(0, len(flights), 700)
                                  for b in one.slice(start, 700).to_batches()])
    assert many.column("carrier").num_chunks > 1
    gatherable = features.input_table(many)
    assert all(gatherable.column(name).num_chunks == 1 for name in ("carrier", "origin", "dest", "plane_type"))
    rows = np.random.default_rng(1).permutation(len(flights))[:3000]
    _assert_same(features.transform(fitted, gatherable.take(rows)), features.transform(fitted, one.take(rows)))
