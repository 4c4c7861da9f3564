"""The scorer's command line: the console script and `python -m scoring_service` document every setting."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from pydantic import ValidationError

from scoring_service.app import consumer_config
from scoring_service.cli import ENV_ONLY
from scoring_service.config import ScorerSettings


@pytest.fixture(scope="module")
def console_script() -> str:
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "scoring-service"]
    assert entry.value == "scoring_service.cli:main"
    path = shutil.which("scoring-service", path=str(Path(sys.executable).parent))
    assert path, "the scoring-service console script is not installed beside this interpreter"
    return path


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_help_names_every_setting_its_flag_and_environment_variable(console_script, how):
    argv = [console_script] if how == "console script" else [sys.executable, "-m", "scoring_service"]
    env = {**os.environ, "COLUMNS": "250", "TERM": "dumb"}
    out = subprocess.run([*argv, "--help"], capture_output=True, text=True, check=True, env=env, timeout=60).stdout
    out = " ".join(out.replace("│", " ").split())  # one line: rich wraps a long help over the column's lines
    for name in ScorerSettings.model_fields:
        if name in ENV_ONLY:
            assert f"--{name.replace('_', '-')}" not in out  # a credential is never a flag
            continue
        assert f"--{name.replace('_', '-')}" in out, name
        assert f"env {name.upper()}" in out, name


def test_invalid_settings_exit_with_a_clear_error(console_script):
    result = subprocess.run([console_script, "--batch-size", "0"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 2
    assert "invalid settings" in result.stderr and "batch_size" in result.stderr


def test_an_unknown_use_case_and_a_bad_topic_map_are_named(console_script):
    env = {**os.environ, "COLUMNS": "250"}
    unknown = subprocess.run([console_script, "--use-case", "churn"], capture_output=True, text=True, timeout=60,
                             env=env)
    assert unknown.returncode == 2 and "unknown use case 'churn'" in unknown.stderr
    assert "flight_delay" in unknown.stderr  # the registered ones are listed
    bad_json = subprocess.run([console_script, "--use-case", "flight_delay", "--topic-names", "{not json"],
                              capture_output=True, text=True, timeout=60, env=env)
    assert bad_json.returncode == 2 and "invalid settings" in bad_json.stderr


def test_the_use_case_names_the_topics_group_and_model_and_a_map_renames_topics():
    s = ScorerSettings(use_case="sensor_anomaly", topic_prefix="team-a.",
                       topic_names={"sensors.dlq": "quarantine"})
    assert (s.input_topic, s.output_topic, s.dlq_topic) == ("team-a.sensors.readings", "team-a.sensors.scores",
                                                            "quarantine")
    assert (s.models_topic, s.status_topic) == ("team-a.models", "team-a.models.status")
    assert (s.group_id, s.model_name) == ("sensor-anomaly-scorer", "sensor_anomaly")
    assert s.producer_transactional_id.startswith("sensor-anomaly-scorer-")


def test_the_replica_name_makes_the_static_member_and_the_transactional_id():
    s = ScorerSettings(use_case="flight_delay", replica_name="scorer-7")
    assert s.group_instance_id == s.producer_transactional_id == "flight-delay-scorer-scorer-7"
    assert s.model_copy(update={"replica_name": "b"}).producer_transactional_id == "flight-delay-scorer-b"
    assert ScorerSettings(use_case="flight_delay").replica_name == socket.gethostname()
    assert ScorerSettings(use_case="flight_delay", static_membership=False).group_instance_id is None
    config = consumer_config(s, "client")
    assert config["group.instance.id"] == "flight-delay-scorer-scorer-7"
    assert (config["session.timeout.ms"], config["heartbeat.interval.ms"]) == (30_000, 50)
    assert "group.instance.id" not in consumer_config(s.model_copy(update={"static_membership": False}), "client")


def test_a_scorer_holds_public_keys_only_and_reads_revocations_as_lists(tmp_path, monkeypatch):
    assert not [name for name in ScorerSettings.model_fields if "signing" in name]
    with pytest.raises(ValidationError, match="model_signing_key"):
        ScorerSettings(use_case="flight_delay", model_signing_key="-----BEGIN PRIVATE KEY-----")
    monkeypatch.setenv("MODEL_TRUSTED_KEYS_DIR", str(tmp_path))
    monkeypatch.setenv("MODEL_REVOKED_KEYS", "old-key, leaked-key")
    monkeypatch.setenv("MODEL_REVOKED_VERSIONS", "[7, 9]")
    s = ScorerSettings(use_case="flight_delay")
    trust = s.trust_store()
    assert (trust.keys_dir, trust.model_name) == (tmp_path, "flight_delay")
    assert (trust.revoked_keys, trust.revoked_versions) == ({"old-key", "leaked-key"}, {7, 9})
    assert ScorerSettings(use_case="flight_delay", model_revoked_versions="3,4").model_revoked_versions == [3, 4]
    with pytest.raises(ValidationError, match="model_revoked_versions"):
        ScorerSettings(use_case="flight_delay", model_revoked_versions="three")


def test_a_heartbeat_longer_than_a_third_of_the_session_is_refused(console_script):
    with pytest.raises(ValidationError, match="heartbeat_interval_ms"):
        ScorerSettings(use_case="flight_delay", session_timeout_ms=6000, heartbeat_interval_ms=3000)
    off = subprocess.run([console_script, "--use-case", "flight_delay", "--no-static-membership",
                          "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "5000"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert off.returncode == 2 and "heartbeat_interval_ms" in off.stderr
