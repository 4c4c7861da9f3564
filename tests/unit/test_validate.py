"""Snapshot validation on real flights: the contract-derived suite, domain checks, drift, Data Docs, skip vs fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml import validation as validate
from ml.errors import InsufficientData, ValidationFailed
from ml.settings import LoopSettings
from use_cases.flight_delay import validation as flight_validation
from use_cases.flight_delay.contracts import FlightCompleted
from use_cases.flight_delay.source import load_completed

SUITE = flight_validation.SUITE

REPO = Path(__file__).resolve().parents[2]
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def flights() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(snapshot, reference): 10,000 early-January flights split at random into two halves of 5,000.

    A random split keeps the weather of both halves alike; consecutive slices differ by a week of weather.
    """
    df = load_completed((1, 1), limit=10_000).sample(frac=1.0, random_state=13)
    return df.head(5000).reset_index(drop=True), df.tail(5000).reset_index(drop=True)


@pytest.fixture
def settings(tmp_path: Path) -> LoopSettings:
    return LoopSettings(loop_data_dir=tmp_path, min_training_rows=1000)


def _docs_dir(settings: LoopSettings, run_id: str) -> Path:
    return settings.reports_dir.resolve() / "data_docs" / run_id


@slow
def test_a_validation_logs_its_own_lines_not_great_expectations_start_up(tmp_path):
    """A task's log at INFO (as Airflow keeps it) holds what was validated, not GX's start-up chatter."""
    code = ("import logging, sys; from pathlib import Path; "
            "logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(levelname)s %(name)s %(message)s'); "
            "from ml import validation; from ml.settings import LoopSettings; "
            "from use_cases.flight_delay.validation import SUITE; "
            "from use_cases.flight_delay.source import load_completed; "
            "settings = LoopSettings(loop_data_dir=Path(sys.argv[1]), min_training_rows=1000); "
            "validation.validate_snapshot(load_completed((1, 1), limit=2000), settings, run_id='quiet', suite=SUITE)")
    err = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, check=True, capture_output=True,
                         text=True, timeout=300).stderr
    assert "INFO ml.validation run quiet: validated 2000 rows" in err
    chatter = [line for line in err.splitlines() if line.startswith("INFO great_expectations")]
    assert not chatter, f"{len(chatter)} INFO lines of Great Expectations, e.g. {chatter[:2]}"


