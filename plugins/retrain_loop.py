"""Airflow 3 plugin that makes the retraining loop visible in the Airflow UI.

- A page (FastAPI app under ``/retrain-loop``, shown in the UI's navigation as an external view) with one
  section per registered use case, listing the model versions on the model topic with the metrics the use case
  shows (each with the gate's confidence interval of its difference from the champion, when the gate had one),
  the gate decision and which scorers run them (from the status topic); ``/retrain-loop/api/models`` gives the
  same as JSON (``?use_case=<name>`` for one).
- ``/retrain-loop/data-docs/...`` serves the Great Expectations Data Docs of every run.
- Task instance links "MLflow run" and "Data Docs", read from the XComs the tasks push
  (``ml.airflow_tasks.MLFLOW_RUN_LINK`` / ``DATA_DOCS_LINK``).

Settings: the ``kafka_default`` connection and the ``mlflow_tracking_uri`` Variable as the DAGs use them, else
the loop's environment.

Access: every route takes Airflow's login (the API server's auth manager, through Airflow's own ``get_user``: an
``Authorization: Bearer`` JWT or the UI's ``_token`` cookie). A use case's section and JSON need read access to
the runs of its retraining DAG, the Data Docs (a run's folder does not say its DAG) to those of every use case.
Without a valid login a browser is sent to Airflow's login page, which brings it back; other clients get 401.
"""

from __future__ import annotations

import html
import logging
import os
from typing import Annotated
from urllib.parse import urlencode

from airflow.api_fastapi.app import API_ROOT_PATH, get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.models.dag import DagModel
from airflow.plugins_manager import AirflowPlugin
# The API server resolves links from XCom with this class; a plugin link only needs a name and an XCom key.
from airflow.serialization.definitions.operatorlink import XComOperatorLink
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml import airflow_tasks, use_cases
from ml.errors import LoopError
from ml.settings import LoopSettings

log = logging.getLogger(__name__)

PREFIX = "/retrain-loop"
STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:2em}"
         "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}.err{color:#b00}"
         "small{color:#555}h2{margin-bottom:0.2em}.ci{white-space:nowrap}")


def _settings(use_case: str) -> LoopSettings:
    """The use case's settings as its DAG's tasks resolve them (connection and Variable over the environment)."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable

    try:
        kafka_extra = Connection.get_connection_from_secrets("kafka_default").extra_dejson
    except AirflowNotFoundException:
        kafka_extra = None
    return airflow_tasks.settings_for_run({}, kafka_extra=kafka_extra, use_case=use_case,
                                          mlflow_tracking_uri=Variable.get("mlflow_tracking_uri", None))


def _may_read(user: BaseUser, use_case: str) -> bool:
    """Whether ``user`` may read the runs of ``use_case``'s retraining DAG, whose results the page shows."""
    dag = airflow_tasks.dag_id(use_case)
    return get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, user=user,
        details=DagDetails(id=dag, team_name=DagModel.get_team_name(dag)))


def readable_use_cases(user: GetUserDep) -> list[str]:
    """The registered use cases the signed-in user may see; 403 when there are some and none of them."""
    names = use_cases.names()
    readable = [name for name in names if _may_read(user, name)]
    if names and not readable:
        raise HTTPException(403, "Forbidden: you may read the runs of no retraining DAG")
    return readable


Readable = Annotated[list[str], Depends(readable_use_cases)]


def every_use_case(readable: Readable) -> None:
    """403 unless the user may read every use case's runs (for files that do not say their use case)."""
    if set(readable) != set(use_cases.names()):
        raise HTTPException(403, "Forbidden: the Data Docs need read access to the runs of every retraining DAG")


# No /docs, /redoc or /openapi.json: FastAPI serves them without the routes' dependencies, so without login.
app = FastAPI(title="Retraining loop", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(StarletteHTTPException)
async def login_or_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Send a browser without a valid login to Airflow's login page, which comes back here (the UI's own rule:
    401, or 403 for an invalid token); other clients and other errors get the status as JSON."""
    no_login = exc.status_code == 401 or (exc.status_code == 403 and exc.detail == "Invalid JWT token")
    if no_login and "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(f"{API_ROOT_PATH}api/v2/auth/login?{urlencode({'next': str(request.url)})}")
    return await http_exception_handler(request, exc)


@app.get("/api/models")
def models_json(readable: Readable, use_case: str | None = None) -> list[dict]:
    from ml.loop_view import model_versions

    if use_case is not None and use_case not in use_cases.names():
        raise HTTPException(404, f"unknown use case {use_case!r}; registered: {use_cases.names()}")
    if use_case is not None and use_case not in readable:
        raise HTTPException(403, f"Forbidden: you may not read the runs of {airflow_tasks.dag_id(use_case)}")
    names = [use_case] if use_case else readable
    return [{"use_case": name, **row.model_dump()} for name in names for row in model_versions(_settings(name))]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _signed(value: float) -> str:
    return f"{value:+.4f}".replace("-", "\u2212")  # a minus sign as wide as the plus


def _metric_cell(value: float | None, interval) -> str:
    """A metric's value and, when the gate had one, the interval of its difference from the champion."""
    if interval is None:
        return f"<td>{_number(value)}</td>"
    return (f"<td>{_number(value)}<br><small class=ci title='challenger minus champion on the same held-out events, "
            f"{interval.level_text()} bootstrap confidence interval of {interval.samples} resamples'>"
            f"\u0394 {_signed(interval.point)} [{_signed(interval.low)}, {_signed(interval.high)}] "
            f"{interval.level_text()}</small></td>")


