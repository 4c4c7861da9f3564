"""A local MLflow tracking server (``mlflow server``: SQLite backend, artifacts served) for the demo.

It runs in its own process group (the server forks uvicorn workers) with its files under ``.local/mlflow``
unless told otherwise; ``stop`` signals the whole group.
"""

from __future__ import annotations

import logging
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
PID_FILE = "server.pid"
LOG_FILE = "server.log"


class MlflowSetupError(RuntimeError):
    """The local MLflow server could not be started or reached."""


@dataclass(frozen=True)
class MlflowConfig:
    """Where a local MLflow server keeps its store and artifacts, and where it listens."""

    home: Path = REPO / ".local" / "mlflow"
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

    @property
    def pid_file(self) -> Path:
        return self.home / PID_FILE

    @property
    def log_file(self) -> Path:
        return self.home / LOG_FILE


def running_pid(cfg: MlflowConfig) -> int | None:
    """The pid of the server recorded in ``cfg.home`` if it is still alive."""
    return process_group.recorded_pid(cfg.pid_file, b"mlflow")


def healthy(cfg: MlflowConfig, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{cfg.url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(cfg: MlflowConfig, timeout: float = 120.0) -> subprocess.Popen:
    """Start ``mlflow server`` in its own process group; return once ``/health`` answers.

    Raises MlflowSetupError when the port is taken or the server does not come up (the log tail says why).
    """
    if healthy(cfg):
        raise MlflowSetupError(f"something already answers on {cfg.url}: stop it or choose another port "
                               f"(MLFLOW_PORT)")
    cfg.artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(cfg.port), "--workers", "1",
           "--backend-store-uri", cfg.backend_store_uri, "--serve-artifacts",
           "--artifacts-destination", cfg.artifacts.as_uri()]
    with open(cfg.log_file, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    cfg.pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(cfg):
            log.info("MLflow ready on %s (pid %d, store %s)", cfg.url, proc.pid, cfg.backend_store_uri)
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop(cfg)
    raise MlflowSetupError(f"MLflow did not answer on {cfg.url} within {timeout:.0f} s; last lines of "
                           f"{cfg.log_file}:\n{log_tail(cfg)}")


def stop(cfg: MlflowConfig, timeout: float = 20.0) -> bool:
    """SIGTERM the server's process group, SIGKILL after ``timeout``; False when nothing ran from ``cfg.home``."""
    pid = process_group.stop_recorded(cfg.pid_file, b"mlflow", f"MLflow on {cfg.url}", timeout)
    if pid is None:
        return False
    log.info("MLflow (process group %d) on %s stopped", pid, cfg.url)
    return True


def log_tail(cfg: MlflowConfig, lines: int = 30) -> str:
    try:
        return "\n".join(cfg.log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log yet)"
