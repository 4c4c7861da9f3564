"""A real local Airflow (``airflow standalone`` via infra.airflow) runs the DAG triggered through the REST API
as the UI does: JWT from ``POST /auth/token``, unpause, ``POST /api/v2/dags/{dag_id}/dagRuns``; then the
plugin's extra links and page answer for that run. No scorer here: the run asks for no rollout wait
(``rollout_timeout_s`` 0), so verify_rollout ends skipped with its reason.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest

from infra.airflow import local
from infra.kafka.broker import free_port
from ml import use_cases
from ml.monitoring.airflow_runs import AirflowRuns
from ml.registry import Registry
from ml.settings import LoopSettings
from use_cases.flight_delay.replay import replay_frame
from use_cases.flight_delay.source import load_completed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "retrain_flight_delay"


@pytest.fixture
def airflow(kafka_bootstrap, tmp_path, signing_keys):
    u = uuid.uuid4().hex[:8]
    loop_env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "LOOP_DATA_DIR": str(tmp_path / "data"),
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "TOPIC_PREFIX": f"t{u}.", "MIN_TRAINING_ROWS": "500", "EPOCHS": "3", "HOLDOUT_DAYS": "3",
        "FLIGHT_DELAY_GATE_FLOORS": '{"roc_auc": 0.5}', **signing_keys.env,
        # Only the REST call may start a run: no cron, no AssetWatcher, and a failure shows at once.
        "RETRAIN_TASK_RETRIES": "0",
        **{f"{name.upper()}_{knob}": off for name in use_cases.names()
           for knob, off in (("RETRAIN_SCHEDULE", "none"), ("RETRAIN_EVERY_N", "0"))},
    }
    settings = LoopSettings(**{k.lower(): v for k, v in loop_env.items()
                               if k.lower() in LoopSettings.model_fields},
                            use_case="flight_delay", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    replay_frame(settings, load_completed((1, 1), limit=10_000))
    cfg = local.AirflowConfig(home=tmp_path / "airflow", port=free_port(), kafka_bootstrap_servers=kafka_bootstrap)
    local.Airflow(cfg, loop_env=loop_env).start()
    try:
        yield cfg, settings
    finally:
        local.Airflow(cfg).stop()


def test_a_run_triggered_through_the_rest_api_publishes_and_the_plugin_shows_it(airflow, until):
    cfg, settings = airflow
    token = local.token(cfg)
    until("the DAG to be parsed", lambda: local.api(cfg, "GET", f"/api/v2/dags/{DAG_ID}", token)[0] == 200, 120)
    assert local.api(cfg, "PATCH", f"/api/v2/dags/{DAG_ID}", token, {"is_paused": False})[0] == 200

    # The form's validation: a Param out of its schema is refused before a run exists.
    status, body = local.api(cfg, "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", token,
                         {"logical_date": datetime.now(UTC).isoformat(), "conf": {"epochs": 0}})
    assert status == 400, body

    # Started as the live monitor starts a retraining: its own client, the reason in the run's conf.
    reason = "monitor decision d-1: live roc_auc 0.61 of v3 fell below its gate-time 0.70 by more than 0.03"
    runs = AirflowRuns(cfg.url, local.ADMIN_USER, local.admin_password(cfg))
    run_id = runs.trigger(DAG_ID, f"live_retrain_{uuid.uuid4().hex[:8]}", {"rollout_timeout_s": 0,
                                                                           "trigger": reason})
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"
    assert local.api(cfg, "GET", path, token)[1]["conf"]["trigger"] == reason
    final = until("the run to finish", lambda: (r := local.api(cfg, "GET", path, token)[1])["state"] in
                   ("success", "failed") and r, 600, every=5)
    tis = local.api(cfg, "GET", f"{path}/taskInstances", token)[1]["task_instances"]
    states = {ti["task_id"]: ti["state"] for ti in tis}
    assert final["state"] == "success", (states, local.Airflow(cfg).log_tail())
    assert states == {"snapshot": "success", "validate": "success", "train": "success", "evaluate": "success",
                      "register": "success", "publish": "success", "verify_rollout": "skipped"}
    # The gate's decision record keeps why the run started.
    registry = Registry(settings)
    (version,) = registry.client().search_model_versions("name = 'flight_delay'")
    assert registry.decision(version.run_id)["trigger"] == reason

    links = local.api(cfg, "GET", f"{path}/taskInstances/train/links", token)[1]["extra_links"]
    assert "/#/experiments/" in links["MLflow run"]
    docs = local.api(cfg, "GET", f"{path}/taskInstances/validate/links", token)[1]["extra_links"]["Data Docs"]
    signed_in = {"Authorization": f"Bearer {token}"}  # the plugin's pages take Airflow's login
    with urllib.request.urlopen(urllib.request.Request(f"{cfg.url}{docs}", headers=signed_in), timeout=30) as r:
        assert r.status == 200 and b"<html" in r.read().lower()

    with urllib.request.urlopen(urllib.request.Request(f"{cfg.url}/retrain-loop/api/models", headers=signed_in),
                                timeout=60) as r:
        (model,) = json.loads(r.read())
    assert (model["use_case"], model["model_version"], model["verdict"], model["live_on"]) == (
        "flight_delay", 1, "promote", [])
    with urllib.request.urlopen(urllib.request.Request(f"{cfg.url}/retrain-loop/", headers=signed_in),
                                timeout=60) as r:
        assert b"<td>v1</td>" in r.read()
