"""What runs in the compose project: its containers, their health, and the model version each scorer serves.

Uses the Docker engine API (the ``docker`` SDK), not the compose CLI: containers are found by the labels
compose puts on them (``com.docker.compose.project`` / ``.service``). A scorer's model version comes from
its own ``/metrics`` (gauge ``scorer_model_version``), read with ``docker exec`` inside the container, so it
works whatever the network (no host port is published for the scorers).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

PROJECT = "kafka-retrain-loop"  # `name:` in docker-compose.yml
SCORER_SERVICES = ("scorer", "sensor-scorer")
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
MODEL_VERSION_METRIC = "scorer_model_version"
# Run inside the scorer container (its image has python; HTTP_PORT is set by compose and the Dockerfile).
_FETCH_METRICS = ("import os, urllib.request; print(urllib.request.urlopen('http://127.0.0.1:' + "
                  "os.environ.get('HTTP_PORT', '8000') + '/metrics', timeout=5).read().decode())")
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')


class EngineUnavailable(RuntimeError):
    """No Docker engine answers at the configured address."""


@dataclass(frozen=True)
class ContainerStatus:
    service: str
    name: str
    state: str          # running, exited, restarting, ...
    health: str         # healthy, unhealthy, starting, or "-" without a healthcheck
    exit_code: int | None
    model_versions: dict[str, int] | None = None  # scorers only: model name -> version serving (0: none yet)
    model_error: str | None = None


def engine_address() -> str:
    """Where the SDK looks for the engine: ``DOCKER_HOST`` or the default Unix socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect():
    """A client of a reachable engine. Raises EngineUnavailable naming the address and the reason."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except DockerException as e:
        raise EngineUnavailable(f"no Docker engine reachable at {engine_address()}: {e}") from e
    return client


def model_versions_from_metrics(text: str) -> dict[str, int]:
    """``{model_name: version}`` from the Prometheus text of a scorer's /metrics."""
    versions: dict[str, int] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m["name"] != MODEL_VERSION_METRIC:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
        versions[labels.get("model_name", "")] = int(float(m["value"]))
    return versions


def scorer_model_versions(container) -> dict[str, int]:
    """The model version(s) a running scorer container serves, from its /metrics via ``docker exec``.

    Raises RuntimeError when the metrics cannot be read (the message says why).
    """
    result = container.exec_run(["python", "-c", _FETCH_METRICS], demux=True)
    stdout, stderr = result.output if isinstance(result.output, tuple) else (result.output, b"")
    if result.exit_code != 0:
        last = (stderr or stdout or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"/metrics not readable (exit {result.exit_code}): {last[0]}")
    return model_versions_from_metrics((stdout or b"").decode(errors="replace"))


def stack_status(client, project: str = PROJECT) -> list[ContainerStatus]:
    """One entry per container of ``project`` (stopped ones included), ordered by service and number."""
    containers = client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
    out = []
    for c in containers:
        labels = c.labels or {}
        state = c.attrs.get("State", {})
        status = ContainerStatus(
            service=labels.get(SERVICE_LABEL, "?"), name=c.name, state=state.get("Status", c.status),
            health=(state.get("Health") or {}).get("Status", "-"),
            exit_code=state.get("ExitCode") if state.get("Status") == "exited" else None)
        if status.service in SCORER_SERVICES and status.state == "running":
            try:
                status = _with_models(status, scorer_model_versions(c), None)
            except Exception as e:  # noqa: BLE001 (one unreadable scorer must not hide the others)
                status = _with_models(status, None, str(e))
        out.append((status.service, int(labels.get(NUMBER_LABEL, "0") or 0), status))
    return [s for _, _, s in sorted(out, key=lambda t: (t[0], t[1]))]


def _with_models(s: ContainerStatus, versions: dict[str, int] | None, error: str | None) -> ContainerStatus:
    return ContainerStatus(s.service, s.name, s.state, s.health, s.exit_code, versions, error)
