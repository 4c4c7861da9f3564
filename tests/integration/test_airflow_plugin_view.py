"""What the plugin page lists, from real topics: versions on the model topic and which scorers run them; and who
may see it in a real Airflow (standalone): Airflow's login for every route, read access to the runs of the
retraining DAGs, the login page and back for a browser, the page in the UI's navigation."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlencode

import orjson
import pytest
from confluent_kafka import Producer

from infra.airflow import local
from infra.kafka.broker import free_port
from ml import use_cases
from ml.loop_view import model_versions
from ml.publish import SHADOW, build_envelope, publish
from ml.settings import LoopSettings
from ml.signing import Signer
from ml.topics import ensure_topics
from ml.wire import Framing

pytestmark = pytest.mark.integration

KEPT_LOGS = Path(__file__).resolve().parents[2] / ".local" / "test-logs"
PAGE, API = "/retrain-loop/", "/retrain-loop/api/models?use_case=flight_delay"
DOCS = "/retrain-loop/data-docs/manual__run-1/index.html"
DOCS_TEXT = b"Data Docs of manual__run-1"
# SimpleAuthManager logins: its lowest role, and a user with no role (no permission at all).
USERS = "admin:admin,viewer:viewer,nobody:"


def test_versions_are_listed_newest_first_with_the_scorers_that_run_shadow_or_rejected_them(kafka_bootstrap,
                                                                                             new_topic):
    status = new_topic("status")
    settings = LoopSettings(kafka_bootstrap_servers=kafka_bootstrap, use_case="flight_delay",
                            topic_prefix=f"t{uuid.uuid4().hex[:8]}.", topic_names={"models.status": status},
                            model_signing_key=Signer.generate().private_pem().decode())
    ensure_topics(settings)
    for version in (1, 2):  # the page needs valid signed envelopes, not loadable models
        publish(settings, build_envelope(
            model_name="flight_delay", model_version=version, run_id=f"run-{version}", model_uri="models:/x/1",
            preprocessing={}, metrics={"roc_auc": 0.7 + version / 100, "log_loss": 0.6},
            decision_id=f"d{version}", artifact=b"model bytes %d" % version,
            signer=settings.signer()))
    # Another use case's version on the same models topic is not listed under this one.
    publish(settings, build_envelope(
        model_name="sensor_anomaly", model_version=7, run_id="run-s", model_uri="models:/s/7", preprocessing={},
        metrics={"f1": 0.8}, decision_id="ds", artifact=b"sensor model", signer=settings.signer()))
    # v3 and v4 as shadows: v3 run beside the champion by s1 (and by s2 until retired), v4 promoted on s2.
    for version in (3, 4):
        publish(settings, build_envelope(
            model_name="flight_delay", model_version=version, run_id=f"run-{version}", model_uri="models:/x/1",
            preprocessing={}, metrics={"roc_auc": 0.7, "log_loss": 0.6}, decision_id=f"d{version}",
            artifact=b"model bytes %d" % version, signer=settings.signer(), stage=SHADOW))
    publish(settings, build_envelope(
        model_name="flight_delay", model_version=4, run_id="run-4", model_uri="models:/x/1", preprocessing={},
        metrics={"roc_auc": 0.7, "log_loss": 0.6}, decision_id="d4", artifact=b"model bytes 4",
        signer=settings.signer()))
    producer, framing = Producer({"bootstrap.servers": kafka_bootstrap}), Framing(settings)
    for scorer, state, version in [("s1", "live", 1), ("s2", "live", 1), ("s1", "live", 2), ("s3", "rejected", 2),
                                   ("s1", "shadow", 3), ("s2", "shadow", 3), ("s2", "retired", 3),
                                   ("s2", "shadow", 4), ("s2", "live", 4)]:
        producer.produce(status, key=b"flight_delay", value=framing.frame(status, orjson.dumps({
            "schema_version": 1, "status": state, "model_name": "flight_delay", "model_version": version,
            "reason_kind": "canary" if state == "rejected" else "ok", "reason": "NaN scores", "scorer_id": scorer})))
    assert producer.flush(10) == 0

    rows = model_versions(settings, with_decisions=False)
    assert [(r.model_version, r.stage, r.live_on, r.shadow_on, r.rejected_by) for r in rows] == [
        (4, "champion", ["s2"], [], {}), (3, "shadow", [], ["s1"], {}),
        (2, "champion", ["s1"], [], {"s3": "canary: NaN scores"}), (1, "champion", [], [], {})]
    assert rows[2].metrics["roc_auc"] == pytest.approx(0.72)
    sensors = LoopSettings.model_validate({**settings.model_dump(), "use_case": "sensor_anomaly",
                                           "model_name": None, "mlflow_experiment": None})
    assert [r.model_version for r in model_versions(sensors, with_decisions=False)] == [7]


@pytest.fixture(scope="module")
def airflow(kafka_bootstrap, tmp_path_factory):
    """A real Airflow whose plugin finds two published flight_delay versions (v1 of run-1, live on scorer s1, and
    v2 of run-2, a shadow on s1) and one run's Data Docs; logins of USERS."""
    tmp = tmp_path_factory.mktemp("plugin-access")
    pem = Signer.generate().private_pem().decode()
    loop_env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.",
        "LOOP_DATA_DIR": str(tmp / "data"), "AIRFLOW_VAR_MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp / "artifacts"), "MODEL_SIGNING_KEY": pem,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
        # No run starts: every DAG's schedule and Kafka watcher off.
        **{f"{name.upper()}_{knob}": off for name in use_cases.names()
           for knob, off in (("RETRAIN_SCHEDULE", "none"), ("RETRAIN_EVERY_N", "0"))},
    }
    settings = LoopSettings(kafka_bootstrap_servers=kafka_bootstrap, use_case="flight_delay",
                            topic_prefix=loop_env["TOPIC_PREFIX"], model_signing_key=pem)
    ensure_topics(settings)
    publish(settings, build_envelope(
        model_name="flight_delay", model_version=1, run_id="run-1", model_uri="models:/x/1", preprocessing={},
        metrics={"roc_auc": 0.71, "log_loss": 0.6}, decision_id="d1", artifact=b"model bytes",
        signer=settings.signer()))
    publish(settings, build_envelope(
        model_name="flight_delay", model_version=2, run_id="run-2", model_uri="models:/x/2", preprocessing={},
        metrics={"roc_auc": 0.72, "log_loss": 0.6}, decision_id="d2", artifact=b"model bytes 2",
        signer=settings.signer(), stage=SHADOW))
    producer, framing = Producer({"bootstrap.servers": kafka_bootstrap}), Framing(settings)
    for state, version in (("live", 1), ("shadow", 2)):
        producer.produce(settings.status_topic, key=b"flight_delay", value=framing.frame(
            settings.status_topic, orjson.dumps({"schema_version": 1, "status": state, "model_name": "flight_delay",
                                                 "model_version": version, "reason_kind": "", "reason": "",
                                                 "scorer_id": "s1"})))
    assert producer.flush(10) == 0
    docs = tmp / "data" / "reports" / "data_docs" / "manual__run-1"
    docs.mkdir(parents=True)
    (docs / "index.html").write_bytes(b"<html><body><h1>" + DOCS_TEXT + b"</h1></body></html>")
    cfg = local.AirflowConfig(home=tmp / "airflow", port=free_port(), kafka_bootstrap_servers=kafka_bootstrap)
    local.Airflow(cfg, loop_env=loop_env).start()
    try:
        yield cfg
    finally:
        local.Airflow(cfg).stop()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand a redirect back to the caller: the tests check where it points."""

    def redirect_request(self, *args, **kwargs):
        return None


def _get(url: str, *, token: str | None = None, cookie: str | None = None, html: bool = False):
    """GET ``url`` as an API client (or as a browser navigation with ``html``), not following redirects: the
    status, the headers and the body."""
    headers = {"Accept": "text/html,application/xhtml+xml" if html else "*/*"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    try:
        with urllib.request.build_opener(_NoRedirect).open(urllib.request.Request(url, headers=headers),
                                                           timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.mark.slow
def test_anonymous_requests_get_401_and_a_browser_goes_to_the_login_page_that_brings_it_back(airflow):
    cfg = airflow
    for path in (PAGE, API, DOCS):
        status, _, body = _get(cfg.url + path)
        assert (path, status, json.loads(body)) == (path, 401, {"detail": "Not authenticated"})
    assert _get(cfg.url + PAGE, token="not-a-jwt")[0] == 403  # Airflow's answer to an invalid token

    back = urlencode({"next": cfg.url + PAGE})
    status, headers, _ = _get(cfg.url + PAGE, html=True)
    assert (status, headers["Location"]) == (307, f"/api/v2/auth/login?{back}")
    status, headers, _ = _get(cfg.url + headers["Location"])  # Airflow's own redirect to the auth manager's form
    assert (status, headers["Location"]) == (307, f"/auth/login?{back}")


@pytest.mark.slow
def test_a_signed_in_user_sees_the_page_the_json_and_the_data_docs(airflow):
    cfg = airflow
    for user in ("admin", "viewer"):  # the lowest role reads DAG runs: enough
        jwt = local.token(cfg, user)
        status, _, body = _get(cfg.url + PAGE, token=jwt)
        assert status == 200 and b"<td>v1</td>" in body and b"<code>run-1</code>" in body, (user, status, body)
        status, _, body = _get(cfg.url + API, token=jwt)
        assert status == 200, (user, status, body)
        assert [(r["use_case"], r["model_version"], r["run_id"], r["stage"], r["live_on"], r["shadow_on"])
                for r in json.loads(body)] == [("flight_delay", 2, "run-2", "shadow", [], ["s1"]),
                                               ("flight_delay", 1, "run-1", "champion", ["s1"], [])]
        status, _, body = _get(cfg.url + DOCS, token=jwt)
        assert status == 200 and DOCS_TEXT in body, (user, status, body)
    # The UI's session: the cookie its login sets, no header.
    status, _, body = _get(cfg.url + PAGE, cookie=local.token(cfg), html=True)
    assert status == 200 and b"<td>v1</td>" in body


@pytest.mark.slow
def test_a_signed_in_user_who_may_not_read_the_dag_runs_gets_403(airflow):
    cfg = airflow
    jwt = local.token(cfg, "nobody")
    for path in (PAGE, API, DOCS, "/retrain-loop/api/models"):
        status, _, body = _get(cfg.url + path, token=jwt)
        assert (path, status) == (path, 403), body
    assert _get(cfg.url + PAGE, cookie=jwt, html=True)[0] == 403  # signed in: the refusal, not the login page


@pytest.mark.slow
def test_in_a_browser_the_page_asks_for_the_login_comes_back_with_the_versions_and_sits_in_the_ui(airflow):
    """Not the ``browser`` fixture: that one signs in at the UI's root first, this one starts at the page."""
    from playwright.sync_api import sync_playwright

    cfg = airflow
    KEPT_LOGS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 900})
            page.goto(cfg.url + PAGE)
            # Airflow's login form, rendered by JavaScript; after "Sign in" it sends the browser back.
            page.wait_for_selector("input[name=username]", timeout=60_000)
            assert page.url.startswith(f"{cfg.url}/auth/login?"), page.url
            page.fill("input[name=username]", local.ADMIN_USER)
            page.fill("input[type=password]", local.admin_password(cfg))
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(cfg.url + PAGE, timeout=60_000)
            page.wait_for_selector("section#flight_delay", timeout=60_000)
            page.screenshot(path=KEPT_LOGS / "plugin-page-after-login.png", full_page=True)
            section = page.inner_text("section#flight_delay")
            assert "v1" in section and "run-1" in section and "0.7100" in section, section
            assert "shadow on scorers" in section and "run-2" in section, section
            # No monitor ran here: the live figure says so (tests/integration/test_monitor.py draws one).
            assert "No live metrics yet" in section, section

            # The UI's navigation entry (external view) shows the page in a frame, signed in by the same cookie.
            page.goto(f"{cfg.url}/plugin/retrain-loop")
            frame = page.frame_locator("iframe")
            frame.locator("section#flight_delay").wait_for(timeout=60_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=KEPT_LOGS / "plugin-page-in-airflow-ui.png")
            assert "run-1" in frame.locator("section#flight_delay").inner_text()
        finally:
            chromium.close()
