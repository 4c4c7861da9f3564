"""The shared preprocessing path: deterministic, leak-free, tolerant of missing optional fields."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml import contracts, features
from ml.flights_source import load_completed


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    return load_completed((1, 1), limit=3000)


@pytest.fixture(scope="module")
def contract(flights: pd.DataFrame) -> features.FeatureContract:
    return features.fit(flights)


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as the scorer sees them: JSON-decoded flights.scheduled events (ISO timestamps, None)."""
    scheduled = list(contracts.FlightScheduled.model_fields)
    return [json.loads(contracts.FlightScheduled.model_validate(
        {k: (None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}
    ).model_dump_json()) for row in df[scheduled].to_dict("records")]


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_fit_and_transform_are_deterministic(flights, contract):
    assert features.fit(flights) == contract
    _assert_same(features.transform(contract, flights), features.transform(contract, flights))


def test_output_shapes_and_dtypes(flights, contract):
    x = features.transform(contract, flights)
    assert x[features.NUMERIC_INPUT].shape == (len(flights), contract.numeric_width)
    assert x[features.NUMERIC_INPUT].dtype == np.float32
    assert np.isfinite(x[features.NUMERIC_INPUT]).all()
    for name, size in contract.vocab_sizes.items():
        codes = x[features.CATEGORICAL_PREFIX + name]
        assert codes.shape == (len(flights),) and codes.dtype == np.int32
        assert codes.min() >= 0 and codes.max() < size


def test_dataframe_and_records_give_the_same_output(flights, contract):
    rows = flights.head(200)
    _assert_same(features.transform(contract, rows), features.transform(contract, _records(rows)))


def test_unseen_category_maps_to_oov_and_none_to_missing(flights, contract):
    rows = flights.head(3).copy()
    rows["dest"] = ["ZZZ", None, rows["dest"].iloc[2]]
    codes = features.transform(contract, rows)["cat_dest"]
    assert codes[0] == features.OOV_INDEX
    assert codes[1] == features.MISSING_INDEX
    assert codes[2] >= features.VOCAB_OFFSET


def test_missing_optional_values_and_absent_columns_are_imputed(flights, contract):
    rows = flights.head(50)
    optional = list(features.OPTIONAL_FIELDS)
    as_none = rows.copy()
    as_none[optional] = None
    absent = rows.drop(columns=optional)
    from_none = features.transform(contract, as_none)
    _assert_same(from_none, features.transform(contract, absent))
    _assert_same(from_none, features.transform(contract, [{k: v for k, v in r.items() if k not in optional}
                                                          for r in _records(rows)]))
    assert np.isfinite(from_none[features.NUMERIC_INPUT]).all()
    missing = [i for i, n in enumerate(contract.numeric_features) if n == "temp_missing"]
    assert (from_none[features.NUMERIC_INPUT][:, missing] > 0).all()


def test_absent_required_field_is_named(flights, contract):
    with pytest.raises(ValueError, match="carrier"):
        features.transform(contract, flights.head(5).drop(columns=["carrier"]))


def test_contract_round_trips_through_json(flights, contract):
    restored = features.FeatureContract.from_dict(json.loads(json.dumps(contract.to_dict())))
    assert restored == contract and restored.fingerprint == contract.fingerprint
    _assert_same(features.transform(contract, flights.head(100)), features.transform(restored, flights.head(100)))


def test_contract_of_another_version_is_refused(contract):
    with pytest.raises(ValueError, match="v999"):
        features.FeatureContract.from_dict(contract.to_dict() | {"contract_version": 999})


def test_no_post_departure_field_is_read(flights, contract):
    read = set(contract.input_schema)
    assert read <= set(contracts.FlightScheduled.model_fields)
    assert not read & features.LEAKAGE_FIELDS
    # Scrambling every post-departure column changes nothing.
    scrambled = flights.head(300).copy()
    scrambled["dep_delay"] = 999.0
    scrambled["arr_delay"] = -999.0
    scrambled[["cancelled", "diverted", "delayed"]] = True
    scrambled["arr_utc"] = scrambled["arr_utc"] + pd.Timedelta(hours=5)
    _assert_same(features.transform(contract, flights.head(300)), features.transform(contract, scrambled))


def test_empty_batch_gives_empty_arrays(contract):
    x = features.transform(contract, [])
    assert x[features.NUMERIC_INPUT].shape == (0, contract.numeric_width)
    assert all(len(v) == 0 for v in x.values())


def test_a_chunked_table_and_a_rebuilt_contract_give_the_same_output(flights, contract):
    table = pa.Table.from_pandas(flights.iloc[:300], preserve_index=False)
    chunked = pa.concat_tables([table.slice(0, 100), table.slice(100)])
    rebuilt = features.FeatureContract.from_dict(json.loads(json.dumps(contract.to_dict())))
    _assert_same(features.transform(contract, table), features.transform(rebuilt, chunked))
    # The arrays built for a contract are kept for it, and leave it comparable with an equal contract.
    assert features.ContractArrays.of(contract) is features.ContractArrays.of(contract)
    assert contract == rebuilt


def test_a_row_transforms_alike_beside_nulls_and_unseen_labels_or_without(flights, contract):
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
    x, y = features.transform(contract, clean), features.transform(contract, mixed)
    _assert_same(x, {key: value[:40] for key, value in y.items()})
    assert (y["cat_dest"][40:] == features.OOV_INDEX).all() and (y["cat_carrier"][40:] == features.MISSING_INDEX).all()
