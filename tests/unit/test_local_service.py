"""infra.local_service on a real tiny service: a Python HTTP server that forks a sleeping child, in its own
process group with a pid file and a log file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.local_service import LocalService, ServiceError, answers, free_port

SCRIPT = """
import http.server, subprocess, sys
port, child_pid_file, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
print("tiny service starting", flush=True)
if mode == "exit":
    sys.exit("tiny service: the port is cursed")
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(child_pid_file, "w").write(str(child.pid))
http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


class Tiny(LocalService):
    """The service under test: ``mode`` "serve" answers HTTP, "exit" dies at once; ``gets_healthy`` False
    keeps the health check failing."""

    name = "tiny service"
    marker = b"tiny_service.py"
    poll_s = 0.05

    def __init__(self, home: Path, port: int, mode: str = "serve", gets_healthy: bool = True) -> None:
        super().__init__(home)
        self.port, self.mode, self.gets_healthy = port, mode, gets_healthy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def child_pid(self) -> int:
        return int((self.home / "child.pid").read_text())

    def command(self) -> list[str]:
        return [sys.executable, str(self.home / "tiny_service.py"), str(self.port), str(self.home / "child.pid"),
                self.mode]

    def ports(self) -> list[tuple[int, str, str]]:
        return [(self.port, "tiny HTTP", "TINY_PORT")]

    def prepare(self) -> None:
        (self.home / "tiny_service.py").write_text(SCRIPT)

    def healthy(self) -> bool:
        if not self.gets_healthy:
            # Unhealthy for good, but only once it serves: a failed start then has a child to clean up.
            deadline = time.monotonic() + 30
            while not answers(self.url) and time.monotonic() < deadline:
                time.sleep(0.05)
            return False
        return answers(self.url)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for init to collect it has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def make(tmp_path):
    """Build Tiny services under tmp_path; whatever they left running is stopped at the end."""
    made: list[Tiny] = []

    def build(**kwargs) -> Tiny:
        made.append(Tiny(tmp_path / "svc", kwargs.pop("port", 0) or free_port(), **kwargs))
        return made[-1]

    yield build
    for service in made:
        service.stop(timeout=5)


def test_start_returns_once_healthy_and_stop_ends_the_whole_group(make):
    service = make()
    proc = service.start(timeout=30)
    assert service.healthy()
    assert service.running_pid() == proc.pid
    assert service.pid_file.read_text() == f"{proc.pid}\n"
    assert os.getpgid(proc.pid) == proc.pid  # a session, hence a group, of its own
    child = service.child_pid
    assert _alive(child) and os.getpgid(child) == proc.pid

    assert service.stop(timeout=10) is True
    assert not _alive(child), "the child outlived its group"
    assert proc.wait(timeout=5) is not None  # the leader may take a moment to become waitable
    assert not service.pid_file.exists()
    assert service.running_pid() is None
    assert service.stop() is False
    assert "tiny service starting" in service.log_tail()


def test_another_instance_finds_and_stops_it(make):
    """What `down` does from another process: the pid file and the marker are all it needs."""
    service = make()
    proc = service.start(timeout=30)
    other = Tiny(service.home, service.port)
    assert other.running_pid() == proc.pid
    assert other.stop(timeout=10) is True
    assert proc.wait(timeout=5) is not None


def test_start_refuses_a_taken_port(make):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        service = make(port=port)
        taken = rf"port {port} on 127.0.0.1 \(tiny HTTP\) is already in use.*TINY_PORT"
        with pytest.raises(ServiceError, match=taken):
            service.start(timeout=30)
    assert not service.pid_file.exists()


def test_start_refuses_when_it_already_runs_and_up_leaves_it_be(make):
    pid, took = make().up(timeout=30)
    assert took is not None
    with pytest.raises(ServiceError, match=rf"tiny service already runs \(pid {pid}"):
        make().start(timeout=30)
    assert make().up(timeout=30) == (pid, None)
    assert make().running_pid() == pid


def test_a_pid_file_naming_another_program_is_not_trusted(make):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        service = make()
        service.home.mkdir(parents=True)
        service.pid_file.write_text(f"{stranger.pid}\n")  # a recycled pid: alive, but not the service
        assert service.running_pid() is None
        assert service.stop(timeout=5) is False
        assert stranger.poll() is None, "stop() killed a program that only had the recorded pid"
        assert not service.pid_file.exists()
        service.pid_file.write_text(f"{stranger.pid}\n")
        proc = service.start(timeout=30)  # a stale pid file does not block a start
        assert service.running_pid() == proc.pid
    finally:
        stranger.kill()
        stranger.wait()


def test_a_service_that_exits_during_start_fails_with_its_log_tail(make):
    service = make(mode="exit")
    with pytest.raises(ServiceError, match=r"tiny service exited with code 1 during start-up") as failure:
        service.start(timeout=30)
    assert "tiny service: the port is cursed" in str(failure.value)
    assert str(service.log_file) in str(failure.value)
    assert not service.pid_file.exists()


def test_a_service_that_never_gets_healthy_is_stopped_with_its_children(make):
    service = make(gets_healthy=False)
    with pytest.raises(ServiceError, match=r"tiny service did not become healthy within 0 s") as failure:
        service.start(timeout=0)
    assert "tiny service starting" in str(failure.value)
    assert not _alive(service.child_pid)
    assert not service.pid_file.exists()


def test_the_up_down_status_commands_of_a_service(make):
    import typer
    from typer.testing import CliRunner

    from infra.local_service import add_commands

    service = make()
    app = typer.Typer()
    add_commands(app, lambda: Tiny(service.home, service.port), what="the tiny service", stop_hint="tiny down")
    cli = CliRunner()
    assert cli.invoke(app, ["status"]).exit_code == 1
    up = cli.invoke(app, ["up"])
    assert up.exit_code == 0 and "tiny service ready in" in up.output and "`tiny down`" in up.output
    assert "already running" in cli.invoke(app, ["up"]).output
    status = cli.invoke(app, ["status"])
    assert status.exit_code == 0 and f"pid {service.running_pid()}, healthy" in status.output
    assert cli.invoke(app, ["down"]).output.strip() == "tiny service stopped"
    assert cli.invoke(app, ["status"]).exit_code == 1
    assert "Start the tiny service in the background" in cli.invoke(app, ["--help"]).output