def test_importing_the_engine_and_a_suite_does_not_import_great_expectations():
    code = ("import sys, ml.validation, use_cases.flight_delay.validation; "
            "assert 'great_expectations' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_psi_is_zero_for_identical_samples_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    ref = pd.Series(rng.normal(0, 1, 20_000))
    assert validate.psi_numeric(ref, ref) == 0.0
    small, large = (validate.psi_numeric(ref, ref + shift) for shift in (0.1, 1.0))
    assert 0 < small < 0.05 < 0.5 < large
    cats = pd.Series(["AA"] * 50 + ["UA"] * 50)
    assert validate.psi_categorical(cats, cats) == 0.0
    assert validate.psi_categorical(cats, pd.Series(["AA"] * 90 + ["UA"] * 10)) == pytest.approx(
        (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5))


@slow
def test_suite_bounds_come_from_the_contract_field_metadata():
    expectations = {(e.expectation_type, getattr(e, "column", None)): e
                    for e in validate.contract_expectations(FlightCompleted)}
    distance = expectations[("expect_column_values_to_be_between", "distance")]
    assert (distance.min_value, distance.strict_min, distance.max_value, distance.strict_max) == (0, True, 6000, False)
    dep_delay = expectations[("expect_column_values_to_be_between", "dep_delay")]  # Annotated alias, optional
    assert (dep_delay.min_value, dep_delay.max_value) == (-1440, 2880)
    origin = expectations[("expect_column_value_lengths_to_be_between", "origin")]
    assert (origin.min_value, origin.max_value) == (3, 4)
    assert ("expect_column_values_to_not_be_null", "delayed") in expectations
    assert ("expect_column_values_to_not_be_null", "temp") not in expectations  # optional field
    assert expectations[("expect_column_values_to_be_in_set", "schema_version")].value_set == [1]
    assert expectations[("expect_column_values_to_be_of_type", "sched_dep_utc")].type_ == "Timestamp"


@slow
def test_real_flights_pass_and_every_run_writes_docs_and_report(flights, settings):
    snapshot, reference = flights
    report = validate.validate_snapshot(snapshot, settings, suite=SUITE, reference=reference,
                                        run_id="manual__2026-11-24T08:00:00+00:00")
    assert report.success is True
    assert report.rows == 5000 and report.reference_rows == 5000 and report.rejected == 0
    assert [r.describe() for r in report.failures()] == []
    assert set(report.drift) == {*flight_validation.NUMERIC_DRIFT_FEATURES,
                                 *flight_validation.CATEGORICAL_DRIFT_FEATURES}
    assert max(report.drift.values()) < 0.05 and report.warnings == []
    docs = _docs_dir(settings, "manual__2026-11-24T08_00_00_00_00")
    assert report.data_docs_path == str(docs / "index.html")
    assert (docs / "index.html").is_file()
    assert json.loads((docs / validate.REPORT_FILE).read_text()) == report.model_dump(mode="json")
    label = next(r for r in report.results if r.expectation == "expect_column_mean_to_be_between")
    assert label.observed_value == pytest.approx(snapshot["delayed"].mean())


@slow
def test_first_model_has_no_reference_so_no_drift(flights, settings):
    report = validate.validate_snapshot(flights[0], settings, suite=SUITE, run_id="first")
    assert report.success is True
    assert report.drift == {} and report.reference_rows is None and report.warnings == []


def _null_carriers(df):
    df.loc[:99, "carrier"] = None
    return df


def _hot_temps(df):
    df.loc[10:16, "temp"] = 500.0
    return df


def _all_delayed(df):
    df["delayed"] = True
    return df


@slow
@pytest.mark.parametrize(("corrupt", "failed", "message"), [
    (_null_carriers, ("expect_column_values_to_not_be_null", "carrier", 100),
     "expect_column_values_to_not_be_null(carrier) failed on 100 rows (2.00%)"),
    (_hot_temps, ("expect_column_values_to_be_between", "temp", 7),
     "expect_column_values_to_be_between(temp) failed on 7 rows"),
    (_all_delayed, ("expect_column_mean_to_be_between", "delayed", None),
     "expect_column_mean_to_be_between(delayed) failed: observed 1.0"),
])
def test_corrupted_snapshot_fails_naming_the_expectation_and_rows(flights, settings, corrupt, failed, message):
    bad = corrupt(flights[0].copy())
    with pytest.raises(ValidationFailed) as e:
        validate.validate_snapshot(bad, settings, suite=SUITE, run_id="bad")
    report = e.value.report
    assert report.success is False
    assert [(r.expectation, r.column, r.unexpected_count) for r in report.failures()] == [failed]
    assert message in str(e.value)
    assert "failed 1 of" in str(e.value)
    assert (_docs_dir(settings, "bad") / "index.html").is_file()
    assert json.loads((_docs_dir(settings, "bad") / validate.REPORT_FILE).read_text())["success"] is False
    if failed[2] is not None:  # the run's page lists a sample of the unexpected values
        (page,) = (_docs_dir(settings, "bad") / "validations").rglob("*.html")
        assert "Sampled Unexpected Values" in page.read_text()


@slow
def test_rejected_record_rate_above_threshold_fails(flights, settings):
    with pytest.raises(ValidationFailed, match=r"rejected_record_rate_to_be_at_most failed on 100 rows \(1\.96"):
        validate.validate_snapshot(flights[0], settings, suite=SUITE, run_id="rejects", rejected=100)
    report = validate.validate_snapshot(flights[0], settings, suite=SUITE, run_id="few-rejects", rejected=50)
    assert report.rejected_rate == pytest.approx(50 / 5050)


def test_empty_snapshot_is_insufficient_data(settings):
    with pytest.raises(InsufficientData, match="snapshot has 0 rows, fewer than the minimum of 1000") as e:
        validate.validate_snapshot(load_completed((1, 1), limit=0), settings, suite=SUITE, run_id="empty")
    assert e.value.report is None


@slow
def test_below_minimum_rows_is_insufficient_data_with_docs(flights, settings):
    with pytest.raises(InsufficientData, match="snapshot has 999 rows, fewer than the minimum of 1000") as e:
        validate.validate_snapshot(flights[0].head(999), settings, suite=SUITE, run_id="small")
    failed = [(r.expectation, r.observed_value) for r in e.value.report.failures()]
    assert failed == [("expect_table_row_count_to_be_between", 999)]
    assert (_docs_dir(settings, "small") / "index.html").is_file()


@slow
def test_shifted_feature_drifts_more_and_warns_without_failing_by_default(flights, settings):
    snapshot, reference = flights
    shifted = snapshot.assign(distance=snapshot["distance"] + 500)
    base = validate.validate_snapshot(snapshot, settings, suite=SUITE, run_id="same", reference=reference)
    moved = validate.validate_snapshot(shifted, settings, suite=SUITE, run_id="shifted", reference=reference)
    assert moved.success is True
    assert moved.drift["distance"] > 1.0 > 0.05 > base.drift["distance"]
    assert moved.drift["carrier"] == base.drift["carrier"]
    assert f"drift: PSI of distance is {moved.drift['distance']:.3f} (alert above 0.2)" in moved.warnings
    assert not any("distance" in w for w in base.warnings)


@slow
def test_drift_fails_when_configured(flights, settings):
    snapshot, reference = flights
    policy = validate.ValidationPolicy(fail_on_drift=True, psi_alert=0.5)
    shifted = snapshot.assign(distance=snapshot["distance"] + 500)
    with pytest.raises(ValidationFailed, match=r"feature_psi_to_be_at_most\(distance\) failed: observed") as e:
        validate.validate_snapshot(shifted, settings, suite=SUITE, run_id="drift-fail", reference=reference,
                                   policy=policy)
    assert [r.column for r in e.value.report.failures()] == ["distance"]


@slow
def test_a_snapshot_validated_in_batches_gets_the_verdicts_of_one_validated_whole(flights, settings):
    snapshot, reference = flights
    bad = _hot_temps(_null_carriers(snapshot.copy()))
    bad.loc[bad.index[:30], "origin"] = "BOS"  # outside the domain's set
    outcomes = {}
    for run_id, batch_rows in (("whole", len(bad)), ("batched", 1300)):
        with pytest.raises(ValidationFailed) as e:
            validate.validate_snapshot(bad, settings, suite=SUITE, run_id=run_id, reference=reference,
                                       batch_rows=batch_rows)
        outcomes[run_id] = e.value.report
    whole, batched = outcomes["whole"], outcomes["batched"]

    def verdicts(report):
        return [(r.expectation, r.column, r.success, r.unexpected_count, r.observed_value,
                 None if r.unexpected_percent is None else round(r.unexpected_percent, 9)) for r in report.results]

    assert verdicts(batched) == verdicts(whole)
    assert {(r.column, r.unexpected_count) for r in batched.failures()} == {("carrier", 100), ("temp", 7),
                                                                             ("origin", 30)}
    assert batched.drift == whole.drift and batched.rows == whole.rows == 5000
    # Every batch and the whole-snapshot checks are runs in the one Data Docs site.
    runs = list((_docs_dir(settings, "batched") / "validations").rglob("*.html"))
    assert len(runs) == 5  # four batches of at most 1,300 rows, and the mean and row count on all rows


def test_a_sample_keeps_the_frame_when_small_and_is_reproducible():
    df = pd.DataFrame({"x": range(100)})
    assert validate.sample(df, 100, seed=1) is df and validate.sample(None, 5, seed=1) is None
    a, b = validate.sample(df, 10, seed=1), validate.sample(df, 10, seed=1)
    assert a.equals(b) and len(a) == 10 and a.index.is_monotonic_increasing


def test_nullable_integers_without_nulls_reach_the_engine_as_numpy_integers_and_the_frame_is_untouched():
    df = pd.DataFrame({"a": pd.array([1, 2, 3], dtype="Int64"), "b": pd.array([1, None, 3], dtype="Int64"),
                       "c": pd.array([7, 8, 9], dtype="UInt8"), "d": [0.5, 1.5, 2.5], "e": ["x", "y", "z"]})
    plain = validate._plain_integers(df)
    assert plain["a"].dtype == np.dtype("int64") and plain["c"].dtype == np.dtype("uint8")
    assert plain["b"].dtype == pd.Int64Dtype() and plain["d"].dtype == df["d"].dtype and plain["e"].equals(df["e"])
    assert plain["a"].tolist() == [1, 2, 3] and df["a"].dtype == pd.Int64Dtype()  # the caller's frame as it was
    floats = df[["d", "e"]]
    assert validate._plain_integers(floats) is floats


@slow
def test_nullable_integer_columns_get_the_verdicts_of_numpy_integer_columns(flights, settings):
    """Snapshots are read with nullable integers (``Int64``); the engine is handed those without nulls as numpy
    integers, which it checks vectorised: the same verdicts, a range violation in either kind of column found."""
    bad = flights[0].copy()
    bad.loc[:4, "month"] = 13  # a column without nulls
    bad.loc[bad.index[bad["plane_year"].notna()][:3], "plane_year"] = 1800  # a column with nulls
    nullable = bad.astype({name: "Int64" for name in bad.columns if bad[name].dtype == np.dtype("int64")})
    reports = {}
    for run_id, frame in (("numpy", bad), ("nullable", nullable)):
        with pytest.raises(ValidationFailed) as e:
            validate.validate_snapshot(frame, settings, suite=SUITE, run_id=run_id)
        reports[run_id] = e.value.report

    def verdicts(report):
        return [(r.expectation, r.column, r.success, r.unexpected_count, r.observed_value) for r in report.results]

    assert verdicts(reports["nullable"]) == verdicts(reports["numpy"])
    assert {(r.column, r.unexpected_count) for r in reports["nullable"].failures()} == {("month", 5),
                                                                                         ("plane_year", 3)}
