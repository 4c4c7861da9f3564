"""The few Airflow REST API calls the demo makes, as the UI makes them (JWT from ``POST /auth/token``)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from infra.airflow import local

TERMINAL_RUN = frozenset({"success", "failed"})
TERMINAL_TASK = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class AirflowApiError(RuntimeError):
    """The API refused a call or a run did not finish in time."""


class AirflowApi:
    """Calls on one DAG of a local Airflow."""

    def __init__(self, cfg: local.AirflowConfig, dag_id: str) -> None:
        self.cfg, self.dag_id = cfg, dag_id
        self._token = local.token(cfg)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"{self.cfg.url}/api/v2{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self._token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait_parsed_and_unpause(self, timeout: float = 180.0) -> None:
        """Wait until the DAG processor has parsed the DAG, then unpause it."""
        deadline = time.monotonic() + timeout
        while self.call("GET", f"/dags/{self.dag_id}")[0] != 200:
            if time.monotonic() > deadline:
                raise AirflowApiError(f"DAG {self.dag_id} not parsed within {timeout:.0f} s; see "
                                      f"{self.cfg.log_file}")
            time.sleep(2)
        status, body = self.call("PATCH", f"/dags/{self.dag_id}", {"is_paused": False})
        if status != 200:
            raise AirflowApiError(f"unpausing {self.dag_id}: HTTP {status} {body}")

    def trigger(self, run_id: str, conf: dict[str, Any]) -> str:
        """A manual run with ``conf`` as its Params; returns its run id."""
        status, body = self.call("POST", f"/dags/{self.dag_id}/dagRuns", {
            "dag_run_id": run_id, "logical_date": datetime.now(UTC).isoformat(), "conf": conf})
        if status != 200:
            raise AirflowApiError(f"triggering {self.dag_id} run {run_id}: HTTP {status} {body}")
        return body["dag_run_id"]

    def run(self, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/dags/{self.dag_id}/dagRuns/{run_id}")[1]

    def task_states(self, run_id: str) -> dict[str, str | None]:
        tis = self.call("GET", f"/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances")[1]
        return {ti["task_id"]: ti["state"] for ti in tis.get("task_instances", [])}

    def wait_task(self, run_id: str, task_id: str, timeout: float) -> str | None:
        """The state of ``task_id`` once it is final (or the run is); raises AirflowApiError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.task_states(run_id).get(task_id)
            if state in TERMINAL_TASK or self.run(run_id).get("state") in TERMINAL_RUN:
                return state
            time.sleep(1)
        raise AirflowApiError(f"task {task_id} of run {run_id} not finished within {timeout:.0f} s")

    def wait_run(self, run_id: str, timeout: float) -> dict[str, Any]:
        """The run once it succeeded or failed; raises AirflowApiError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run.get("state") in TERMINAL_RUN:
                return run
            time.sleep(2)
        raise AirflowApiError(f"run {run_id} not finished within {timeout:.0f} s")
