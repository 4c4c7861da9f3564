"""A local Airflow (``airflow standalone``: API server, scheduler, DAG processor, triggerer) for the demo.

It runs in its own process group with AIRFLOW_HOME under ``.local/airflow``, the repo's ``dags/`` and
``plugins/``, no example DAGs and parallelism sized for two cores; ``stop`` signals the whole group
(SIGTERM to standalone alone would orphan its children). The same environment serves ``dag.test()`` in
the tests (``airflow_env``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra import process_group

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PID_FILE = "standalone.pid"
LOG_FILE = "standalone.log"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
ADMIN_USER = "admin"


class AirflowSetupError(RuntimeError):
    """Local Airflow could not be started or reached."""


@dataclass(frozen=True)
class AirflowConfig:
    """Where a local Airflow keeps its files and listens, and what it connects to."""

    home: Path = REPO / ".local" / "airflow"
    port: int = 8080
    kafka_bootstrap_servers: str = "localhost:9092"
    # Two cores shared with TensorFlow: two task processes at a time, one run of the DAG at a time.
    parallelism: int = 2

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / PID_FILE

    @property
    def log_file(self) -> Path:
        return self.home / LOG_FILE


def airflow_env(cfg: AirflowConfig, loop_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables of every Airflow process of ``cfg`` (add them to os.environ or pass to Popen).

    ``loop_env`` adds LoopSettings variables (topics, data dir, ...) that the task processes inherit.
    """
    kafka = {"conn_type": "kafka", "extra": {
        "bootstrap.servers": cfg.kafka_bootstrap_servers,
        # The AssetWatcher's consumer group: its committed offsets are where the trigger resumes.
        "group.id": "airflow-retrain-watcher", "auto.offset.reset": "earliest"}}
    return {
        "AIRFLOW_HOME": str(cfg.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(cfg.parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(cfg.parallelism),
        "AIRFLOW__API__PORT": str(cfg.port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": cfg.url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.url}/execution/",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW_CONN_KAFKA_DEFAULT": json.dumps(kafka),
        # Absolute paths: the task processes and the plugin must agree whatever their working directory.
        "LOOP_DATA_DIR": str(REPO / ".local" / "data"),
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": f"sqlite:///{REPO / '.local' / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(REPO / ".local" / "mlflow" / "artifacts"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        # standalone starts its components as `airflow ...` from PATH: the venv's must come first.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        **(loop_env or {}),
    }


def running_pid(cfg: AirflowConfig) -> int | None:
    """The pid of ``airflow standalone`` recorded in ``cfg.home`` if it is still alive."""
    return process_group.recorded_pid(cfg.pid_file, b"standalone")


def healthy(cfg: AirflowConfig, timeout: float = 2.0) -> dict | None:
    """``/api/v2/monitor/health`` (no auth needed), or None while the API server does not answer."""
    try:
        with urllib.request.urlopen(f"{cfg.url}/api/v2/monitor/health", timeout=timeout) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def admin_password(cfg: AirflowConfig) -> str:
    """The password the simple auth manager generated for ``admin`` on first start."""
    try:
        return json.loads((cfg.home / PASSWORDS_FILE).read_text())[ADMIN_USER]
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise AirflowSetupError(f"no admin password in {cfg.home / PASSWORDS_FILE}: {e}") from e


def token(cfg: AirflowConfig) -> str:
    """A JWT for the REST API, as the UI gets it: ``POST /auth/token`` with the admin login."""
    body = json.dumps({"username": ADMIN_USER, "password": admin_password(cfg)}).encode()
    req = urllib.request.Request(f"{cfg.url}/auth/token", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["access_token"]


def start(cfg: AirflowConfig, *, loop_env: dict[str, str] | None = None, timeout: float = 180.0
          ) -> subprocess.Popen:
    """Start ``airflow standalone`` in its own process group; return once the scheduler is healthy.

    Raises AirflowSetupError when the port is taken or Airflow does not come up (the log tail says why).
    """
    if healthy(cfg) is not None:
        raise AirflowSetupError(f"something already answers on {cfg.url}: stop it or choose another port "
                                f"(AIRFLOW_PORT)")
    cfg.home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).with_name("airflow")
    with open(cfg.log_file, "ab") as out:
        proc = subprocess.Popen([str(airflow), "standalone"], cwd=REPO, env={**os.environ,
                                **airflow_env(cfg, loop_env)}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    cfg.pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = healthy(cfg)
        if health and health.get("scheduler", {}).get("status") == "healthy":
            log.info("Airflow ready on %s (pid %d, home %s)", cfg.url, proc.pid, cfg.home)
            return proc
        if proc.poll() is not None:
            break
        time.sleep(1.0)
    stop(cfg)
    raise AirflowSetupError(f"Airflow did not become healthy on {cfg.url} within {timeout:.0f} s; "
                            f"last lines of {cfg.log_file}:\n{log_tail(cfg)}")


def stop(cfg: AirflowConfig, timeout: float = 30.0) -> bool:
    """SIGTERM the process group of standalone (API server, scheduler, workers), SIGKILL after ``timeout``.

    Returns False when nothing was running from ``cfg.home``.
    """
    pid = process_group.stop_recorded(cfg.pid_file, b"standalone", f"Airflow on {cfg.url}", timeout)
    if pid is None:
        return False
    log.info("Airflow (process group %d) on %s stopped", pid, cfg.url)
    return True


def log_tail(cfg: AirflowConfig, lines: int = 30) -> str:
    try:
        return "\n".join(cfg.log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log yet)"
