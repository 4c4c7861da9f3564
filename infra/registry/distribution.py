"""Fetch and cache the official Apicurio Registry server (``io.apicurio:apicurio-registry-app``, the ``all``
tar.gz: a Quarkus application started with ``java -jar quarkus-run.jar``) from Maven Central.

Maven copies the archive into a staging folder, it is unpacked there and checked (``quarkus-run.jar`` and the
application jar are there), and only then renamed into the cache with a ``COMPLETE`` marker
(``infra.jvm.fill_atomically``): an interrupted download or unpacking is never used by a later run.
"""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

from infra import jvm
from infra.local_service import ServiceError

log = logging.getLogger(__name__)

REGISTRY_VERSION = "3.3.3"
RUN_JAR = "quarkus-run.jar"  # Quarkus' launcher of the application in lib/ and app/
# Apicurio Registry 3's classes are compiled for Java 21.
JAVA_RELEASE = 21
INSTALL_HINT = "on Debian/Ubuntu: apt-get install maven"
# Debian 12 packages no Java 21; Adoptium's repository has Temurin for Debian and Ubuntu.
JAVA_INSTALL_HINT = ("Debian 12 has none: Temurin's temurin-21-jdk from https://adoptium.net/installation/linux/; "
                     "Ubuntu 24.04: apt-get install openjdk-21-jre-headless")


class RegistrySetupError(ServiceError):
    """A prerequisite is missing, the download failed, or the registry could not start."""


def default_cache_dir() -> Path:
    """Where fetched distributions live unless REGISTRY_DIST_CACHE says otherwise."""
    return Path.home() / ".cache" / "retrain-loop" / "apicurio"


def artifact(version: str) -> str:
    """The Maven coordinates of the server's archive (groupId:artifactId:version:type:classifier)."""
    return f"io.apicurio:apicurio-registry-app:{version}:tar.gz:all"


@dataclass(frozen=True)
class Distribution:
    """A complete, cached, unpacked registry server: ``java -jar <home>/quarkus-run.jar`` starts it."""

    version: str
    home: Path


def _verify(home: Path, version: str) -> None:
    for needed in (home / RUN_JAR, home / "app" / f"apicurio-registry-app-{version}.jar"):
        if not needed.is_file():
            raise RegistrySetupError(f"the Apicurio Registry {version} archive has no {needed.relative_to(home)}")


def _unpack(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            # "data": no absolute paths, no links out of the folder, no device files.
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise RegistrySetupError(f"the downloaded {archive.name} is corrupt ({exc}); nothing was cached") from exc


def cached(cache_dir: Path, version: str = REGISTRY_VERSION) -> Distribution | None:
    """The cached distribution of ``version`` if it is complete, else None."""
    target = cache_dir / version
    return Distribution(version, target) if jvm.is_complete(target) else None


def fetch(cache_dir: Path, version: str = REGISTRY_VERSION, *, offline: bool = False) -> Distribution:
    """The registry server of ``version``, downloaded with Maven and unpacked into ``cache_dir/<version>`` if not
    cached there.

    Raises RegistrySetupError when Maven is missing or the download fails; nothing partial is kept.
    """
    hit = cached(cache_dir, version)
    if hit is not None:
        return hit
    mvn = jvm.require_tool("mvn", "Maven", needed_for="to fetch Apicurio Registry", install=INSTALL_HINT,
                           error=RegistrySetupError)
    target = cache_dir / version

    def fill(staging: Path) -> None:
        download = staging / "download"
        cmd = [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={artifact(version)}",
               f"-DoutputDirectory={download}"]
        if offline:
            cmd.insert(1, "-o")
        log.info("fetching Apicurio Registry %s from Maven Central into %s", version, target)
        # Run outside any project: the goal needs none, and a pom.xml in the working directory would be read.
        jvm.run_maven(cmd, artifact=artifact(version), error=RegistrySetupError, cwd=staging)
        archives = list(download.glob("*.tar.gz"))
        if len(archives) != 1:
            raise RegistrySetupError(f"Maven finished but left {len(archives)} archives in {download}")
        _unpack(archives[0], staging)
        archives[0].unlink()
        download.rmdir()
        _verify(staging, version)

    jvm.fill_atomically(target, fill, what="Apicurio Registry")
    return Distribution(version, target)
