"""Static checks of the Kubernetes deployment, without a cluster.

The scorers' chart (deploy/helm/retrain-loop-scorer/) linted and rendered by Helm with its default values and with the
secured example; every rendered object validated against the Kubernetes schemas (kubernetes-validate) or KEDA's CRDs;
the rendered environment against the settings the code reads and against docker-compose.yml's scorers and monitors;
probes against what the scorer and the monitor serve; KEDA's group and topic against the scorer's own; replicas
against partitions; one monitor per use case, with the Airflow workers' data, key and API; secrets only through
Secrets. The Strimzi example (deploy/kubernetes/strimzi-kafka.yaml) against Strimzi's CRDs, ml/topics.py and
ml/acls.py. Helm is .local/bin/helm (`make helm`) or the one on PATH.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ml import acls, use_cases
from ml.client_ids import scorer_group
from ml.kafka_client import env_key
from ml.monitoring.settings import MonitorSettings
from ml.settings import LoopSettings
from ml.topics import topic_specs
from scoring_service.config import ScorerSettings
from test_compose import COMPOSE, EXTRA_PROJECT_ENV, example_env, interpolate, monitor_env, service_env

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "retrain-loop-scorer"
SECURED_VALUES = CHART / "values-sasl-ssl.yaml"
AIRFLOW_VALUES = REPO / "deploy" / "helm" / "airflow-values.yaml"
STRIMZI = REPO / "deploy" / "kubernetes" / "strimzi-kafka.yaml"
DATA = Path(__file__).parent / "data"
# CRDs vendored unchanged (tests/unit/data/NOTICE.md).
KEDA_CRDS = sorted((DATA / "keda-2.20.2").glob("*.yaml"))
STRIMZI_CRDS = sorted((DATA / "strimzi-1.2.0").glob("*.yaml"))
# A version kubernetes-validate carries and every maintained cluster serves the rendered APIs at.
KUBE_VERSION = "1.33.0"
NAMESPACE = "retrain-loop"
SECRET_VARIABLE = re.compile(r"PASSWORD|SECRET|JAAS|TOKEN|_KEY$|PRIVATE")
DEFAULT_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
PARTITIONS = DEFAULT_VALUES["topics"]["partitions"]


# --- Helm -------------------------------------------------------------------------------------------------

def helm_binary() -> str:
    local = REPO / ".local" / "bin" / "helm"
    found = str(local) if local.exists() else shutil.which("helm")
    if found is None:
        pytest.fail("helm not found in .local/bin or on PATH: run `make helm` (builds Helm v4 with Go)")
    return found


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120)


class _UniqueKeys(yaml.SafeLoader):
    """SafeLoader that refuses a key twice in one mapping (the API server's decoder does; PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dup)}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def template(*values: Path, sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = ["template", "scorers", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for path in values:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    return helm(*args)


def render(*values: Path, sets: tuple[str, ...] = ()) -> list[dict]:
    proc = template(*values, sets=sets)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.load_all(proc.stdout, Loader=_UniqueKeys) if d]  # noqa: S506 (SafeLoader subclass)


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def scorer_container(sts: dict) -> dict:
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return container


def secret_value(docs: list[dict], ref: dict) -> str:
    """The value a secretKeyRef points at: from a Secret the chart renders, else a stand-in naming the reference."""
    for secret in of_kind(docs, "Secret"):
        if secret["metadata"]["name"] == ref["name"] and ref["key"] in secret.get("data", {}):
            return base64.b64decode(secret["data"][ref["key"]]).decode()
    return f"<{ref['name']}/{ref['key']}>"


def pod_env(docs: list[dict], sts: dict, ordinal: int = 0) -> dict[str, str]:
    """The scorer container's environment as pod <StatefulSet>-<ordinal> sees it."""
    env = {}
    for item in scorer_container(sts)["env"]:
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = item["value"]
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", item
            env[item["name"]] = f"{sts['metadata']['name']}-{ordinal}"
        else:
            env[item["name"]] = secret_value(docs, source["secretKeyRef"])
    return env


def scorer_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ScorerSettings:
    """The settings a scorer builds from ``env`` alone (python -m scoring_service reads only its environment)."""
    for var in [v for v in os.environ if v.startswith("KAFKA_") or v in scorer_variables()]:
        monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    return ScorerSettings()


def scorer_variables() -> set[str]:
    """What a scorer reads: its settings, each registered use case's own (<NAME>_<field>), TensorFlow's log level."""
    own = {uc.env_prefix() + f.upper() for uc in use_cases.registered() for f in uc.Settings.model_fields}
    return {f.upper() for f in ScorerSettings.model_fields} | own | EXTRA_PROJECT_ENV


@pytest.fixture(scope="module")
def default() -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def secured() -> list[dict]:
    return render(SECURED_VALUES)


