"""Local services run in their own process group and recorded in a pid file: find them, stop them."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _alive(pid: int, marker: bytes) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A recycled pid belongs to another program: trust it only if its command line names the service.
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or marker in cmdline.read_bytes()


def recorded_pid(pid_file: Path, marker: bytes) -> int | None:
    """The pid written in ``pid_file`` if that process is alive and its command line contains ``marker``."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid, marker) else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    # When the leader is our own child (a pytest fixture), collect it so it does not linger as a zombie.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_recorded(pid_file: Path, marker: bytes, name: str, timeout: float = 30.0) -> int | None:
    """Stop the process group recorded in ``pid_file`` and remove the file; the pid stopped, or None when
    nothing was running there."""
    pid = recorded_pid(pid_file, marker)
    if pid is not None:
        stop_group(pid, name, timeout)
    pid_file.unlink(missing_ok=True)
    return pid


def stop_group(pgid: int, name: str, timeout: float = 30.0) -> None:
    """SIGTERM the whole process group ``pgid`` (leader and children), SIGKILL what is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pgid):
            _reap(pgid)
            time.sleep(0.1)
        if not _group_alive(pgid):
            return
        log.warning("%s (process group %d) still alive after %s; escalating", name, pgid, sig.name)
