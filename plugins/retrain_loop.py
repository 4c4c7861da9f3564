"""Airflow 3 plugin that makes the retraining loop visible in the Airflow UI.

- A page (FastAPI app under ``/retrain-loop``, shown in the UI's navigation as an external view) with one
  section per registered use case, listing the model versions on the model topic with the metrics the use case
  shows, the gate decision and which scorers run them (from the status topic); ``/retrain-loop/api/models``
  gives the same as JSON (``?use_case=<name>`` for one).
- ``/retrain-loop/data-docs/...`` serves the Great Expectations Data Docs of every run.
- Task instance links "MLflow run" and "Data Docs", read from the XComs the tasks push
  (``ml.airflow_tasks.MLFLOW_RUN_LINK`` / ``DATA_DOCS_LINK``).

Settings: the ``kafka_default`` connection and the ``mlflow_tracking_uri`` Variable as the DAGs use them, else
the loop's environment. The pages show model metadata and data statistics and are not behind Airflow's login.
"""

from __future__ import annotations

import html
import logging

from airflow.plugins_manager import AirflowPlugin
# The API server resolves links from XCom with this class; a plugin link only needs a name and an XCom key.
from airflow.serialization.definitions.operatorlink import XComOperatorLink
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ml import airflow_tasks, use_cases
from ml.errors import LoopError
from ml.settings import LoopSettings

log = logging.getLogger(__name__)

PREFIX = "/retrain-loop"
STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:2em}"
         "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}.err{color:#b00}"
         "small{color:#555}h2{margin-bottom:0.2em}")


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


app = FastAPI(title="Retraining loop")


@app.get("/api/models")
def models_json(use_case: str | None = None) -> list[dict]:
    from ml.loop_view import model_versions

    if use_case is not None and use_case not in use_cases.names():
        raise HTTPException(404, f"unknown use case {use_case!r}; registered: {use_cases.names()}")
    names = [use_case] if use_case else use_cases.names()
    return [{"use_case": name, **row.model_dump()} for name in names for row in model_versions(_settings(name))]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


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
    head = "".join(f"<th>{html.escape(m)}</th>" for m in uc.ui_metrics)
    body = "".join(
        f"<tr><td>v{r.model_version}</td><td>{html.escape(r.created_at[:19])}</td>"
        + "".join(f"<td>{_number(r.metrics.get(m))}</td>" for m in uc.ui_metrics)
        + f"<td>{html.escape(r.verdict or 'n/a')}<br><small>{html.escape('; '.join(r.reasons))}</small></td>"
        f"<td>{html.escape(', '.join(r.live_on) or '-')}</td>"
        f"<td>{html.escape('; '.join(f'{k}: {v}' for k, v in r.rejected_by.items()) or '-')}</td>"
        f"<td><code>{html.escape(r.run_id)}</code></td></tr>" for r in rows)
    return (f"<section id='{html.escape(name)}'><h2>{html.escape(settings.model_name)}</h2>"
            f"<p>{html.escape(uc.title)}</p>{error}<table><tr><th>version</th><th>created (UTC)</th>{head}"
            "<th>gate decision</th><th>live on scorers</th><th>rejected by</th><th>MLflow run</th></tr>"
            f"{body}</table></section>")


@app.get("/", response_class=HTMLResponse)
def models_page() -> str:
    names = use_cases.names()
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
app.mount("/data-docs", StaticFiles(directory=LoopSettings().reports_dir / "data_docs", html=True,
                                    check_dir=False), name="data-docs")


class RetrainLoopPlugin(AirflowPlugin):
    name = "retrain_loop"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "Retraining loop"}]
    external_views = [{"name": "Retraining loop", "href": f"{PREFIX}/", "destination": "nav",
                       "url_route": "retrain-loop", "category": "browse"}]
    global_operator_extra_links = [
        XComOperatorLink(name="MLflow run", xcom_key=airflow_tasks.MLFLOW_RUN_LINK),
        XComOperatorLink(name="Data Docs", xcom_key=airflow_tasks.DATA_DOCS_LINK),
    ]
