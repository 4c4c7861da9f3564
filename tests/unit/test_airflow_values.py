"""deploy/helm/airflow-values.yaml, the values of the official Apache Airflow chart, checked without a cluster: against
that chart's own values schema (1.21.0, vendored), every variable and option against what Airflow and the code read,
the same settings as docker-compose.yml's Airflow services, and the private signing key on the Celery workers alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from ml.kafka_client import env_key
from test_compose import (COMPOSE, EXTRA_PROJECT_ENV, dag_env_and_variables, instructions, interpolate, service_env,
                          settings_env)

REPO = Path(__file__).resolve().parents[2]
VALUES = REPO / "deploy" / "helm" / "airflow-values.yaml"
# chart/values.schema.json of the Airflow Helm chart 1.21.0 (Apache-2.0); see tests/unit/data/NOTICE.md.
SCHEMA = Path(__file__).parent / "data" / "airflow-chart-1.21.0.values.schema.json"
STRIMZI = REPO / "deploy" / "kubernetes" / "strimzi-kafka.yaml"
SIGNING_FILE = "MODEL_SIGNING_KEY_FILE"
# Compose's Airflow options that the chart sets itself: the database, broker and result backend from Secrets, the
# shared JWT and API secret keys (jwtSecretName, apiSecretKeySecretName), the execution API's address (its api-server
# Service), the executor (`executor`), the DAG and plugin folders (checked below), load_examples (off by default), and
# the scheduler's health endpoint (compose's healthcheck; the chart probes with `airflow jobs check`).
CHART_OWN = {"database.sql_alchemy_conn", "celery.broker_url", "celery.result_backend", "api_auth.jwt_secret",
             "api.secret_key", "core.execution_api_server_url", "core.executor", "core.dags_folder",
             "core.plugins_folder", "core.load_examples", "scheduler.enable_health_check"}
# Options whose value is the deployment's own (the URL users open).
OWN_VALUE = {"api.base_url"}


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def compose_airflow() -> dict[str, dict[str, str]]:
    """Compose's Airflow services' environments as they resolve with compose's defaults (secrets as stand-ins)."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    stand_in = {v: f"<{v}>" for v in ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD")}
    return {name: interpolate(service_env(svc), stand_in) for name, svc in services.items()
            if svc.get("build", {}).get("dockerfile") == "infra/airflow/Dockerfile"}


def env_list(items: list[dict]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in items}


def component_env(values: dict) -> dict[str, dict[str, str]]:
    """Variables each part of the values sets: every container (`env`, `secret`), the workers', the triggerer's,
    the API server's."""
    return {"all": {**env_list(values.get("env", [])), **{s["envName"]: f"<{s['secretName']}/{s['secretKey']}>"
                                                           for s in values.get("secret", [])}},
            "workers": env_list(values["workers"]["celery"].get("env", [])),
            "triggerer": env_list(values.get("triggerer", {}).get("env", [])),
            "apiServer": env_list(values.get("apiServer", {}).get("env", []))}