def _section(name: str) -> str:
    """One use case's table of versions, or the reason it cannot be shown."""
    from ml.loop_view import model_versions

    uc = use_cases.get(name)
    settings = _settings(name)
    try:
        rows, error = model_versions(settings), ""
    except LoopError as e:  # no broker or no topic yet: say so on the page
        rows, error = [], f"<p class=err>{html.escape(str(e))}</p>"
    if not rows and not error:
        error = f"<p>No version of {html.escape(settings.model_name)} published yet.</p>"
    legend = ("<p><small>\u0394: a metric's difference from the champion the gate compared the version with "
              "(it minus the champion, on the same held-out events) and its bootstrap confidence interval; unless "
              "forced, the gate promotes only when the interval's bound on the worse side stays within the "
              "margin.</small></p>") if any(r.intervals for r in rows) else ""
    head = "".join(f"<th>{html.escape(m)}</th>" for m in uc.ui_metrics)
    body = "".join(
        f"<tr><td>v{r.model_version}{'<br><small>shadow</small>' if r.stage == 'shadow' else ''}</td>"
        f"<td>{html.escape(r.created_at[:19])}</td>"
        + "".join(_metric_cell(r.metrics.get(m), r.intervals.get(m)) for m in uc.ui_metrics)
        + f"<td>{html.escape(r.verdict or 'n/a')}<br><small>{html.escape('; '.join(r.reasons))}</small></td>"
        f"<td>{html.escape(', '.join(r.live_on) or '-')}</td>"
        f"<td>{html.escape(', '.join(r.shadow_on) or '-')}</td>"
        f"<td>{html.escape('; '.join(f'{k}: {v}' for k, v in r.rejected_by.items()) or '-')}</td>"
        f"<td><code>{html.escape(r.run_id)}</code></td></tr>" for r in rows)
    return (f"<section id='{html.escape(name)}'><h2>{html.escape(settings.model_name)}</h2>"
            f"<p>{html.escape(uc.title)}</p>{error}{legend}<table><tr><th>version</th><th>created (UTC)</th>{head}"
            "<th>gate decision</th><th>live on scorers</th><th>shadow on scorers</th><th>rejected by</th>"
            "<th>MLflow run</th></tr>"
            f"{body}</table>{_live_figure(uc, settings)}</section>")


def _live_figure(uc, settings: LoopSettings) -> str:
    """The live metric of every version over time, as the monitor logged it in MLflow, decisions marked."""
    from ml.monitoring.live_view import read_series, svg
    from ml.registry import Registry

    if uc.live is None:
        return ""
    try:
        drawing = svg(read_series(Registry(settings), uc.live.metric), uc.live.metric)
    except Exception as e:  # noqa: BLE001 - MLflow down: the table above still shows what Kafka holds
        log.warning("no live metrics for %s: %s", uc.name, e)
        return f"<p class=err>Live metrics unavailable: {html.escape(str(e)[:300])}</p>"
    if not drawing:
        return "<p>No live metrics yet: the monitor (<code>python -m ml monitor</code>) logs one point per window.</p>"
    return (f"<figure><figcaption>Live {html.escape(uc.live.metric)} per version (one point per window of labelled "
            "predictions; dashed: as a shadow; vertical: the monitor's decisions)</figcaption>"
            f"{drawing}</figure>")


@app.get("/", response_class=HTMLResponse)
def models_page(names: Readable) -> str:
    """The page: one section per use case the user may read."""
    settings = LoopSettings()
    sections = "".join(_section(name) for name in names) or "<p>No use case is registered.</p>"
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>Retraining loop</title><style>{STYLE}</style>"
        f"</head><body><h1>Retraining loop</h1><p>Models topic {html.escape(settings.models_topic)}, status "
        f"topic {html.escape(settings.status_topic)}; use cases: "
        + ", ".join(f"<a href='#{html.escape(n)}'>{html.escape(n)}</a>" for n in names)
        + f"</p>{sections}</body></html>"
    )


# check_dir=False: the folder appears with the first validation, after the API server started.
DATA_DOCS = StaticFiles(directory=LoopSettings().reports_dir / "data_docs", html=True, check_dir=False)


@app.api_route("/data-docs/{path:path}", methods=["GET", "HEAD"], dependencies=[Depends(every_use_case)])
async def data_docs(path: str, request: Request) -> Response:
    """A file of the runs' Data Docs; a route, not a mount, so that the login and access checks apply
    (StaticFiles still keeps the path inside the folder and serves a folder's index.html)."""
    return await DATA_DOCS.get_response(os.path.normpath(path or "."), request.scope)


class RetrainLoopPlugin(AirflowPlugin):
    name = "retrain_loop"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "Retraining loop"}]
    external_views = [{"name": "Retraining loop", "href": f"{PREFIX}/", "destination": "nav",
                       "url_route": "retrain-loop", "category": "browse"}]
    global_operator_extra_links = [
        XComOperatorLink(name="MLflow run", xcom_key=airflow_tasks.MLFLOW_RUN_LINK),
        XComOperatorLink(name="Data Docs", xcom_key=airflow_tasks.DATA_DOCS_LINK),
    ]