# A secured cluster whose password and CA are given as values (the chart makes their Secrets), with a topic prefix
# and trusted keys given as values too.
TEST_PASSWORD = "pw-for-the-helm-test-0123456789"
TEST_LOOP_PASSWORD = "pw-of-the-loop-role-9876543210"
TEST_AIRFLOW_PASSWORD = "pw-of-the-airflow-admin-5555555555"
TEST_CA = "-----BEGIN CERTIFICATE-----\nMIIBtestCAcertificate\n-----END CERTIFICATE-----\n"
TEST_KEY = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAtestpublickey\n-----END PUBLIC KEY-----\n"


@pytest.fixture(scope="module")
def inline_secrets() -> list[dict]:
    return render(sets=("kafka.securityProtocol=SASL_SSL", f"kafka.sasl.password={TEST_PASSWORD}",
                        f"kafka.tls.caCert={TEST_CA}", "topics.prefix=team-a.",
                        f"modelTrust.publicKeys.prod-2026={TEST_KEY}",
                        f"monitor.kafka.sasl.password={TEST_LOOP_PASSWORD}", "monitor.airflow.existingSecret=",
                        f"monitor.airflow.password={TEST_AIRFLOW_PASSWORD}"))


RENDERS = ["default", "secured", "inline_secrets"]


# --- helm lint and template ------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, SECURED_VALUES], ids=["default", "sasl-ssl"])
def test_helm_lint_passes(values: Path | None) -> None:
    proc = helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("bad", "message"), [
    ("kafka:\n  securityProtocol: TLS\n", "securityProtocol"),  # not a librdkafka protocol
    ("autoscalling:\n  enabled: false\n", "autoscalling"),  # a typo is refused, not ignored
    ("scorers:\n  - {useCase: flight_delay, inputTopic: flights.scheduled, settings: {TRANSACTIONAL_ID: x}}\n",
     "TRANSACTIONAL_ID"),  # one id for all replicas: they would fence each other
    ("kafka:\n  properties: {sasl.password: x}\n", "sasl.password"),  # a credential as a plain variable
    ("monitor:\n  settings: {MONITOR_HTTP_PORT: 1}\n", "MONITOR_HTTP_PORT"),  # the chart's, as the Service's port
    ("monitor:\n  replicas: 2\n", "replicas"),  # never more than one
])
def test_schema_refuses_broken_values(tmp_path: Path, bad: str, message: str) -> None:
    values = tmp_path / "bad.yaml"
    values.write_text(bad)
    proc = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize(("sets", "message"), [
    (("autoscaling.maxReplicaCount=4",), "maxReplicaCount 4 exceeds topics.partitions 3"),
    (("autoscaling.enabled=false", "replicas=4"), "replicas 4 exceeds topics.partitions 3"),
    (("kafka.securityProtocol=SASL_SSL",), "SASL needs the password"),
    (("modelTrust.existingSecret=",), "modelTrust"),
    (("kafka.securityProtocol=SASL_SSL", "kafka.sasl.password=x"), "monitor: SASL needs the password"),
    (("monitor.airflow.existingSecret=",), "Airflow's API needs the password"),
    (("monitor.sharedData.claimName=",), "monitor.sharedData.claimName"),
    (("monitor.signingKey.existingSecret=",), "monitor.signingKey.existingSecret"),
])
def test_template_refuses_what_cannot_work(sets: tuple[str, ...], message: str) -> None:
    proc = template(sets=sets)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_chart_app_version_is_the_projects() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


# --- the rendered objects against their schemas --------------------------------------------------------------

def _strict(schema):
    """A CRD's structural schema as the API server applies it with strict field validation: unknown fields refused
    where the schema does not keep them (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_validators(paths: list[Path]) -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> a validator of each served version of the CRDs in ``paths``."""
    out = {}
    for path in paths:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version["served"]:
                    schema = _strict(version["schema"]["openAPIV3Schema"])
                    out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def schema_errors(doc: dict, crds: dict) -> list[str]:
    key = (doc["apiVersion"], doc["kind"])
    if key in crds:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crds[key].iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.path))}: {e.message}"]
    return []


@pytest.mark.parametrize("rendered", RENDERS)
def test_rendered_objects_validate(rendered: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(rendered)
    crds = crd_validators(KEDA_CRDS)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "ServiceAccount"} <= kinds
    for doc in docs:
        errors = schema_errors(doc, crds)
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: {errors}"


def test_the_validators_refuse_broken_objects(default: list[dict], secured: list[dict]) -> None:
    crds = crd_validators(KEDA_CRDS)
    sts = json.loads(json.dumps(of_kind(default, "StatefulSet")[0]))
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    assert schema_errors(sts, crds)
    scaled = json.loads(json.dumps(of_kind(default, "ScaledObject")[0]))
    scaled["spec"]["triggers"][0]["metadta"] = scaled["spec"]["triggers"][0].pop("metadata")
    assert schema_errors(scaled, crds)
    auth = json.loads(json.dumps(of_kind(secured, "TriggerAuthentication")[0]))
    del auth["spec"]["secretTargetRef"][0]["key"]
    assert schema_errors(auth, crds)


