"""The monitor's Airflow API password: from AIRFLOW_API_PASSWORD or from a file (a mounted secret), never both."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ml.monitoring.settings import MonitorSettings


@pytest.fixture(autouse=True)
def _no_password_in_env(monkeypatch):
    monkeypatch.delenv("AIRFLOW_API_PASSWORD", raising=False)
    monkeypatch.delenv("AIRFLOW_API_PASSWORD_FILE", raising=False)


def test_the_password_comes_from_the_variable_or_from_the_file(monkeypatch, tmp_path):
    assert MonitorSettings().airflow_password() is None
    monkeypatch.setenv("AIRFLOW_API_PASSWORD", "pw from env")
    assert MonitorSettings().airflow_password() == "pw from env"
    monkeypatch.delenv("AIRFLOW_API_PASSWORD")
    secret = tmp_path / "airflow-password"
    secret.write_text(" pw  from a file \n")  # a final line break is not part of it, spaces are
    monkeypatch.setenv("AIRFLOW_API_PASSWORD_FILE", str(secret))
    settings = MonitorSettings()
    assert settings.airflow_password() == " pw  from a file "
    secret.write_text("rotated\n")  # read once, at start-up: a restart picks a rotated secret up
    assert settings.airflow_password() == " pw  from a file "
    assert " pw" not in repr(settings) and " pw" not in str(settings.model_dump())


def test_both_an_unreadable_or_an_empty_file_fail_at_start_up_without_the_secret(monkeypatch, tmp_path):
    secret = tmp_path / "airflow-password"
    secret.write_text("s3cret-value\n")
    monkeypatch.setenv("AIRFLOW_API_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("AIRFLOW_API_PASSWORD", "other")
    with pytest.raises(ValidationError, match="not both"):
        MonitorSettings()
    monkeypatch.delenv("AIRFLOW_API_PASSWORD")
    for path, content, message in ((tmp_path / "missing", None, "cannot read"), (tmp_path / "empty", "\n", "empty"),
                                   (tmp_path / "binary", b"\xff\xfe", "not UTF-8")):
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        monkeypatch.setenv("AIRFLOW_API_PASSWORD_FILE", str(path))
        with pytest.raises(ValidationError, match=message) as failed:
            MonitorSettings()
        assert str(path) in str(failed.value) and "s3cret" not in str(failed.value)


def test_a_settings_error_never_shows_the_secrets_it_was_given(monkeypatch):
    """A model-level check fails on the whole input: pydantic would print it, secrets included."""
    monkeypatch.setenv("AIRFLOW_API_PASSWORD", "topsecret-airflow")
    monkeypatch.setenv("MONITOR_LABEL_ROWS", "100")
    monkeypatch.setenv("MONITOR_WINDOW_EVENTS", "200")
    with pytest.raises(ValidationError, match="must hold at least a window") as failed:
        MonitorSettings()
    assert "topsecret" not in str(failed.value)
