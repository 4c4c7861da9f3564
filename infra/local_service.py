"""One local service (a broker node, Airflow, MLflow, a scorer): a process group with a pid file and a log file.

Each service runs in its own session, so stopping it signals its children too (``airflow standalone`` and
``mlflow server`` fork workers that outlive a SIGTERM to the leader alone). Subclasses say what to run and
when it is healthy; this class starts, finds and stops it, from this process or from another one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import AfterValidator

log = logging.getLogger(__name__)

# A service's folder in its settings, made absolute once: it ends up in command lines and pid files, which
# must mean the same from any working directory.
AbsolutePath = Annotated[Path, AfterValidator(Path.resolve)]


class ServiceError(RuntimeError):
    """A local service could not start: a port is taken, it already runs, or it did not become healthy."""


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on (host, port) or the port cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when a GET of ``url`` succeeds (2xx): the health check of most HTTP services."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except (urllib.error.URLError, OSError):
        return False


class LocalService:
    """A service started in its own process group from ``home``, recorded in ``pid_file``, logging to
    ``log_file``. One instance per running service: several of a kind differ by home and ports."""

    name = "local service"  # in messages, e.g. "Kafka broker on 127.0.0.1:9092"
    # Bytes the leader's /proc/<pid>/cmdline contains (each subclass sets them): a recycled pid is not
    # mistaken for the service.
    marker: bytes
    pid_name, log_name = "service.pid", "service.log"
    host = "127.0.0.1"
    cwd: Path | None = None
    error: type[Exception] = ServiceError  # what start() raises; launchers keep their own error type
    start_timeout, stop_timeout, poll_s = 120.0, 30.0, 0.5

    def __init__(self, home: Path) -> None:
        self.home = home

    # ------------------------------------------------------------ what subclasses say

    def command(self) -> list[str]:
        """The command line of the service's leader process."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Variables added to this process's environment for the service."""
        return {}

    def ports(self) -> list[tuple[int, str, str]]:
        """(port, what listens there, the setting that moves it) for each port the service binds on ``host``."""
        return []

    def prepare(self) -> None:
        """Write config files and the like before the launch; ``home`` exists."""

    def healthy(self) -> bool:
        """True once the service answers as it should."""
        raise NotImplementedError

    def describe(self) -> str:
        """What a user needs once it runs (a store, a login), for the CLI's messages; empty by default."""
        return ""

    # ------------------------------------------------------------ files

    @property
    def pid_file(self) -> Path:
        return self.home / self.pid_name

    @property
    def log_file(self) -> Path:
        return self.home / self.log_name

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` of the log file, for error messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"

    def running_pid(self) -> int | None:
        """The pid in ``pid_file`` if that process is alive and its command line contains ``marker``."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's: its command line still tells
        cmdline = Path(f"/proc/{pid}/cmdline")
        return pid if not cmdline.exists() or self.marker in cmdline.read_bytes() else None

    # ------------------------------------------------------------ start and stop

    def start(self, timeout: float | None = None) -> subprocess.Popen:
        """Launch the service in a new session and return once ``healthy()``.

        Raises ``error`` when it already runs, a port is taken, or it exits or stays unhealthy within
        ``timeout`` (then its group is stopped and the message carries the log tail).
        """
        proc = self.launch()
        self.await_start(proc, timeout)
        return proc

    def await_start(self, proc: subprocess.Popen, timeout: float | None = None) -> None:
        """Wait until ``proc`` (from ``launch``) is healthy; on failure (or Ctrl-C) stop its group and raise."""
        try:
            waited = self.wait_healthy(self.start_timeout if timeout is None else timeout, proc)
        except BaseException:  # also Ctrl-C: nothing half-started is left behind
            # The leader may be gone already while its children live on: stop the group by its id.
            _stop_group(proc.pid, self.name, self.stop_timeout)
            self.pid_file.unlink(missing_ok=True)
            raise
        log.info("%s ready after %.1f s (pid %d, log %s)", self.name, waited, proc.pid, self.log_file)

    def launch(self) -> subprocess.Popen:
        """Check that it does not run and its ports are free, prepare, and launch the service in a new session
        without waiting for it (``start`` waits; a cluster launches every node before any can be healthy)."""
        pid = self.running_pid()
        if pid is not None:
            raise self.error(f"{self.name} already runs (pid {pid} in {self.pid_file}); stop it first")
        for port, what, setting in self.ports():
            if port_in_use(self.host, port):
                raise self.error(f"port {port} on {self.host} ({what}) is already in use; stop what holds it "
                                 f"or choose another port ({setting})")
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(self.command(), cwd=self.cwd, env={**os.environ, **self.environment()},
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def up(self, timeout: float | None = None) -> tuple[int, float | None]:
        """Start the service unless it already runs (what ``make <service>-up`` does): its pid, and the seconds
        the start took or None when it was running already."""
        pid = self.running_pid()
        if pid is not None:
            return pid, None
        t0 = time.monotonic()
        proc = self.start(timeout)
        return proc.pid, time.monotonic() - t0

    def wait_healthy(self, timeout: float, proc: subprocess.Popen | None = None) -> float:
        """Poll ``healthy()`` until true; the seconds waited. Raises ``error`` with the log tail when ``proc``
        exits or ``timeout`` passes."""
        start = time.monotonic()
        while not self.healthy():
            if proc is not None and proc.poll() is not None:
                raise self.error(f"{self.name} exited with code {proc.returncode} during start-up; last lines "
                                 f"of {self.log_file}:\n{self.log_tail()}")
            if time.monotonic() - start > timeout:
                raise self.error(f"{self.name} did not become healthy within {timeout:.0f} s; last lines of "
                                 f"{self.log_file}:\n{self.log_tail()}")
            time.sleep(self.poll_s)
        return time.monotonic() - start

    def stop(self, timeout: float | None = None) -> bool:
        """SIGTERM the whole process group, SIGKILL what is left after ``timeout``; remove the pid file.

        Returns False when nothing was running from this pid file.
        """
        pid = self.running_pid()
        if pid is not None:
            _stop_group(pid, self.name, self.stop_timeout if timeout is None else timeout)
            log.info("%s (process group %d) stopped", self.name, pid)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None

    def kill(self) -> bool:
        """SIGKILL the whole process group with no chance to shut down (a crash); False when nothing ran."""
        pid = self.running_pid()
        if pid is not None:
            kill_group(pid)
            log.info("%s (process group %d) killed", self.name, pid)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None


def kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` at once (a crash, for fault tests) and wait until none of it runs."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.05)
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass


def _group_alive(pgid: int) -> bool:
    """True while a member of the group runs; zombies waiting for a parent to collect them do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc").is_dir():
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # the process ended meanwhile
        if int(group) == pgid and state != "Z":
            return True
    return False


def _stop_group(pgid: int, name: str, timeout: float) -> None:
    """SIGTERM the process group ``pgid`` (leader and children), SIGKILL what is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.1)
        if not _group_alive(pgid):
            break
        log.warning("%s (process group %d) still alive after %s; escalating", name, pgid, sig.name)
    # A leader that is our own child (a test fixture started it) stays a zombie until collected.
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass


def add_commands(app: typer.Typer, service: Callable[[], LocalService], *, what: str, stop_hint: str) -> None:
    """Add ``up``, ``down`` and ``status`` of the service ``service()`` builds (from the environment) to ``app``:
    what ``make <service>-up`` and its siblings run. ``what`` names it in the help ("the broker")."""

    def up() -> None:
        svc = service()
        try:
            pid, took = svc.up()
        except ServiceError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(1) from None
        state = "already running" if took is None else f"ready in {took:.1f} s"
        typer.echo(f"{svc.name} {state} (pid {pid}, log {svc.log_file}){svc.describe()}; stop it with "
                   f"`{stop_hint}`")

    def down() -> None:
        svc = service()
        typer.echo(f"{svc.name} stopped" if svc.stop() else f"nothing of {svc.name} runs from {svc.home}")

    def status() -> None:
        svc = service()
        pid, ok = svc.running_pid(), svc.healthy()
        if pid is None and not ok:
            typer.echo(f"{svc.name} is not running from {svc.home}")
            raise typer.Exit(1)
        typer.echo(f"{svc.name}: pid {pid}, {'healthy' if ok else 'not answering'}{svc.describe()}")
        if not ok:
            raise typer.Exit(1)

    up.__doc__ = f"Start {what} in the background; return once it is healthy (a no-op when it already runs)."
    down.__doc__ = f"Stop {what} started by `up`: its whole process group."
    status.__doc__ = f"Say whether {what} runs and answers; exit 1 when it does not."
    for command in (up, down, status):
        app.command()(command)
