"""A local MLflow tracking server (``mlflow server``: SQLite backend, artifacts served) for the demo.

``Mlflow`` (an ``infra.local_service.LocalService``) runs it in its own process group (the server forks
uvicorn workers) with its files under ``.local/mlflow`` unless told otherwise; ``stop`` signals the whole group.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.local_service import AbsolutePath, LocalService, ServiceError, answers

REPO = Path(__file__).resolve().parents[2]
PID_FILE = "server.pid"
LOG_FILE = "server.log"


class MlflowSetupError(ServiceError):
    """The local MLflow server could not be started or reached."""


class MlflowConfig(BaseSettings):
    """Where a local MLflow server keeps its store and artifacts, and where it listens; from MLFLOW_LOCAL_HOME
    and MLFLOW_PORT when not given."""

    # populate_by_name: callers pass home=, the environment MLFLOW_LOCAL_HOME.
    model_config = SettingsConfigDict(env_prefix="MLFLOW_", extra="ignore", frozen=True, populate_by_name=True,
                                      hide_input_in_errors=True)

    home: AbsolutePath = Field(REPO / ".local" / "mlflow", validation_alias="MLFLOW_LOCAL_HOME")
    port: int = 5000

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"


class Mlflow(LocalService):
    """``mlflow server`` of ``cfg``."""

    pid_name, log_name = PID_FILE, LOG_FILE
    cwd = REPO
    error = MlflowSetupError
    stop_timeout = 20.0

    def __init__(self, cfg: MlflowConfig) -> None:
        super().__init__(cfg.home)
        self.cfg = cfg

    @property
    def name(self) -> str:
        return f"MLflow on {self.cfg.url}"

    @property
    def marker(self) -> bytes:
        # The store is in the command line: another MLflow server is not this one.
        return self.cfg.backend_store_uri.encode()

    def command(self) -> list[str]:
        return [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                "--port", str(self.cfg.port), "--workers", "1", "--backend-store-uri", self.cfg.backend_store_uri,
                "--serve-artifacts", "--artifacts-destination", self.cfg.artifacts.as_uri()]

    def ports(self) -> list[tuple[int, str, str]]:
        return [(self.cfg.port, "MLflow server", "MLFLOW_PORT")]

    def prepare(self) -> None:
        self.cfg.artifacts.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"; store {self.cfg.backend_store_uri}"

    def healthy(self) -> bool:
        return answers(f"{self.cfg.url}/health")
