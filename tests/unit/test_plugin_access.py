"""Every route of the loop's Airflow plugin asks for Airflow's login: without one a client gets 401, a browser
Airflow's login page with the way back. Signed-in users and their permissions are tested against a real Airflow
(tests/integration/test_airflow_plugin_view.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlencode

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plugin module, loaded from plugins/ as Airflow loads it (Airflow's files in a temporary home)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
        spec = importlib.util.spec_from_file_location("retrain_loop_plugin", REPO / "plugins" / "retrain_loop.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


@pytest.fixture(scope="module")
def client(plugin):
    """A test client of the plugin's app mounted at its prefix, as the API server mounts it."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    root = FastAPI()
    root.mount(plugin.PREFIX, plugin.app)
    return TestClient(root, base_url=BASE)


def _urls(plugin) -> list[str]:
    """One path per route of the plugin's app, its path parameter filled in."""
    from fastapi.routing import APIRoute

    # A mount (StaticFiles, a sub-app) would skip the routes' dependencies, that is the login.
    assert all(isinstance(route, APIRoute) for route in plugin.app.routes), plugin.app.routes
    return [plugin.PREFIX + route.path.replace("{path:path}", "run-1/index.html") for route in plugin.app.routes]


def test_every_route_answers_401_to_a_client_without_a_login(plugin, client):
    urls = _urls(plugin)
    assert {"/retrain-loop/", "/retrain-loop/api/models", "/retrain-loop/data-docs/run-1/index.html"} <= set(urls)
    for url in urls:
        r = client.get(url, follow_redirects=False)
        assert (url, r.status_code, r.json()) == (url, 401, {"detail": "Not authenticated"})


def test_a_browser_without_a_login_is_sent_to_airflows_login_page_with_the_way_back(plugin, client):
    for url in _urls(plugin):
        r = client.get(url, headers={"Accept": "text/html,application/xhtml+xml"}, follow_redirects=False)
        assert r.status_code == 307, url
        assert r.headers["location"] == f"/api/v2/auth/login?{urlencode({'next': BASE + url})}"


class _AuthManager:
    """Stands in for an auth manager with per-DAG permissions (FAB, Keycloak; SimpleAuthManager has roles only):
    grants reading the runs of ``dags``, and records what it was asked."""

    def __init__(self, dags: set[str]) -> None:
        self.dags, self.asked = dags, []

    def is_authorized_dag(self, *, method, access_entity, details, user) -> bool:
        self.asked.append((method, access_entity.name, details.id, user))
        return details.id in self.dags


@pytest.fixture
def grant(plugin, monkeypatch):
    """``grant(dags)``: the signed-in user "u" may read the runs of ``dags`` only; returns the auth manager."""
    from airflow.api_fastapi.core_api.security import get_user

    def set_up(dags: set[str]) -> _AuthManager:
        manager = _AuthManager(dags)
        monkeypatch.setattr(plugin, "get_auth_manager", lambda: manager)
        monkeypatch.setattr(plugin.DagModel, "get_team_name", lambda dag_id: None)  # no multi-team set-up
        monkeypatch.setitem(plugin.app.dependency_overrides, get_user, lambda: "u")
        return manager

    return set_up


def test_a_user_sees_the_use_cases_whose_dag_runs_they_may_read_and_no_data_docs_without_all(plugin, client, grant):
    manager = grant({"retrain_flight_delay"})
    assert plugin.readable_use_cases("u") == ["flight_delay"]
    assert ("GET", "RUN", "retrain_sensor_anomaly", "u") in manager.asked
    assert client.get("/retrain-loop/api/models?use_case=sensor_anomaly").status_code == 403
    assert client.get("/retrain-loop/data-docs/run-1/index.html").status_code == 403


def test_a_user_who_may_read_no_dag_runs_gets_403_everywhere(plugin, client, grant):
    grant(set())
    for url in _urls(plugin):
        r = client.get(url, headers={"Accept": "text/html"}, follow_redirects=False)
        assert (url, r.status_code) == (url, 403)  # signed in: the refusal, not the login page


def test_a_user_who_may_read_every_dag_run_gets_the_data_docs(plugin, client, grant, tmp_path, monkeypatch):
    from ml import use_cases
    from ml.airflow_tasks import dag_id

    grant({dag_id(name) for name in use_cases.names()})
    (tmp_path / "docs" / "run-1").mkdir(parents=True)
    (tmp_path / "docs" / "run-1" / "index.html").write_text("<h1>Data Docs of run-1</h1>")
    (tmp_path / "secret.txt").write_text("not a Data Docs file")
    monkeypatch.setattr(plugin.DATA_DOCS, "all_directories", [tmp_path / "docs"])
    assert client.get("/retrain-loop/data-docs/run-1/index.html").text == "<h1>Data Docs of run-1</h1>"
    assert client.get("/retrain-loop/data-docs/run-1/").text == "<h1>Data Docs of run-1</h1>"
    assert client.get("/retrain-loop/data-docs/run-1", follow_redirects=False).headers["location"].endswith(
        "/retrain-loop/data-docs/run-1/")
    assert client.get("/retrain-loop/data-docs/run-1/..%2F..%2Fsecret.txt").status_code == 404  # not out of it


def test_a_signed_in_user_sees_each_versions_interval_next_to_its_metrics(plugin, client, grant, monkeypatch):
    """The page's content for a reader: the gate's interval of each metric's difference from the champion."""
    import ml.loop_view
    from ml.bootstrap import Interval
    from ml.settings import LoopSettings

    grant({"retrain_flight_delay"})
    interval = Interval(metric="roc_auc", level=0.95, samples=1000, low=-0.0031, high=0.0154, point=0.0062)
    rows = [ml.loop_view.VersionRow(model_name="flight_delay", model_version=2, created_at="2026-12-04T16:00:00",
                                    run_id="run-2", metrics={"roc_auc": 0.7712, "log_loss": 0.581},
                                    decision_id="d2", verdict="promote", intervals={"roc_auc": interval}),
            ml.loop_view.VersionRow(model_name="flight_delay", model_version=1, created_at="2026-12-03T16:00:00",
                                    run_id="run-1", metrics={"roc_auc": 0.765, "log_loss": 0.5844},
                                    decision_id="d1", verdict="promote")]
    monkeypatch.setattr(ml.loop_view, "model_versions", lambda settings, **kwargs: rows)
    monkeypatch.setattr(plugin, "_settings", lambda name: LoopSettings(use_case=name))
    monkeypatch.setattr(plugin, "_live_figure", lambda uc, settings: "", raising=False)  # no MLflow here
    page = client.get("/retrain-loop/").text
    assert "<td>0.7712<br><small class=ci" in page and "\u0394 +0.0062 [\u22120.0031, +0.0154] 95%</small>" in page
    assert "<td>0.5810</td>" in page and "<td>0.7650</td>" in page  # no interval: the value alone
    listed = client.get("/retrain-loop/api/models?use_case=flight_delay").json()
    assert listed[0]["intervals"]["roc_auc"]["low"] == -0.0031 and listed[1]["intervals"] == {}
