"""Typed settings of the live monitor (``MONITOR_*`` and ``AIRFLOW_API_*`` variables), over the loop's own: it
reads the use case's topics, logs to its MLflow, and publishes versions with its signing key."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, model_validator

from ml.monitoring.policy import MonitorPolicy
from ml.settings import LoopSettings


class MonitorSettings(LoopSettings):
    """One monitor per use case (``USE_CASE``)."""

    monitor_window_events: int = Field(2000, ge=50, description="Labelled predictions per live-metric window (per "
                                       "model version); each closed window is one point of the live metric.")
    monitor_shadow_window_events: int = Field(5000, ge=50, description="Labelled events scored by both champion "
                                              "and shadow before the shadow is promoted or retired.")
    monitor_rollback_margin: float = Field(0.05, ge=0, description="Roll back when the serving version's metric "
                                           "on a window's events is worse than the previous version's on the same "
                                           "events by more.")
    monitor_rollback_floor: float | None = Field(None, description="Roll back when the serving version's window "
                                                 "metric is worse than this (unset: no floor).")
    monitor_retrain_margin: float = Field(0.03, ge=0, description="Ask for a retraining when the serving version's "
                                          "window metric is worse than its gate-time value by more.")
    monitor_drift_threshold: float = Field(0.25, gt=0, description="Ask for a retraining when a feature's PSI "
                                           "against the serving version's training data passes this.")
    monitor_shadow_margin: float = Field(0.0, ge=0, description="Promote a shadow whose metric is worse than the "
                                         "champion's on the same events by at most this.")
    monitor_label_rows: int = Field(20_000, ge=100, description="Recent label records kept by key, from which a "
                                    "closed window's events are scored again by the previous version.")
    monitor_retrain_cooldown_s: float = Field(3600.0, ge=0, description="At most one retraining request per "
                                              "serving version in this long.")
    monitor_actions: bool = Field(True, description="Act on decisions (off: decide, record and report only).")
    monitor_start: Literal["earliest", "latest"] = Field("earliest", description="Where the monitor starts "
                                                         "reading at start-up: the retained history, or new records.")
    monitor_max_pending: int = Field(500_000, ge=1000, description="Predictions and labels kept waiting for "
                                     "their other half, per kind (oldest dropped first).")
    monitor_drift_rows: int = Field(50_000, ge=100, description="Recent labelled rows kept for the drift of a "
                                    "window.")
    monitor_http_port: int | None = Field(9108, ge=0, le=65535, description="Port of /metrics (0: any free "
                                          "port; unset: no endpoint).")
    airflow_api_url: str | None = Field(None, description="Airflow's API server (e.g. http://localhost:8080) the "
                                        "monitor starts retraining runs on; unset: requests are recorded only.")
    airflow_api_username: str | None = None
    airflow_api_password: SecretStr | None = None
    airflow_api_password_file: Path | None = Field(None, description="A file holding the password instead (a "
                                                   "mounted secret), read when the monitor starts; not with "
                                                   "AIRFLOW_API_PASSWORD.")

    _password: SecretStr | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_airflow_password(self) -> MonitorSettings:
        """Read the password once, at start-up: an unreadable or empty file fails here, naming the file and never
        its content, not at the first request."""
        path = self.airflow_api_password_file
        if path is None:
            self._password = self.airflow_api_password
            return self
        if self.airflow_api_password is not None:
            raise ValueError("set AIRFLOW_API_PASSWORD or AIRFLOW_API_PASSWORD_FILE, not both")
        try:
            password = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise ValueError(f"cannot read AIRFLOW_API_PASSWORD_FILE {path}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ValueError(f"AIRFLOW_API_PASSWORD_FILE {path} is not UTF-8 text") from e
        if not password:
            raise ValueError(f"AIRFLOW_API_PASSWORD_FILE {path} is empty")
        self._password = SecretStr(password)
        return self

    def airflow_password(self) -> str | None:
        """The Airflow API password: AIRFLOW_API_PASSWORD, or the content of AIRFLOW_API_PASSWORD_FILE without
        its final line break (as read at start-up); None when neither is set."""
        return self._password.get_secret_value() if self._password is not None else None

    @model_validator(mode="after")
    def _windows_fit_in_the_label_rows(self) -> MonitorSettings:
        if self.monitor_label_rows < self.monitor_window_events:
            raise ValueError("monitor_label_rows must hold at least a window (monitor_window_events) of label rows")
        return self

    def policy(self) -> MonitorPolicy:
        return MonitorPolicy(rollback_margin=self.monitor_rollback_margin, rollback_floor=self.monitor_rollback_floor,
                             retrain_margin=self.monitor_retrain_margin,
                             drift_threshold=self.monitor_drift_threshold, shadow_margin=self.monitor_shadow_margin)

    @property
    def decision_log(self):
        """The JSON-lines log of every decision the monitor took (also in MLflow)."""
        return self.loop_data_dir / "monitor" / f"{self.use_case}.decisions.jsonl"
