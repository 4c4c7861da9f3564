"""The sensor use case without Kafka: generator, preprocessing, threshold choice, its gate, training and
settings."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from ml import use_cases
from ml.airflow_tasks import settings_for_run
from ml.decode import ContractDecoder
from ml.gate import decide
from ml.keras_models import from_bytes, to_bytes
from ml.settings import LoopSettings
from use_cases.sensor_anomaly import evaluation as evaluate, model as autoencoder, preprocessing as features
from use_cases.sensor_anomaly.contracts import ANOMALY_KINDS, CHANNELS, SensorReading
from use_cases.sensor_anomaly.generator import START, generate, stream
from use_cases.sensor_anomaly.use_case import SensorAnomaly

SETTINGS = LoopSettings(use_case="sensor_anomaly")


@pytest.fixture(scope="module")
def readings() -> pd.DataFrame:
    return generate(4, 1500, seed=3, anomaly_rate=0.05)


# ---------------------------------------------------------------- generator


def test_the_same_seed_gives_the_same_readings_and_another_seed_others(readings):
    pd.testing.assert_frame_equal(generate(4, 1500, seed=3, anomaly_rate=0.05), readings)
    other = generate(4, 1500, seed=4, anomaly_rate=0.05)
    assert not np.allclose(other["temperature"], readings["temperature"])


def test_every_kind_of_anomaly_is_injected_and_labelled(readings):
    kinds = readings["anomaly_kind"].value_counts()
    assert set(kinds.index) == {"none", *ANOMALY_KINDS}
    assert (readings["is_anomaly"] == (readings["anomaly_kind"] != "none")).all()
    assert 0.01 < readings["is_anomaly"].mean() < 0.1
    # Labelled episodes differ from normal behaviour: e.g. a stuck channel repeats one value.
    stuck = readings[readings["anomaly_kind"] == "stuck"].groupby("machine_id")
    assert any((g[c].nunique() == 1) for _, g in stuck for c in ("pressure", "current", "rpm"))


def test_readings_are_in_event_time_order_at_a_fixed_cadence_and_satisfy_the_contract(readings):
    assert readings["ts"].is_monotonic_increasing
    one = readings[readings["machine_id"] == "m001"]
    assert (one["ts"].diff().dropna() == timedelta(seconds=60)).all() and one["ts"].iloc[0] == START
    events = stream(LoopSettings(), readings)
    assert events.keys[:4] == ["m000", "m001", "m002", "m003"]
    decoded = ContractDecoder(SensorReading).decode(events.values)
    assert decoded.table.num_rows == len(readings) and decoded.rejected == []


# ---------------------------------------------------------------- features


def test_transform_standardises_each_machine_with_its_own_normal_statistics(readings):
    normal = readings[~readings["is_anomaly"]]
    fitted = features.fit(normal)
    x = features.transform(fitted, normal)
    assert x.dtype == np.float32 and x.shape == (len(normal), len(CHANNELS))
    for machine in ("m000", "m003"):
        rows = (normal["machine_id"] == machine).to_numpy()
        np.testing.assert_allclose(x[rows].mean(axis=0), 0, atol=1e-4)
        np.testing.assert_allclose(x[rows].std(axis=0), 1, atol=1e-4)
    # Records (the scorer's input) and frame rows transform identically; an unseen machine uses all machines.
    records = normal.iloc[:3].to_dict("records")
    np.testing.assert_array_equal(features.transform(fitted, records), x[:3])
    unseen = features.transform(fitted, [{**records[0], "machine_id": "new"}])
    expected = (normal.iloc[0][list(CHANNELS)].to_numpy(float) - fitted.center) / np.asarray(fitted.scale)
    np.testing.assert_allclose(unseen[0], expected, rtol=1e-5)
    assert features.SensorPreprocessing.from_dict(fitted.to_dict()) == fitted
    with pytest.raises(ValueError, match="rpm"):
        features.transform(fitted, [{k: v for k, v in records[0].items() if k != "rpm"}])


def test_anomaly_score_is_the_mean_squared_error_per_reading():
    x = np.array([[0.0, 0.0], [1.0, 2.0]], dtype="float32")
    recon = np.array([[0.0, 0.0], [0.0, 0.0]], dtype="float32")
    np.testing.assert_allclose(features.anomaly_score(recon, x), [0.0, 2.5])


# ---------------------------------------------------------------- threshold and gate


def test_threshold_maximises_f1_between_two_scores_and_falls_back_to_a_quantile():
    y = np.array([0, 0, 0, 1, 0, 1, 1], dtype=bool)
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.8, 0.95])
    threshold, method = evaluate.choose_threshold(y, scores)
    assert method == "max_f1" and threshold == pytest.approx((0.8 + 0.5) / 2)
    assert evaluate.metrics(y, scores, threshold)["f1"] == 1.0
    threshold, method = evaluate.choose_threshold(np.zeros(101, dtype=bool), np.arange(101.0))
    assert method == "quantile" and threshold == pytest.approx(99.0)


def m(precision: float, recall: float) -> dict[str, float]:
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / (precision + recall)}


@pytest.mark.parametrize("challenger, champion, verdict", [
    (m(0.9, 0.8), m(0.85, 0.8), "promote"),   # better
    (m(0.9, 0.78), m(0.9, 0.8), "promote"),   # F1 worse by less than the margin
    (m(0.9, 0.7), m(0.9, 0.8), "reject"),     # F1 worse by more than the margin
    (m(0.4, 0.9), None, "reject"),            # below the precision floor
    (m(0.9, 0.45), m(0.9, 0.3), "reject"),    # beats the champion but below the recall floor
    (m(0.6, 0.6), None, "promote"),           # no champion: floors only
])
def test_its_gate_compares_f1_and_enforces_the_precision_and_recall_floors(challenger, champion, verdict):
    uc = SensorAnomaly()
    record = decide(uc.name, uc.gate_criteria(), challenger, champion)
    assert record.verdict == verdict and record.use_case == "sensor_anomaly"
    assert {(c.metric, c.floor, c.margin) for c in record.criteria} == {
        ("precision", 0.5, None), ("recall", 0.5, None), ("f1", None, 0.02)}


def test_its_gate_criteria_follow_the_use_cases_own_variables(monkeypatch):
    monkeypatch.setenv("SENSOR_ANOMALY_GATE_FLOORS", '{"precision": 0.8}')
    monkeypatch.setenv("SENSOR_ANOMALY_GATE_MARGINS", '{"f1": 0.1}')
    uc = use_cases.get("sensor_anomaly")
    assert {c.metric: (c.floor, c.margin) for c in uc.gate_criteria()} == {
        "precision": (0.8, None), "recall": (0.5, None), "f1": (None, 0.1)}
    assert {c.metric: c.margin for c in uc.gate_criteria({"f1": 0.3})}["f1"] == 0.3  # a run's margin wins
    monkeypatch.setenv("SENSOR_ANOMALY_GATE_FLOORS", '{"roc_auc": 0.8}')
    with pytest.raises(ValueError, match="does not judge"):
        use_cases.get("sensor_anomaly").gate_criteria()


def test_force_promotion_skips_the_comparison_but_not_the_floors():
    criteria = SensorAnomaly().gate_criteria()
    assert decide("sensor_anomaly", criteria, m(0.6, 0.6), m(0.95, 0.95), force_reason="new channels").promote
    assert not decide("sensor_anomaly", criteria, m(0.3, 0.6), m(0.95, 0.95), force_reason="new channels").promote


# ---------------------------------------------------------------- training


@pytest.mark.slow
def test_autoencoder_learns_normal_readings_and_its_threshold_travels_in_the_preprocessing():
    settings = LoopSettings(use_case="sensor_anomaly", epochs=15, min_training_rows=500)
    # Frequent episodes, so the validation part (the latest 20%) holds anomalies to choose the threshold on.
    train_rows = generate(4, 2000, seed=3, anomaly_rate=0.1)
    later = generate(4, 500, seed=5, anomaly_rate=0.05, start=START + timedelta(minutes=2000))
    result = autoencoder.train(train_rows, settings)
    assert result.preprocessing.threshold > 0 and result.preprocessing.threshold_method == "max_f1"
    assert result.preprocessing.rows_fitted < (~train_rows["is_anomaly"]).sum()  # normal rows of the earlier part
    scores = evaluate.score(result.model, result.preprocessing, later)
    assert scores.shape == (len(later),)
    quality = evaluate.metrics(later["is_anomaly"].to_numpy(), scores, result.preprocessing.threshold)
    assert quality["roc_auc"] > 0.7 and quality["precision"] > 0.5 and quality["recall"] > 0.3
    # The .keras bytes load back with safe_mode and reconstruct identically.
    restored = from_bytes(to_bytes(result.model))
    x = features.transform(result.preprocessing, later)
    np.testing.assert_allclose(restored.predict_on_batch(x), result.model.predict_on_batch(x), atol=1e-6)
    # The use case judges it at its own threshold.
    judged = SensorAnomaly().evaluate(result.model, result.preprocessing, later)
    assert judged["threshold"] == result.preprocessing.threshold and judged["rows"] == len(later)


# ---------------------------------------------------------------- settings and registry


def test_model_name_and_experiment_follow_the_use_case_unless_set():
    assert (SETTINGS.model_name, SETTINGS.mlflow_experiment) == ("sensor_anomaly", "sensor-anomaly")
    assert LoopSettings(use_case="sensor_anomaly", model_name="pumps").model_name == "pumps"
    flights = LoopSettings(epochs=3, use_case="flight_delay")
    switched = settings_for_run({}, base=flights, use_case="sensor_anomaly")
    assert (switched.use_case, switched.model_name, switched.epochs) == ("sensor_anomaly", "sensor_anomaly", 3)
    assert settings_for_run({}, base=flights, use_case="flight_delay") == flights


def test_the_use_case_names_its_topics_and_contracts():
    uc = use_cases.get("sensor_anomaly")
    assert uc.topics.resolved(SETTINGS) == uc.topics  # no prefix, no renames
    assert (uc.topics.labels, uc.topics.predictions, uc.topics.dlq) == (
        "sensors.readings", "sensors.scores", "sensors.dlq")
    assert uc.topics.shadow == "sensors.scores.shadow"
    assert uc.topics.distinct() == ["sensors.readings", "sensors.scores", "sensors.scores.shadow", "sensors.dlq"]
    assert (uc.input_contract, uc.label_contract) == (SensorReading, SensorReading)
    with pytest.raises(ValueError, match="registered"):
        use_cases.get("churn")
