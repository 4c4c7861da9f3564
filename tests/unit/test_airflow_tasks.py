"""Run requests (the DAG's Params) and the Airflow connection -> LoopSettings mapping, without Airflow."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ml.airflow_tasks import RunRequest, settings_for_run
from ml.settings import LoopSettings


def test_force_promote_needs_a_reason_and_a_reason_needs_force_promote():
    with pytest.raises(ValidationError, match="force_promote needs a force_reason"):
        RunRequest(force_promote=True)
    with pytest.raises(ValidationError, match="force_promote needs a force_reason"):
        RunRequest(force_promote=True, force_reason="   ")
    with pytest.raises(ValidationError, match="force_promote is false"):
        RunRequest(force_reason="preprocessing v2")
    assert RunRequest(force_promote=True, force_reason=" preprocessing v2 ").forced_reason() == "preprocessing v2"
    assert RunRequest().forced_reason() is None


def test_the_connection_the_variable_and_the_request_override_the_environment_defaults():
    base = LoopSettings(epochs=20, snapshot_window=12, use_case="flight_delay")
    s = settings_for_run({"epochs": 5, "snapshot_window": None, "unknown": 1},
                         kafka_extra={"bootstrap.servers": "broker:29092", "group.id": "g"},
                         mlflow_tracking_uri="http://mlflow:5000", base=base)
    assert (s.kafka_bootstrap_servers, s.mlflow_tracking_uri) == ("broker:29092", "http://mlflow:5000")
    assert (s.epochs, s.snapshot_window) == (5, 12)
    assert settings_for_run({}, base=base) == base  # no connection, no Variable: the environment's settings


def test_the_signing_connection_gives_the_private_key_and_its_key_id_over_the_environment(tmp_path):
    from ml.signing import Signer

    signer = Signer.generate()
    base = LoopSettings(use_case="flight_delay", model_signing_key_file=tmp_path / "absent.key",
                        model_signing_key_id="env-key")
    s = settings_for_run({}, base=base, signing_pem=signer.private_pem().decode(), signing_key_id="conn-key")
    assert (s.signer().key_id, s.signer().public_pem()) == ("conn-key", signer.public_pem())
    derived = settings_for_run({}, base=base, signing_pem=signer.private_pem().decode())
    assert derived.signer().key_id == signer.key_id  # the connection's key never takes the environment's id
    assert settings_for_run({}, base=base) == base  # no connection: the environment's key
    assert "PRIVATE" not in repr(s)


def test_the_dag_reads_the_signing_connection_only_when_it_exists(monkeypatch):
    import json

    from ml.airflow_dag import signing_connection

    monkeypatch.setenv("AIRFLOW_CONN_MODEL_SIGNING", json.dumps(
        {"conn_type": "generic", "password": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n",
         "extra": {"key_id": "k-2026"}}))
    pem, key_id = signing_connection("model_signing")
    assert pem.startswith("-----BEGIN PRIVATE KEY-----") and key_id == "k-2026"
    assert signing_connection("no_such_connection") == (None, None)


def test_a_dag_of_another_use_case_takes_that_use_cases_model_name_and_experiment():
    base = LoopSettings(use_case="flight_delay")
    s = settings_for_run({}, base=base, use_case="sensor_anomaly")
    assert (s.use_case, s.model_name, s.mlflow_experiment) == ("sensor_anomaly", "sensor_anomaly", "sensor-anomaly")
    with pytest.raises(ValidationError, match="unknown use case 'nope'"):
        settings_for_run({}, base=base, use_case="nope")


def test_the_gate_margin_params_become_the_runs_margins_by_metric():
    request = RunRequest.model_validate({"gate_margin_roc_auc": 0.05, "gate_margin_log_loss": None, "epochs": 3})
    assert request.gate_margins == {"roc_auc": 0.05}
    assert RunRequest.model_validate({}).gate_margins == {}
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        RunRequest.model_validate({"gate_margin_roc_auc": -0.1})


def test_out_of_range_overrides_are_refused_before_any_work():
    with pytest.raises(ValidationError, match="epochs"):
        settings_for_run({"epochs": 0})
    with pytest.raises(ValidationError, match="rollout_timeout_s"):
        RunRequest(rollout_timeout_s=-1)