# --- the environment against the code --------------------------------------------------------------------------

@pytest.mark.parametrize("rendered", RENDERS)
def test_every_variable_is_read_by_the_scorer(rendered: str, request: pytest.FixtureRequest,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variable is a setting of ScorerSettings or a use case, TF_CPP_MIN_LOG_LEVEL, or a librdkafka property
    (``KAFKA_SASL_USERNAME``: ml.kafka_client.env_key); the settings they make are valid (required ones set)."""
    docs = request.getfixturevalue(rendered)
    for sts in of_kind(docs, "StatefulSet"):
        env = pod_env(docs, sts)
        for var in env:
            assert var in scorer_variables() or env_key(var), f"{sts['metadata']['name']}: nothing reads {var}"
        settings = scorer_settings(env, monkeypatch)
        assert settings.use_case in use_cases.names()


def test_scorers_are_composes(default: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose.yml's `scorer` and `sensor-scorer`, one StatefulSet each: the same image, command and
    settings, plus the replica's name from the pod; compose's TOPIC_PARTITIONS is the chart's topics.partitions."""
    compose = yaml.safe_load(COMPOSE.read_text())
    services = {n: s for n, s in compose["services"].items() if s.get("command") == ["python", "-m", "scoring_service"]}
    assert set(services) == {"scorer", "sensor-scorer"}
    by_use_case = {pod_env(default, s)["USE_CASE"]: s for s in of_kind(default, "StatefulSet")}
    assert set(by_use_case) == {"flight_delay", "sensor_anomaly"}
    for name, svc in services.items():
        want = interpolate(service_env(svc), {})
        sts = by_use_case[want["USE_CASE"]]
        got = pod_env(default, sts)
        assert want.pop("TOPIC_PARTITIONS") == str(PARTITIONS), name
        assert got.pop("REPLICA_NAME") == f"{sts['metadata']['name']}-0"
        if "GROUP_ID" not in want:  # the chart names the default group, which KEDA watches too
            assert got.pop("GROUP_ID") == scorer_group(want["USE_CASE"]), name
        assert got == want, name
        assert scorer_container(sts)["command"] == svc["command"], name
        assert svc["build"]["dockerfile"] == "scoring_service/Dockerfile"
        assert svc["image"].split(":")[0] == DEFAULT_VALUES["image"]["repository"], name
        assert scorer_container(sts)["image"] == f"{DEFAULT_VALUES['image']['repository']}:{_app_version()}"
    for scorer in DEFAULT_VALUES["scorers"]:  # each scorer's inputTopic is its use case's
        assert scorer["inputTopic"] == use_cases.use_case_class(scorer["useCase"]).topics.input


def _app_version() -> str:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


# --- probes ------------------------------------------------------------------------------------------------------

def test_probes_ask_what_the_scorer_serves(default: list[dict]) -> None:
    """/healthz for start-up and liveness, /readyz for readiness, on HTTP_PORT; and the scorer's ops server answers
    exactly those paths (200 alive, 503 not ready yet, /metrics)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from scoring_service.ops import Metrics, OpsServer

    for sts in of_kind(default, "StatefulSet"):
        container = scorer_container(sts)
        (port,) = container["ports"]
        assert port["containerPort"] == int(pod_env(default, sts)["HTTP_PORT"]) and port["name"] == "http"
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    server = OpsServer(0, Metrics(), live=lambda: (True, "ok"), ready=lambda: (False, "no model loaded"))
    server.start()
    try:
        def get(path: str) -> tuple[int, str, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
                    return r.status, r.headers["Content-Type"], r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.headers["Content-Type"], e.read().decode()

        assert get("/healthz")[0] == 200
        assert get("/readyz")[:1] == (503,) and "no model" in get("/readyz")[2]
        assert get("/metrics")[:2] == (200, CONTENT_TYPE_LATEST)
    finally:
        server.stop()


# --- KEDA, replicas and static membership -------------------------------------------------------------------------

@pytest.mark.parametrize("rendered", RENDERS)
def test_keda_scales_each_scorer_on_its_own_group_and_topic(rendered: str, request: pytest.FixtureRequest,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from scoring_service.app import consumer_config

    docs = request.getfixturevalue(rendered)
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(docs, "ScaledObject")}
    for sts in of_kind(docs, "StatefulSet"):
        name = sts["metadata"]["name"]
        so = scaled.pop(name)
        assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name}
        assert "replicas" not in sts["spec"]  # KEDA owns the count; an upgrade must not reset it
        settings = scorer_settings(pod_env(docs, sts), monkeypatch)
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["consumerGroup"] == settings.group_id
        # Under the use case's group prefix, the only group its ACLs grant (ml/acls.py).
        assert settings.group_id.startswith(scorer_group(settings.use_case))
        assert meta["topic"] == settings.input_topic
        assert meta["bootstrapServers"] == settings.kafka_bootstrap_servers
        assert meta["offsetResetPolicy"] == consumer_config(settings, "probe")["auto.offset.reset"]
        assert int(meta["lagThreshold"]) >= 1
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= PARTITIONS
    assert not scaled, f"ScaledObjects without a scorer: {sorted(scaled)}"
    # The partitions the chart bounds replicas by are those `python -m ml topics` creates.
    assert PARTITIONS == LoopSettings().topic_partitions


def test_topic_names_follow_the_loops_naming(monkeypatch: pytest.MonkeyPatch) -> None:
    """TOPIC_NAMES wins over TOPIC_PREFIX, in the chart's KEDA trigger as in the scorer (ml.settings.TopicNames)."""
    docs = render(sets=("topics.prefix=team-a.", "topics.names.flights\\.scheduled=ops.flights"))
    topics = {s["spec"]["scaleTargetRef"]["name"]: s["spec"]["triggers"][0]["metadata"]["topic"]
              for s in of_kind(docs, "ScaledObject")}
    for sts in of_kind(docs, "StatefulSet"):
        assert topics[sts["metadata"]["name"]] == scorer_settings(pod_env(docs, sts), monkeypatch).input_topic
    assert sorted(topics.values()) == ["ops.flights", "team-a.sensors.readings"]


def test_each_replica_is_its_own_static_member_and_transactional_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """A StatefulSet: pod <name>-N keeps its name when replaced, so it rejoins as the same member and fences its old
    self in exactly_once; no replica shares another's transactional id."""
    docs = render(sets=("scorerDefaults.settings.DELIVERY_MODE=exactly_once",))
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for sts in of_kind(docs, "StatefulSet"):
        assert sts["spec"]["podManagementPolicy"] == "Parallel"
        assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
        seen = set()
        for ordinal in range(PARTITIONS):
            s = scorer_settings(pod_env(docs, sts, ordinal), monkeypatch)
            assert s.delivery_mode == "exactly_once" and s.static_membership
            pod = f"{sts['metadata']['name']}-{ordinal}"
            assert s.group_instance_id == s.producer_transactional_id == f"{s.group_id}-{pod}"
            seen.add(s.producer_transactional_id)
        assert len(seen) == PARTITIONS


def test_disruption_budget_and_metrics_service_select_the_pods(default: list[dict]) -> None:
    for sts in of_kind(default, "StatefulSet"):
        name, labels = sts["metadata"]["name"], sts["spec"]["template"]["metadata"]["labels"]
        assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
        pdb = named(default, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["maxUnavailable"] == 1
        svc = named(default, "Service", name)
        assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
        port = int(pod_env(default, sts)["HTTP_PORT"])
        assert svc["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                                                  "prometheus.io/path": "/metrics"}
        assert svc["spec"]["publishNotReadyAddresses"] is True
    # A scorer that does not scale keeps a fixed count, the partitions still bounding it.
    fixed = render(sets=("autoscaling.enabled=false", "replicas=2"))
    assert not of_kind(fixed, "ScaledObject") and {s["spec"]["replicas"] for s in of_kind(fixed, "StatefulSet")} == {2}


# --- Kafka security: scorer and KEDA read the same credentials ------------------------------------------------------

def test_secured_settings_reach_the_client_and_keda(secured: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    values = yaml.safe_load(SECURED_VALUES.read_text())["kafka"]
    (auth,) = of_kind(secured, "TriggerAuthentication")
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password", "ca"}
    for sts in of_kind(secured, "StatefulSet"):
        container, pod = scorer_container(sts), sts["spec"]["template"]["spec"]
        env_items = {e["name"]: e for e in container["env"]}
        settings = scorer_settings(pod_env(secured, sts), monkeypatch)
        config = settings.kafka_config()
        assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert config["sasl.username"] == values["sasl"]["username"]
        password = env_items["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": values["sasl"]["existingSecret"], "key": values["sasl"]["passwordKey"]}
        assert {k: refs["password"][k] for k in ("name", "key")} == password
        # The CA file the client reads is the Secret key KEDA reads.
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "kafka-ca"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "kafka-ca"]
        assert mount["readOnly"] and config["ssl.ca.location"] == f"{mount['mountPath']}/{values['tls']['caKey']}"
        assert volume["secret"]["secretName"] == refs["ca"]["name"] == values["tls"]["existingSecret"]
        assert volume["secret"]["items"] == [{"key": refs["ca"]["key"], "path": values["tls"]["caKey"]}]
        assert secret_value(secured, refs["username"]) == config["sasl.username"]
    for so in of_kind(secured, "ScaledObject"):
        (trigger,) = so["spec"]["triggers"]
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        assert trigger["metadata"]["tls"] == "enable" and trigger["metadata"]["sasl"] == "scram_sha512"


def test_secrets_only_through_secret_objects(inline_secrets: list[dict]) -> None:
    """A password or key given as a value ends up in a Secret only; pods get it by secretKeyRef or a read-only
    mount, never as a literal variable."""
    others = yaml.safe_dump([d for d in inline_secrets if d["kind"] != "Secret"])
    for secret in (TEST_PASSWORD, TEST_LOOP_PASSWORD, TEST_AIRFLOW_PASSWORD, TEST_CA.splitlines()[1],
                   TEST_KEY.splitlines()[1]):
        assert secret not in others and base64.b64encode(secret.encode()).decode()[:20] not in others
    secrets = {s["metadata"]["name"]: s for s in of_kind(inline_secrets, "Secret")}
    assert {"scorers-retrain-loop-scorer-kafka", "scorers-retrain-loop-scorer-kafka-ca",
            "scorers-retrain-loop-scorer-trusted-keys", "scorers-retrain-loop-scorer-monitor"} == set(secrets)
    assert base64.b64decode(secrets["scorers-retrain-loop-scorer-kafka"]["data"]["password"]).decode() == TEST_PASSWORD
    # The monitors' passwords: the loop role's (not the scorers'), the Airflow API user's.
    for deployment in of_kind(inline_secrets, "Deployment"):
        env = pod_env(inline_secrets, deployment)
        assert (env["KAFKA_SASL_PASSWORD"], env["AIRFLOW_API_PASSWORD"]) == (TEST_LOOP_PASSWORD,
                                                                          TEST_AIRFLOW_PASSWORD)
    trusted = secrets["scorers-retrain-loop-scorer-trusted-keys"]["data"]
    assert list(trusted) == ["prod-2026.pem"]  # <key id>.pem, as ml.signing.TrustStore reads the folder
    for doc in (*inline_secrets, *render(SECURED_VALUES)):
        if doc["kind"] not in ("StatefulSet", "Deployment"):
            continue
        container, pod = scorer_container(doc), doc["spec"]["template"]["spec"]
        for item in container["env"]:
            if SECRET_VARIABLE.search(item["name"]) and not item["name"].endswith(("_DIR", "_LOCATION", "_FILE")):
                assert set(item) == {"name", "valueFrom"} and "secretKeyRef" in item["valueFrom"], item
        secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
        for mount in container["volumeMounts"]:
            if mount["name"] in secret_volumes:
                # Read-only, and the whole folder (no subPath): a key added to the Secret reaches the running pod.
                assert mount["readOnly"] is True and "subPath" not in mount, mount


def test_pods_run_as_the_images_user_on_a_read_only_root(default: list[dict]) -> None:
    """Scorers and monitors: the image's user, a read-only root, /tmp the one writable folder of the image's."""
    dockerfile = (REPO / "scoring_service" / "Dockerfile").read_text()
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", dockerfile).group(1))
    for sts in (*of_kind(default, "StatefulSet"), *of_kind(default, "Deployment")):
        pod = sts["spec"]["template"]["spec"]
        container = scorer_container(sts)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
        assert pod["automountServiceAccountToken"] is False
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        # The model loader's temporary .keras files: the one writable folder.
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        trusted = pod_env(default, sts)["MODEL_TRUSTED_KEYS_DIR"]
        assert any(m["mountPath"] == trusted and m["readOnly"] for m in container["volumeMounts"])
        if sts["kind"] == "StatefulSet":
            # SIGTERM finishes a batch, commits and leaves the group: at least compose's grace period.
            assert pod["terminationGracePeriodSeconds"] >= 60
        else:
            # The monitor writes into the Airflow workers' claim: in the group the Airflow image gives its files
            # (group-writable), as docker-compose.yml runs it.
            airflow = (REPO / "infra" / "airflow" / "Dockerfile").read_text()
            shared_gid = int(re.search(r"chown -R \d+:(\d+) [^&]*/opt/airflow/loop-data", airflow).group(1))
            assert pod["securityContext"]["runAsGroup"] == shared_gid
            compose = yaml.safe_load(COMPOSE.read_text())["services"]["monitor"]
            assert compose["user"] == f"{uid}:{shared_gid}"


# --- the live monitors ---------------------------------------------------------------------------------------------

MONITOR_COMMAND = ["python", "-m", "ml", "monitor", "--use-case"]


def monitor_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> MonitorSettings:
    """The settings `python -m ml monitor` builds from ``env`` alone."""
    for var in [v for v in os.environ if v.startswith(("KAFKA_", "AIRFLOW")) or v in monitor_env()]:
        monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    return MonitorSettings()


@pytest.mark.parametrize("rendered", RENDERS)
def test_every_variable_is_read_by_the_monitor(rendered: str, request: pytest.FixtureRequest,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variable of a monitor is a MonitorSettings field (the loop's settings and its own), a use case's own,
    TF_CPP_MIN_LOG_LEVEL or a librdkafka property; the settings are valid, the command names their use case, and the
    Kafka client is the `loop` role's (it publishes signed envelopes, as the Airflow workers), not the scorers'."""
    docs = request.getfixturevalue(rendered)
    deployments = of_kind(docs, "Deployment")
    assert len(deployments) == len(use_cases.names())
    for deployment in deployments:
        name, env = deployment["metadata"]["name"], pod_env(docs, deployment)
        for var in env:
            assert var in monitor_env() or env_key(var), f"{name}: nothing reads {var}"
        settings = monitor_settings(env, monkeypatch)
        assert scorer_container(deployment)["command"] == [*MONITOR_COMMAND, settings.use_case], name
        assert settings.monitor_http_port == scorer_container(deployment)["ports"][0]["containerPort"]
        config = settings.kafka_config()
        if "sasl.username" in config:
            assert config["sasl.username"] == "loop" and "loop" in acls.ROLES, name


@pytest.mark.parametrize("rendered", ["secured", "inline_secrets"])
def test_no_pod_is_the_read_only_monitor_role(rendered: str, request: pytest.FixtureRequest) -> None:
    """The scorers are the `scorer` role; the live monitors, which publish signed envelopes, the `loop` role (which
    may write `models`), as the Airflow workers; no pod is the `monitor` role, which writes nothing (the Airflow
    page's)."""
    docs = request.getfixturevalue(rendered)
    users = defaultdict(set)
    for doc in (*of_kind(docs, "StatefulSet"), *of_kind(docs, "Deployment")):
        users[doc["kind"]].add(pod_env(docs, doc)["KAFKA_SASL_USERNAME"])
    assert users == {"StatefulSet": {"scorer"}, "Deployment": {"loop"}}
    settings = LoopSettings()
    writers = {g.role for g in acls.grants(settings) if g.operation == "write" and g.name == settings.models_topic}
    assert writers == {"loop"}


def test_monitors_are_composes(default: list[dict]) -> None:
    """docker-compose.yml's `monitor` and `sensor-monitor`, one Deployment each: the same image, command, port and
    settings; only the places differ (the signing key's file, Airflow's address, the password from a Secret)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    services = {n: s for n, s in compose["services"].items() if s.get("command", [])[:4] == MONITOR_COMMAND[:4]}
    assert set(services) == {"monitor", "sensor-monitor"}
    by_use_case = {pod_env(default, d)["USE_CASE"]: d for d in of_kind(default, "Deployment")}
    assert set(by_use_case) == {"flight_delay", "sensor_anomaly"}
    placed = {"MODEL_SIGNING_KEY_FILE", "AIRFLOW_API_URL", "AIRFLOW_API_PASSWORD"}
    for name, svc in services.items():
        want = interpolate(service_env(svc), example_env())
        deployment = by_use_case[want["USE_CASE"]]
        got = pod_env(default, deployment)
        assert want.pop("TOPIC_PARTITIONS") == str(PARTITIONS), name
        assert set(got) == set(want), name
        assert {k: v for k, v in got.items() if k not in placed} == {k: v for k, v in want.items() if k not in placed}
        assert scorer_container(deployment)["command"] == svc["command"], name
        assert svc["image"].split(":")[0] == DEFAULT_VALUES["image"]["repository"], name
        assert scorer_container(deployment)["image"] == f"{DEFAULT_VALUES['image']['repository']}:{_app_version()}"
        assert svc["expose"] == [got["MONITOR_HTTP_PORT"]], name


def test_one_monitor_per_use_case_never_more(default: list[dict], tmp_path: Path) -> None:
    """A monitor keeps no offsets and acts on what it reads: one pod per use case, the old one stopped before a new
    one starts, nothing that scales it; two scorers of one use case still get one monitor; monitor.useCases picks,
    monitor.enabled=false leaves none."""
    def monitored(docs: list[dict]) -> list[str]:
        return sorted(pod_env(docs, d)["USE_CASE"] for d in of_kind(docs, "Deployment"))

    for deployment in of_kind(default, "Deployment"):
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert {so["spec"]["scaleTargetRef"]["kind"] for so in of_kind(default, "ScaledObject")} == {"StatefulSet"}
    assert not of_kind(default, "HorizontalPodAutoscaler") and monitored(default) == sorted(use_cases.names())
    values = tmp_path / "two-flight-scorers.yaml"
    values.write_text(yaml.safe_dump({"scorers": [*DEFAULT_VALUES["scorers"], {
        "useCase": "flight_delay", "name": "flights-b", "inputTopic": "flights.scheduled", "groupId": "flights-b"}]}))
    two = render(values)
    assert len(of_kind(two, "StatefulSet")) == 3 and monitored(two) == ["flight_delay", "sensor_anomaly"]
    assert monitored(render(sets=("monitor.useCases={flight_delay}",))) == ["flight_delay"]
    off = render(sets=("monitor.enabled=false",))
    assert not of_kind(off, "Deployment")
    assert not [d for d in off if "monitor" in d["metadata"]["name"]]


def test_monitor_service_and_probes_reach_its_metrics(default: list[dict]) -> None:
    """The Service and the probes ask /metrics on the monitor's port, which its metrics server answers; neither a
    scorer's Service nor a disruption budget selects a monitor's pod, nor the monitor's Service a scorer's."""
    from prometheus_client import start_http_server

    from ml.monitoring.service import MonitorMetrics

    services = {s["metadata"]["name"]: s for s in of_kind(default, "Service")}
    scorer_labels = [s["spec"]["template"]["metadata"]["labels"] for s in of_kind(default, "StatefulSet")]
    for deployment in of_kind(default, "Deployment"):
        name, container = deployment["metadata"]["name"], scorer_container(deployment)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        port = int(pod_env(default, deployment)["MONITOR_HTTP_PORT"])
        assert container["ports"] == [{"name": "metrics", "containerPort": port}]
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
        svc = services.pop(name)
        assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert svc["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics"}]
        assert svc["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                                                  "prometheus.io/path": "/metrics"}
        assert not [other for other in scorer_labels if svc["spec"]["selector"].items() <= other.items()]
        for other in (*of_kind(default, "PodDisruptionBudget"), *of_kind(default, "StatefulSet")):
            assert not other["spec"]["selector"]["matchLabels"].items() <= labels.items(), other["metadata"]["name"]
    for other in services.values():  # the scorers'
        assert not other["spec"]["selector"].items() <= labels.items()
    server, _ = start_http_server(0, addr="127.0.0.1", registry=MonitorMetrics().registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=5) as r:
            assert r.status == 200 and "# TYPE monitor_serving_version gauge" in r.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_monitors_share_the_airflow_workers_data_key_and_api(default: list[dict],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the Airflow workers of deploy/helm/airflow-values.yaml read and write, the monitor does: the same claim
    at the same paths and subPaths (writable: its decision log and records), the same MLflow and artifact root, the
    same signing key Secret and file (read-only, for the pod's group alone); every path of its settings on a mount;
    Airflow's API at the address the values name, as a user of the simple auth manager, with the password from the
    Secret the API server's passwords file comes from."""
    airflow = yaml.safe_load(AIRFLOW_VALUES.read_text())
    airflow_env = {e["name"]: e["value"] for e in airflow["env"]}
    workers = airflow["workers"]["celery"]
    worker_key = Path({e["name"]: e["value"] for e in workers["env"]}["MODEL_SIGNING_KEY_FILE"])
    worker_volumes = {v["name"]: v for v in workers["extraVolumes"]}
    users = dict(u.split(":") for u in airflow["config"]["core"]["simple_auth_manager_users"].split(","))
    (auth,) = [v for v in airflow["apiServer"]["extraVolumes"] if v["name"] == "auth-secret"]
    for deployment in of_kind(default, "Deployment"):
        name, pod, container = deployment["metadata"]["name"], deployment["spec"]["template"]["spec"], \
            scorer_container(deployment)
        volumes = {v["name"]: v for v in pod["volumes"]}
        settings = monitor_settings(pod_env(default, deployment), monkeypatch)
        assert settings.mlflow_tracking_uri == airflow_env["AIRFLOW_VAR_MLFLOW_TRACKING_URI"], name
        assert str(settings.mlflow_artifact_root) == airflow_env["MLFLOW_ARTIFACT_ROOT"], name
        assert str(settings.loop_data_dir) == airflow_env["LOOP_DATA_DIR"], name
        claims = 0
        for wanted in workers["extraVolumeMounts"]:
            source = worker_volumes[wanted["name"]]
            if "persistentVolumeClaim" not in source:
                continue
            (mine,) = [m for m in container["volumeMounts"] if m["mountPath"] == wanted["mountPath"]]
            assert mine.get("subPath") == wanted.get("subPath") and not mine.get("readOnly"), mine
            assert volumes[mine["name"]]["persistentVolumeClaim"] == source["persistentVolumeClaim"], mine
            claims += 1
        assert claims == 2  # the loop's data and the MLflow artifacts
        mounts = [Path(m["mountPath"]) for m in container["volumeMounts"]]
        for field, value in settings.model_dump(mode="json").items():
            assert not re.search(r"localhost|127\.0\.0\.1|\.local\b|sqlite:", json.dumps(value)), f"{field}: {value}"
            if isinstance(getattr(settings, field), Path):
                assert any(getattr(settings, field).is_relative_to(m) for m in mounts), f"{name}: {field} unmounted"
        (key_mount,) = [m for m in container["volumeMounts"]
                        if settings.model_signing_key_file.is_relative_to(m["mountPath"])]
        key = volumes[key_mount["name"]]["secret"]
        (worker_mount,) = [m for m in workers["extraVolumeMounts"] if worker_key.is_relative_to(m["mountPath"])]
        assert key["secretName"] == worker_volumes[worker_mount["name"]]["secret"]["secretName"]
        assert settings.model_signing_key_file.name == worker_key.name
        assert key["items"] == [{"key": worker_key.name, "path": worker_key.name}]
        assert key_mount["readOnly"] is True and key["defaultMode"] == 0o440
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
        url = urlsplit(settings.airflow_api_url)
        assert f"svc/{url.hostname} {url.port}:" in AIRFLOW_VALUES.read_text(), url
        assert settings.airflow_api_username in users
        (ref,) = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "AIRFLOW_API_PASSWORD"]
        assert ref["name"] == auth["secret"]["secretName"]


# --- the Strimzi example -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def strimzi() -> list[dict]:
    return [d for d in yaml.load_all(STRIMZI.read_text(), Loader=_UniqueKeys) if d]  # noqa: S506


def test_strimzi_example_validates_against_strimzis_crds(strimzi: list[dict]) -> None:
    crds = crd_validators(STRIMZI_CRDS)
    assert {d["kind"] for d in strimzi} == {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
    for doc in strimzi:
        assert (doc["apiVersion"], doc["kind"]) in crds, doc["apiVersion"]
        errors = schema_errors(doc, crds)
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: {errors}"
    broken = json.loads(json.dumps(next(d for d in strimzi if d["kind"] == "Kafka")))
    broken["spec"]["kafka"]["listeners"][0]["authentication"]["type"] = "scram-sha-256"  # Strimzi has 512 only
    assert schema_errors(broken, crds)


def test_strimzi_cluster_is_replicated_and_secured(strimzi: list[dict]) -> None:
    (kafka,) = of_kind(strimzi, "Kafka")
    (pool,) = of_kind(strimzi, "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert pool["spec"]["replicas"] == 3 and set(pool["spec"]["roles"]) == {"controller", "broker"}
    config = kafka["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == config["offsets.topic.replication.factor"] == 3
    assert config["min.insync.replicas"] == config["transaction.state.log.min.isr"] == 2
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True and listener["authentication"] == {"type": "scram-sha-512"}
    assert kafka["spec"]["kafka"]["authorization"] == {"type": "simple"}


def test_strimzi_topics_are_the_loops(strimzi: list[dict]) -> None:
    """The KafkaTopics are what `python -m ml topics` creates on a three-node cluster (ml/topics.py)."""
    want = {s.topic: (s.num_partitions, s.replication_factor, s.config)
            for s in topic_specs(LoopSettings(), brokers=3)}
    got = {t["metadata"]["name"]: (t["spec"]["partitions"], t["spec"]["replicas"],
                                   {k: str(v) for k, v in t["spec"]["config"].items()})
           for t in of_kind(strimzi, "KafkaTopic")}
    assert got == want


def test_strimzi_users_have_their_roles_acls(strimzi: list[dict]) -> None:
    """Each KafkaUser is a role of ml/acls.py (principal User:<role>) with exactly that role's grants."""
    resources = {"topic": "topic", "group": "group", "transactionalId": "transactional_id"}
    patterns = {"literal": "literal", "prefix": "prefixed"}
    want = defaultdict(set)
    for grant in acls.grants(LoopSettings()):
        want[grant.role].add((grant.resource, grant.name, grant.pattern, grant.operation))
    users = of_kind(strimzi, "KafkaUser")
    assert {u["metadata"]["name"] for u in users} == {"replayer", "loop", "scorer"}
    for user in users:
        role = user["metadata"]["name"]
        assert acls.principals()[role] == f"User:{role}"  # Strimzi's principal of a SCRAM user
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        got = {(resources[a["resource"]["type"]], a["resource"]["name"], patterns[a["resource"]["patternType"]],
                re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower())
               for a in user["spec"]["authorization"]["acls"] for op in a["operations"]}
        assert got == want[role], role


def test_secured_values_name_the_strimzi_examples_objects(strimzi: list[dict]) -> None:
    """values-sasl-ssl.yaml reaches the example's TLS listener as the KafkaUser `scorer` (the live monitors as
    `loop`), with the Secrets the operators write: the cluster CA (<cluster>-cluster-ca-cert) and the user's password
    (a Secret named after it)."""
    secured = yaml.safe_load(SECURED_VALUES.read_text())
    values = secured["kafka"]
    (kafka,) = of_kind(strimzi, "Kafka")
    cluster = kafka["metadata"]["name"]
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert values["bootstrapServers"] == f"{cluster}-kafka-bootstrap:{listener['port']}"
    assert values["securityProtocol"] == "SASL_SSL" and listener["tls"]
    assert values["sasl"]["mechanism"].lower() == listener["authentication"]["type"]
    assert values["tls"] == {"existingSecret": f"{cluster}-cluster-ca-cert", "caKey": "ca.crt"}
    user = named(strimzi, "KafkaUser", values["sasl"]["username"])
    assert values["sasl"]["existingSecret"] == user["metadata"]["name"] and values["sasl"]["passwordKey"] == "password"
    assert user["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    monitor = secured["monitor"]["kafka"]["sasl"]
    loop = named(strimzi, "KafkaUser", monitor["username"])
    assert monitor == {"username": "loop", "existingSecret": loop["metadata"]["name"], "passwordKey": "password"}
    assert loop["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    partitions = {t["spec"]["partitions"] for t in of_kind(strimzi, "KafkaTopic")
                  if t["metadata"]["name"] in {s["inputTopic"] for s in DEFAULT_VALUES["scorers"]}}
    assert partitions == {PARTITIONS}
