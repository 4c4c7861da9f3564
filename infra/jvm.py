"""What the project's JVM services (the Kafka broker, the schema registry) share: finding Maven and a Java runtime
new enough, and filling a cache with a distribution fetched by Maven, atomically.

A cache folder is filled in a staging folder beside it, checked by the caller, marked ``COMPLETE`` and only then
renamed into place: a failed or interrupted download never leaves a half-filled cache that a later run would use.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from infra.local_service import ServiceError

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
# Where Debian's JDK packages and the Adoptium (Temurin) packages install their runtimes.
JVM_ROOT = Path("/usr/lib/jvm")
_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


def require_tool(name: str, prerequisite: str, *, needed_for: str, install: str,
                 error: type[Exception] = ServiceError) -> str:
    """The path of executable ``name`` on PATH; else raise ``error`` naming the prerequisite, what needs it
    (``needed_for``: "to run the local Kafka broker") and how to install it."""
    path = shutil.which(name)
    if path is None:
        raise error(f"`{name}` not found on PATH: {prerequisite} is required {needed_for} ({install}).")
    return path


def java_version_output(java: str) -> str:
    """What ``java -version`` prints (on stderr), or the reason it could not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return out.stderr or out.stdout


def parse_java_major(text: str) -> int | None:
    """The feature release of a ``java -version`` output (``"1.8.0_292"`` -> 8, ``"21.0.5"`` -> 21,
    ``"25" 2025-09-16`` -> 25, ``"26-ea"`` -> 26); None when it names none."""
    m = _VERSION.search(text)
    if m is None:
        return None
    major = int(m[1])
    return int(m[2]) if major == 1 and m[2] else major


def java_major(java: str) -> int | None:
    """The feature release of the runtime ``java`` (a path or a name on PATH); None when it does not run as Java."""
    return parse_java_major(java_version_output(java))


def find_java(minimum: int, *, java_home: Path | None, java_home_setting: str, needed_by: str, install: str,
              error: type[Exception] = ServiceError, jvm_root: Path = JVM_ROOT) -> tuple[str, int]:
    """A Java runtime of release ``minimum`` or newer, and its release: the one in ``java_home`` when given (the
    setting ``java_home_setting``; older is an error, not a reason to look elsewhere), else ``$JAVA_HOME/bin/java``
    or ``java`` on PATH if new enough, else the newest under ``jvm_root/*/bin/java``.

    Raises ``error`` naming ``needed_by`` (what needs it), what was found, how to ``install`` one and the setting.
    """
    if java_home is not None:
        java = java_home / "bin" / "java"
        major = java_major(str(java)) if java.is_file() else None
        if major is None or major < minimum:
            found = "no Java runtime" if major is None else f"Java {major}"
            raise error(f"{java_home_setting}={java_home}: {java} is {found}; {needed_by} needs Java {minimum} "
                        f"or newer")
        return str(java), major
    candidates = [str(Path(home) / "bin" / "java") for home in [os.environ.get("JAVA_HOME")] if home]
    candidates += [path for path in [shutil.which("java")] if path]
    found, tried = [], set()
    for java in candidates:
        if os.path.realpath(java) in tried:
            continue
        tried.add(os.path.realpath(java))
        major = java_major(java)
        found.append(f"{java} (Java {major})" if major else f"{java} (not runnable)")
        if major is not None and major >= minimum:
            return java, major
    # The JDKs installed beside the default one: the newest release that qualifies.
    installed = sorted({os.path.realpath(p) for p in jvm_root.glob("*/bin/java")} - tried)
    versions = [(major, java) for java in installed if (major := java_major(java)) is not None]
    found += [f"{java} (Java {major})" for major, java in versions if major < minimum]
    qualified = max(((major, java) for major, java in versions if major >= minimum), default=None)
    if qualified is not None:
        return qualified[1], qualified[0]
    raise error(f"{needed_by} needs Java {minimum} or newer; found {', '.join(found) or 'no Java at all'}. Install "
                f"a JDK {minimum}+ under {jvm_root} ({install}) or set {java_home_setting} to the folder of one.")


def is_complete(folder: Path) -> bool:
    """True when ``folder`` is a cache entry that ``fill_atomically`` finished."""
    return (folder / MARKER).exists()


def fill_atomically(target: Path, fill: Callable[[Path], None], *, what: str) -> None:
    """Create cache entry ``target``: ``fill(staging)`` fills (and checks) a staging folder beside it, which is then
    marked complete and renamed to ``target``. An unmarked ``target`` (an earlier run died half way) is discarded
    first; whatever ``fill`` raises leaves nothing behind."""
    if target.exists():
        log.warning("discarding incomplete %s cache at %s", what, target)
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-staging-", dir=target.parent))
    try:
        fill(staging)
        (staging / MARKER).write_text(target.name + "\n")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_maven(cmd: list[str], *, artifact: str, error: type[Exception] = ServiceError,
              cwd: Path | None = None) -> None:
    """Run a Maven command that fetches ``artifact``; raise ``error`` with the end of Maven's output on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise error(f"Maven could not fetch {artifact} (exit {proc.returncode}); nothing was cached.\n{tail}")
