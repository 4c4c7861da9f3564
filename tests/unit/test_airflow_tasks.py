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
        RunRequest(force_reason="feature contract v2")
    assert RunRequest(force_promote=True, force_reason=" feature contract v2 ").forced_reason() == "feature contract v2"
    assert RunRequest().forced_reason() is None


def test_the_connection_the_variable_and_the_request_override_the_environment_defaults():
    base = LoopSettings(epochs=20, snapshot_window=12, gate_auc_margin=0.01)
    s = settings_for_run({"epochs": 5, "snapshot_window": None, "gate_auc_margin": 0.05, "unknown": 1},
                         kafka_extra={"bootstrap.servers": "broker:29092", "group.id": "g"},
                         mlflow_tracking_uri="http://mlflow:5000", base=base)
    assert (s.kafka_bootstrap_servers, s.mlflow_tracking_uri) == ("broker:29092", "http://mlflow:5000")
    assert (s.epochs, s.snapshot_window, s.gate_auc_margin) == (5, 12, 0.05)
    assert settings_for_run({}, base=base) == base  # no connection, no Variable: the environment's settings


def test_out_of_range_overrides_are_refused_before_any_work():
    with pytest.raises(ValidationError, match="epochs"):
        settings_for_run({"epochs": 0})
    with pytest.raises(ValidationError, match="rollout_timeout_s"):
        RunRequest(rollout_timeout_s=-1)
