"""Starting a DAG run through Airflow's REST API (v2), as the UI does: a JWT from ``POST /auth/token``, then
``POST /api/v2/dags/<dag>/dagRuns`` with the run's conf. The monitor asks for retraining runs this way, so the
reason is the run's conf, seen in the UI beside the Params."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from ml.errors import LoopError

log = logging.getLogger(__name__)
TIMEOUT_S = 30.0


class AirflowRuns:
    """Triggers runs of DAGs on one Airflow API server."""

    def __init__(self, url: str, username: str | None, password: str | None) -> None:
        self.url, self._username, self._password = url.rstrip("/"), username, password

    def _call(self, method: str, path: str, body: dict, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, method=method, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise LoopError(f"Airflow API {method} {path}: HTTP {e.code} {e.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            raise LoopError(f"Airflow API at {self.url} unreachable: {e}") from None

    def _token(self) -> str | None:
        if not self._username:
            return None
        body = self._call("POST", "/auth/token", {"username": self._username, "password": self._password or ""})
        return body["access_token"]

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> str:
        """Start a run of ``dag_id`` with ``conf``; returns its run id. Raises LoopError when refused."""
        body = self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                          {"dag_run_id": run_id, "logical_date": datetime.now(UTC).isoformat(), "conf": conf},
                          self._token())
        log.info("started %s run %s on %s", dag_id, body.get("dag_run_id"), self.url)
        return body["dag_run_id"]
