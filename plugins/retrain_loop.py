"""Airflow 3 plugin that makes the retraining loop visible in the Airflow UI.

- A page (FastAPI app under ``/retrain-loop``, shown in the UI's navigation as an external view) listing the
  model versions on the model topic with their metrics, the gate decision and which scorers run them (from
  the status topic); ``/retrain-loop/api/models`` gives the same as JSON.
- ``/retrain-loop/data-docs/...`` serves the Great Expectations Data Docs of every run.
- Task instance links "MLflow run" and "Data Docs", read from the XComs the tasks push
  (``ml.airflow_tasks.MLFLOW_RUN_LINK`` / ``DATA_DOCS_LINK``).

Settings: the ``kafka_default`` connection and the ``mlflow_tracking_uri`` Variable as the DAG uses them, else
the loop's environment. The pages show model metadata and data statistics and are not behind Airflow's login.
"""

from __future__ import annotations

import html
import logging

from airflow.plugins_manager import AirflowPlugin
# The API server resolves links from XCom with this class; a plugin link only needs a name and an XCom key.
from airflow.serialization.definitions.operatorlink import XComOperatorLink
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ml import airflow_tasks
from ml.errors import LoopError
from ml.settings import LoopSettings

log = logging.getLogger(__name__)

PREFIX = "/retrain-loop"


def _settings() -> LoopSettings:
    """The loop's settings as the DAG's tasks resolve them (connection and Variable over the environment)."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable

    try:
        kafka_extra = Connection.get_connection_from_secrets("kafka_default").extra_dejson
    except AirflowNotFoundException:
        kafka_extra = None
    return airflow_tasks.settings_for_run({}, kafka_extra=kafka_extra,
                                          mlflow_tracking_uri=Variable.get("mlflow_tracking_uri", None))


app = FastAPI(title="Retraining loop")


@app.get("/api/models")
def models_json() -> list[dict]:
    from ml.loop_view import model_versions

    return [row.model_dump() for row in model_versions(_settings())]


@app.get("/", response_class=HTMLResponse)
def models_page() -> str:
    from ml.loop_view import model_versions

    settings = _settings()
    try:
        rows = model_versions(settings)
        error = ""
    except LoopError as e:  # no broker or no topic yet: say so on the page
        rows, error = [], f"<p class=err>{html.escape(str(e))}</p>"
    body = "".join(
        f"<tr><td>v{r.model_version}</td><td>{html.escape(r.created_at[:19])}</td>"
        f"<td>{r.metrics.get('roc_auc', float('nan')):.4f}</td><td>{r.metrics.get('log_loss', float('nan')):.4f}</td>"
        f"<td>{html.escape(r.verdict or 'n/a')}<br><small>{html.escape('; '.join(r.reasons))}</small></td>"
        f"<td>{html.escape(', '.join(r.live_on) or '-')}</td>"
        f"<td>{html.escape('; '.join(f'{k}: {v}' for k, v in r.rejected_by.items()) or '-')}</td>"
        f"<td><code>{html.escape(r.run_id)}</code></td></tr>" for r in rows)
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Retraining loop</title><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;vertical-align:top;text-align:left}.err{color:#b00}small{color:#555}</style></head><body>"
        f"<h2>{html.escape(settings.model_name)} on {html.escape(settings.topic_models)}</h2>"
        f"<p>Kafka {html.escape(settings.kafka_bootstrap_servers)}, status topic "
        f"{html.escape(settings.topic_models_status)}, MLflow {html.escape(settings.mlflow_tracking_uri)}</p>"
        f"{error}<table><tr><th>version</th><th>created (UTC)</th><th>AUC</th><th>log loss</th>"
        "<th>gate decision</th><th>live on scorers</th><th>rejected by</th><th>MLflow run</th></tr>"
        f"{body}</table></body></html>"
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