def test_values_validate_against_the_charts_schema(values: dict) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("broken", [
    {"executor": "Celery"},  # not an executor class name
    {"workers": {"celery": {"replicas": "two"}}},
    {"env": [{"name": "KAFKA_SASL_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "loop", "key": "password"}}}]},
], ids=["executor", "replicas", "env-valueFrom"])
def test_the_schema_refuses_broken_values(values: dict, broken: dict) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors({**values, **broken}))


def test_every_variable_and_option_is_read(values: dict) -> None:
    """Each variable is an Airflow option, a Variable or the Kafka connection the code reads, a loop or use-case
    setting, or a librdkafka property (ml.kafka_client.env_key); each `config` entry is an Airflow option."""
    from airflow.configuration import conf

    options = conf.configuration_description
    known = settings_env() | EXTRA_PROJECT_ENV
    dag_env, variables = dag_env_and_variables()
    for part, env in component_env(values).items():
        for var in env:
            if var.startswith("AIRFLOW__"):
                section, key = var[len("AIRFLOW__"):].lower().split("__", 1)
                assert key in options.get(section, {}).get("options", {}), f"{part}: {var} is no Airflow option"
            elif var.startswith("AIRFLOW_VAR_"):
                assert var[len("AIRFLOW_VAR_"):].lower() in variables, f"{part}: no code reads Variable {var}"
            elif var.startswith("AIRFLOW_CONN_"):
                assert var == "AIRFLOW_CONN_KAFKA_DEFAULT", f"{part}: no code reads {var}"
            else:
                assert var in known | dag_env or env_key(var), f"{part}: nothing reads {var}"
    for section, entries in values["config"].items():
        for key in entries:
            assert key in options.get(section, {}).get("options", {}), f"config.{section}.{key} is no Airflow option"


def test_the_same_settings_as_compose(values: dict, compose_airflow: dict[str, dict[str, str]]) -> None:
    """The loop's settings and the Airflow options of docker-compose.yml's Airflow services, here as variables of
    every container or entries of `config`; only the Kafka address differs (and its security settings are added)."""
    compose = compose_airflow["airflow-scheduler"]
    env = component_env(values)["all"]
    loop_vars = {v for v in compose if not v.startswith("AIRFLOW__")}
    added = {v for v in env if env_key(v) and v != "KAFKA_BOOTSTRAP_SERVERS"}  # SASL_SSL to the Strimzi cluster
    assert set(env) - added == loop_vars
    for var in loop_vars - {"KAFKA_BOOTSTRAP_SERVERS", "AIRFLOW_CONN_KAFKA_DEFAULT"}:
        assert env[var] == compose[var], var
    conn = json.loads(env["AIRFLOW_CONN_KAFKA_DEFAULT"])
    assert conn == {"conn_type": "kafka", "extra": {"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]}}
    for var, value in compose.items():
        if not var.startswith("AIRFLOW__"):
            continue
        section, key = var[len("AIRFLOW__"):].lower().split("__", 1)
        if f"{section}.{key}" in CHART_OWN:
            continue
        assert f"{section}.{key}" in OWN_VALUE or str(values["config"][section][key]) == value, var
    assert compose["AIRFLOW__CORE__EXECUTOR"] == values["executor"] == "CeleryExecutor"
    home = values.get("airflowHome", "/opt/airflow")  # the chart's dags_folder; Airflow's default plugins_folder
    assert compose["AIRFLOW__CORE__DAGS_FOLDER"] == f"{home}/dags"
    assert compose["AIRFLOW__CORE__PLUGINS_FOLDER"] == f"{home}/plugins"
    # The worker's own variables: the signing key's file (DUMB_INIT_SETSID is the chart's, as in its worker template).
    worker_only = set(compose_airflow["airflow-worker"]) - set(compose)
    assert worker_only - {"DUMB_INIT_SETSID"} == set(component_env(values)["workers"]) == {SIGNING_FILE}


def test_the_projects_image_with_its_dags_baked_in(values: dict) -> None:
    """The image of infra/airflow/Dockerfile (compose's kafka-retrain-loop/airflow) at its Airflow version, with the
    DAGs and plugins in the image: no git-sync, no DAG volume, no bundled PostgreSQL."""
    dockerfile = REPO / "infra" / "airflow" / "Dockerfile"
    base = [a for i, a in instructions(dockerfile) if i == "FROM"][-1]  # the last stage is the image
    assert values["airflowVersion"] == re.match(r"apache/airflow:([\d.]+)-", base).group(1)
    compose = yaml.safe_load(COMPOSE.read_text())["services"]["airflow-scheduler"]
    assert values["defaultAirflowRepository"] == compose["image"].split(":")[0]
    copies = {a.split()[-1] for i, a in instructions(dockerfile) if i == "COPY"}
    assert {"/opt/airflow/dags", "/opt/airflow/plugins"} <= copies
    assert "gitSync" not in values.get("dags", {}) and "persistence" not in values.get("dags", {})
    assert values["postgresql"]["enabled"] is False and values["data"]["metadataSecretName"]
    assert "metadataConnection" not in values["data"]


def test_the_private_key_is_on_the_workers_only(values: dict) -> None:
    """With the CeleryExecutor the workers run the tasks, publishing included: only they mount the signing key's
    Secret and name its file; no component gets the key as a variable."""
    workers = values["workers"]["celery"]
    volumes = {v["name"]: v for v in workers["extraVolumes"]}
    (secret,) = [v for v in volumes.values() if v.get("secret", {}).get("secretName") == "model-signing-key"]
    (mount,) = [m for m in workers["extraVolumeMounts"] if m["name"] == secret["name"]]
    assert mount["readOnly"] is True and secret["secret"]["defaultMode"] == 0o440
    assert env_list(workers["env"])[SIGNING_FILE].startswith(mount["mountPath"] + "/")
    text = VALUES.read_text()
    assert text.count("secretName: model-signing-key") == 1
    for part, env in component_env(values).items():
        assert "MODEL_SIGNING_KEY" not in env, part
        assert (SIGNING_FILE in env) == (part == "workers"), part


def test_secrets_come_from_secrets(values: dict) -> None:
    """No password, key or connection string in the file: Kafka's password from the KafkaUser's Secret, the
    metadata database, broker, Fernet, JWT and API keys and the admin password from Secrets named here."""
    env = component_env(values)["all"]
    for var, value in env.items():
        if re.search(r"PASSWORD|SECRET|_KEY$|JAAS", var):
            assert value.startswith("<"), f"{var} given as a value"
    (password,) = values["secret"]
    users = [d for d in yaml.safe_load_all(STRIMZI.read_text()) if d and d["kind"] == "KafkaUser"]
    assert (password["envName"], password["secretKey"]) == ("KAFKA_SASL_PASSWORD", "password")
    assert password["secretName"] == env["KAFKA_SASL_USERNAME"] in {u["metadata"]["name"] for u in users}
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key]
    for key in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert key not in values
    code = "\n".join(line for line in VALUES.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"://[^/\s'\"]*:[^@/\s'\"]+@", code), "credentials in a URL"


def test_airflow_and_the_scorers_share_cluster_keys_and_topics(values: dict) -> None:
    """The same Kafka (the secured example's address and CA Secret), the same trusted public keys and the same topic
    naming as the scorers' chart: the DAGs and the scorers must agree on all three. The chart's live monitors, which
    publish as the workers do, are the workers' KafkaUser."""
    chart = REPO / "deploy" / "helm" / "retrain-loop-scorer"
    scorers = yaml.safe_load((chart / "values.yaml").read_text())
    secured = yaml.safe_load((chart / "values-sasl-ssl.yaml").read_text())["kafka"]
    env = component_env(values)["all"]
    volumes = {v["name"]: v for v in values["volumes"]}
    mounts = {m["name"]: m for m in values["volumeMounts"]}
    assert all(m["readOnly"] for m in mounts.values())
    trusted = volumes["trusted-keys"]["secret"]["secretName"]
    assert trusted == scorers["modelTrust"]["existingSecret"]
    assert env["MODEL_TRUSTED_KEYS_DIR"] == mounts["trusted-keys"]["mountPath"] == scorers["modelTrust"]["mountPath"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == secured["bootstrapServers"]
    assert (env["KAFKA_SECURITY_PROTOCOL"], env["KAFKA_SASL_MECHANISM"]) == (secured["securityProtocol"],
                                                                           secured["sasl"]["mechanism"])
    ca = volumes["kafka-ca"]["secret"]
    assert ca["secretName"] == secured["tls"]["existingSecret"]
    assert env["KAFKA_SSL_CA_LOCATION"] == f"{mounts['kafka-ca']['mountPath']}/{secured['tls']['caKey']}"
    assert ca["items"] == [{"key": secured["tls"]["caKey"], "path": secured["tls"]["caKey"]}]
    assert env["TOPIC_PREFIX"] == scorers["topics"]["prefix"]
    assert int(env["TOPIC_PARTITIONS"]) == scorers["topics"]["partitions"]
    # The scorers' chart's live monitors publish signed envelopes as the workers do: the same KafkaUser and Secret.
    monitor = yaml.safe_load((chart / "values-sasl-ssl.yaml").read_text())["monitor"]["kafka"]["sasl"]
    (password,) = values["secret"]
    assert (monitor["username"], monitor["existingSecret"], monitor["passwordKey"]) == (
        env["KAFKA_SASL_USERNAME"], password["secretName"], password["secretKey"])
