"""Fetch and cache the official Apache Kafka broker jars from Maven Central.

The cache is filled atomically (``infra.jvm.fill_atomically``): Maven copies the runtime dependencies into a
staging folder, the folder is checked (the broker jar is there, every jar is a readable zip) and only then renamed
into place with a ``COMPLETE`` marker. A failed or interrupted download therefore never leaves a half-filled cache
that a later run would use.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from infra import jvm
from infra.kafka.errors import KafkaSetupError

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
POM = Path(__file__).with_name("pom.xml")
INSTALL_HINT = "on Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven"


def default_cache_dir() -> Path:
    """Where fetched distributions live: ``$KAFKA_DIST_CACHE`` or ``~/.cache/retrain-loop/kafka``."""
    override = os.environ.get("KAFKA_DIST_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "retrain-loop" / "kafka"


def require_tool(name: str, prerequisite: str) -> str:
    """Return the path of executable ``name`` or raise a KafkaSetupError naming the prerequisite."""
    return jvm.require_tool(name, prerequisite, needed_for="to run the local Kafka broker", install=INSTALL_HINT,
                            error=KafkaSetupError)


def check_java(java: str) -> None:
    """Raise KafkaSetupError unless ``java`` is version 17 or newer (Kafka 4 brokers need Java 17)."""
    text = jvm.java_version_output(java)
    major = jvm.parse_java_major(text)
    if major is None:
        raise KafkaSetupError(f"could not read the Java version from `{java} -version`: {text!r}")
    if major < 17:
        raise KafkaSetupError(f"Java 17 or newer is required by Kafka 4 brokers; `{java}` is Java {major}")


@dataclass(frozen=True)
class Distribution:
    """A complete, cached set of broker jars."""

    version: str
    lib_dir: Path

    @property
    def classpath(self) -> str:
        return str(self.lib_dir / "*")


def _verify(lib_dir: Path, version: str) -> None:
    jars = sorted(lib_dir.glob("*.jar"))
    broker_jar = lib_dir / f"kafka_2.13-{version}.jar"
    if not broker_jar.exists():
        raise KafkaSetupError(f"Maven finished but {broker_jar.name} is missing from {lib_dir}")
    for jar in jars:
        try:
            with zipfile.ZipFile(jar) as zf:
                if zf.testzip() is not None:
                    raise zipfile.BadZipFile("corrupt member")
        except zipfile.BadZipFile as exc:
            raise KafkaSetupError(f"downloaded jar {jar.name} is corrupt ({exc})") from exc


def cached(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Distribution | None:
    """Return the cached distribution of ``version`` if it is complete, else None."""
    target = (cache_dir or default_cache_dir()) / version
    if jvm.is_complete(target):
        return Distribution(version, target / "libs")
    return None


def fetch(
    version: str = KAFKA_VERSION,
    cache_dir: Path | None = None,
    *,
    offline: bool = False,
) -> Distribution:
    """Return the broker distribution for ``version``, downloading it with Maven if not cached.

    Raises KafkaSetupError when Java or Maven is missing or the download fails; nothing partial is kept.
    """
    java = require_tool("java", "Java 17")
    check_java(java)
    cache_dir = cache_dir or default_cache_dir()
    hit = cached(version, cache_dir)
    if hit is not None:
        return hit

    mvn = require_tool("mvn", "Maven")
    target = cache_dir / version

    def fill(staging: Path) -> None:
        cmd = [
            mvn, "-B", "-q", "-f", str(POM),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging / 'libs'}",
        ]
        if offline:
            cmd.insert(1, "-o")
        log.info("fetching Apache Kafka %s from Maven Central into %s", version, target)
        jvm.run_maven(cmd, artifact=f"org.apache.kafka:kafka_2.13:{version}", error=KafkaSetupError)
        _verify(staging / "libs", version)

    jvm.fill_atomically(target, fill, what="Kafka")
    return Distribution(version, target / "libs")
