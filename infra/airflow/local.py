"""A local Airflow (``airflow standalone``: API server, scheduler, DAG processor, triggerer) for the demo.

``Airflow`` (an ``infra.local_service.LocalService``) runs it in its own process group with AIRFLOW_HOME under
``.local/airflow``, the repo's ``dags/`` and ``plugins/``, no example DAGs and parallelism sized for two cores;
``stop`` signals the whole group (SIGTERM to standalone alone would orphan its children). The same
environment serves ``dag.test()`` in the tests (``airflow_env``).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.local_service import AbsolutePath, LocalService, ServiceError
from ml.kafka_client import KafkaClientSettings

REPO = Path(__file__).resolve().parents[2]
PID_FILE = "standalone.pid"
LOG_FILE = "standalone.log"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
ADMIN_USER = "admin"


class AirflowSetupError(ServiceError):
    """Local Airflow could not be started or reached."""


class AirflowConfig(BaseSettings):
    """Where a local Airflow keeps its files and listens, and what it connects to; from AIRFLOW_LOCAL_HOME,
    AIRFLOW_PORT and KAFKA_BOOTSTRAP_SERVERS when not given."""

    # populate_by_name: callers pass home= and kafka_bootstrap_servers=, the environment the aliases.
    model_config = SettingsConfigDict(env_prefix="AIRFLOW_", extra="ignore", frozen=True, populate_by_name=True,
                                      hide_input_in_errors=True)

    # Not AIRFLOW_HOME: that one belongs to whatever Airflow the calling shell uses.
    home: AbsolutePath = Field(REPO / ".local" / "airflow", validation_alias="AIRFLOW_LOCAL_HOME")
    port: int = 8080
    kafka_bootstrap_servers: str = Field("localhost:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    # Two cores shared with TensorFlow: two task processes at a time, one run of the DAG at a time.
    parallelism: int = 2

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.home / LOG_FILE


def airflow_env(cfg: AirflowConfig, loop_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables of every Airflow process of ``cfg`` (add them to os.environ or pass to Popen).

    ``loop_env`` adds LoopSettings variables (topics, data dir, ...) that the task processes inherit.
    """
    # The tasks and the AssetWatcher's trigger take the Kafka client settings (bootstrap servers, security,
    # credentials: the environment's KAFKA_CLIENT_CONFIG file and KAFKA_* variables) from it.
    client = KafkaClientSettings(kafka_bootstrap_servers=cfg.kafka_bootstrap_servers).kafka_config()
    kafka = {"conn_type": "kafka", "extra": client}
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


def health(cfg: AirflowConfig, timeout: float = 2.0) -> dict | None:
    """``/api/v2/monitor/health`` (no auth needed), or None while the API server does not answer."""
    try:
        with urllib.request.urlopen(f"{cfg.url}/api/v2/monitor/health", timeout=timeout) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def admin_password(cfg: AirflowConfig, user: str = ADMIN_USER) -> str:
    """The password the simple auth manager generated for ``user`` (admin by default) on first start."""
    try:
        return json.loads((cfg.home / PASSWORDS_FILE).read_text())[user]
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise AirflowSetupError(f"no password of {user} in {cfg.home / PASSWORDS_FILE}: {e}") from e


def token(cfg: AirflowConfig, user: str = ADMIN_USER) -> str:
    """A JWT for the REST API, as the UI gets it: ``POST /auth/token`` with the login of ``user`` (admin)."""
    body = json.dumps({"username": user, "password": admin_password(cfg, user)}).encode()
    req = urllib.request.Request(f"{cfg.url}/auth/token", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["access_token"]


def api(cfg: AirflowConfig, method: str, path: str, jwt: str | None = None,
        body: dict | None = None) -> tuple[int, dict]:
    """One REST API call as the UI makes it (a JWT from ``token`` unless given): the status and the JSON body."""
    req = urllib.request.Request(f"{cfg.url}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {jwt or token(cfg)}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Airflow(LocalService):
    """``airflow standalone`` of ``cfg``; ``loop_env`` adds the loop's settings that its task processes
    inherit (see ``airflow_env``)."""

    pid_name, log_name = PID_FILE, LOG_FILE
    marker = b"standalone"
    cwd = REPO
    error = AirflowSetupError
    start_timeout, poll_s = 180.0, 1.0

    def __init__(self, cfg: AirflowConfig, loop_env: dict[str, str] | None = None) -> None:
        super().__init__(cfg.home)
        self.cfg, self.loop_env = cfg, loop_env

    @property
    def name(self) -> str:
        return f"Airflow on {self.cfg.url}"

    def command(self) -> list[str]:
        return [str(Path(sys.executable).with_name("airflow")), "standalone"]

    def environment(self) -> dict[str, str]:
        return airflow_env(self.cfg, self.loop_env)

    def ports(self) -> list[tuple[int, str, str]]:
        return [(self.cfg.port, "Airflow API server", "AIRFLOW_PORT")]

    def describe(self) -> str:
        try:
            login = f"login {ADMIN_USER} / {admin_password(self.cfg)}"
        except AirflowSetupError as exc:  # not started yet from this home
            login = str(exc)
        return f"; {login}; loop page {self.cfg.url}/retrain-loop/"

    def healthy(self) -> bool:
        """True once the API server answers and reports the scheduler healthy."""
        return (health(self.cfg) or {}).get("scheduler", {}).get("status") == "healthy"
