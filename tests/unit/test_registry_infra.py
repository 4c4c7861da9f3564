"""The local schema registry's tooling without Java: which Java it picks, its settings and command line, clear
errors (taken ports, no Java 21, failed downloads), and the CLI."""

from __future__ import annotations

import io
import socket
import stat
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra import jvm
from infra.local_service import free_port
from infra.registry import distribution, server
from infra.registry.__main__ import app
from infra.registry.distribution import RegistrySetupError


def fake_jdk(root: Path, name: str, version_line: str | None) -> Path:
    """``root/name/bin/java``: a script that prints ``version_line`` to stderr as ``java -version`` does (None: it
    fails without a word). Returns the JDK's folder."""
    java = root / name / "bin" / "java"
    java.parent.mkdir(parents=True)
    body = f"echo '{version_line}' >&2" if version_line else "exit 1"
    java.write_text(f"#!/bin/sh\n{body}\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return root / name


def openjdk(release: str) -> str:
    return f'openjdk version "{release}" 2026-04-21'


@pytest.mark.parametrize("text, release", [
    ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)', 17),
    ('java version "1.8.0_292"', 8),
    ('openjdk version "25" 2025-09-16 LTS', 25),
    ('openjdk version "26-ea" 2026-03-17', 26),
    ('Picked up JAVA_TOOL_OPTIONS: -Xmx1g\nopenjdk version "21.0.5" 2024-10-15', 21),
    ("sh: 1: java: not found", None),
    ("", None),
])
def test_java_release_is_read_from_java_version(text, release):
    assert jvm.parse_java_major(text) == release


@pytest.fixture
def no_java(monkeypatch, tmp_path) -> Path:
    """No JAVA_HOME, no java on PATH; returns an empty folder to stand for /usr/lib/jvm."""
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    root = tmp_path / "jvm"
    root.mkdir()
    return root


def find(jvm_root: Path, java_home: Path | None = None) -> tuple[str, int]:
    return jvm.find_java(21, java_home=java_home, java_home_setting="REGISTRY_JAVA_HOME", needed_by="the registry",
                         install="a hint", error=RegistrySetupError, jvm_root=jvm_root)


def test_the_newest_installed_jdk_is_picked_when_the_default_java_is_too_old(no_java, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(fake_jdk(tmp_path, "default", openjdk("17.0.15")) / "bin"))
    for name, release in [("java-17", "17.0.15"), ("temurin-25", "25.0.3"), ("temurin-21", "21.0.9"),
                          ("zulu-22", "22.0.2")]:
        fake_jdk(no_java, name, openjdk(release))
    fake_jdk(no_java, "broken", None)
    assert find(no_java) == (str(no_java / "temurin-25" / "bin" / "java"), 25)


def test_a_new_enough_java_home_or_path_wins_over_the_installed_ones(no_java, monkeypatch, tmp_path):
    fake_jdk(no_java, "temurin-25", openjdk("25.0.3"))
    on_path = fake_jdk(tmp_path, "path-jdk", openjdk("21.0.5")) / "bin"
    monkeypatch.setenv("PATH", str(on_path))
    assert find(no_java) == (str(on_path / "java"), 21)
    home = fake_jdk(tmp_path, "home-jdk", openjdk("23"))
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert find(no_java) == (str(home / "bin" / "java"), 23)


def test_the_java_home_setting_is_used_as_given_and_never_falls_back(no_java, tmp_path):
    fake_jdk(no_java, "temurin-25", openjdk("25.0.3"))
    chosen = fake_jdk(tmp_path, "chosen", openjdk("21.0.1"))
    assert find(no_java, chosen) == (str(chosen / "bin" / "java"), 21)
    old = fake_jdk(tmp_path, "old", openjdk("17.0.15"))
    with pytest.raises(RegistrySetupError, match=f"REGISTRY_JAVA_HOME={old}: .* is Java 17; the registry needs "
                                                 "Java 21 or newer"):
        find(no_java, old)
    with pytest.raises(RegistrySetupError, match="is no Java runtime"):
        find(no_java, tmp_path / "missing")


def test_no_java_21_is_an_error_that_says_what_was_found_and_what_to_do(no_java, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(fake_jdk(tmp_path, "default", openjdk("17.0.15")) / "bin"))
    fake_jdk(no_java, "java-11", openjdk("11.0.2"))
    with pytest.raises(RegistrySetupError) as err:
        find(no_java)
    message = str(err.value)
    assert message.startswith("the registry needs Java 21 or newer; found ")
    assert "(Java 17)" in message and f"{no_java / 'java-11' / 'bin' / 'java'} (Java 11)" in message
    assert f"Install a JDK 21+ under {no_java} (a hint) or set REGISTRY_JAVA_HOME" in message


def test_without_any_java_the_error_says_so(no_java):
    with pytest.raises(RegistrySetupError, match="found no Java at all"):
        find(no_java)


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    for var in ("REGISTRY_PORT", "REGISTRY_MANAGEMENT_PORT", "REGISTRY_DATA_DIR", "REGISTRY_JAVA_HOME",
                "REGISTRY_DIST_CACHE", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = server.RegistryConfig()
    assert (cfg.port, cfg.management_port, cfg.host) == (8081, 8091, "127.0.0.1")
    assert cfg.data_dir == tmp_path / ".local" / "registry"
    assert cfg.kafka_bootstrap_servers == "localhost:9092" and cfg.java_home is None
    assert cfg.dist_cache == Path.home() / ".cache" / "retrain-loop" / "apicurio"
    assert cfg.ccompat_url == "http://127.0.0.1:8081/apis/ccompat/v7"

    monkeypatch.setenv("REGISTRY_PORT", "18081")
    monkeypatch.setenv("REGISTRY_MANAGEMENT_PORT", "18091")
    monkeypatch.setenv("REGISTRY_DATA_DIR", "reg")
    monkeypatch.setenv("REGISTRY_JAVA_HOME", "/opt/jdk-21")
    monkeypatch.setenv("REGISTRY_DIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    cfg = server.RegistryConfig()
    assert (cfg.port, cfg.management_port, cfg.data_dir) == (18081, 18091, tmp_path / "reg")
    assert (cfg.java_home, cfg.dist_cache) == (Path("/opt/jdk-21"), tmp_path / "cache")
    assert cfg.kafka_bootstrap_servers == "broker:9092"


def test_the_command_line_binds_loopback_and_stores_in_kafka(tmp_path):
    home = fake_jdk(tmp_path, "jdk", openjdk("25.0.3"))
    cfg = server.RegistryConfig(data_dir=tmp_path / "data", port=18081, management_port=18091, java_home=home,
                                kafka_bootstrap_servers="127.0.0.1:19092",
                                overrides=server.own_topics("t-"))
    dist = distribution.Distribution("3.3.3", tmp_path / "dist")
    cmd = server.Registry(cfg, dist).command()

    assert cmd[0] == str(home / "bin" / "java") and cmd[-2:] == ["-jar", str(dist.home / "quarkus-run.jar")]
    assert {f"-Xmx{cfg.heap}", *server.JVM_FLAGS} <= set(cmd)
    props = dict(arg[2:].split("=", 1) for arg in cmd if arg.startswith("-D"))
    # Every listener on loopback (Quarkus' management interface would take 0.0.0.0:9000).
    assert {k: v for k, v in props.items() if k.endswith(".host")} == {
        "quarkus.http.host": "127.0.0.1", "quarkus.management.host": "127.0.0.1"}
    assert (props["quarkus.http.port"], props["quarkus.management.port"]) == ("18081", "18091")
    assert props["apicurio.storage.kind"] == "kafkasql"
    assert props["apicurio.kafkasql.bootstrap.servers"] == "127.0.0.1:19092"
    assert props["apicurio.kafkasql.topic"] == "t-kafkasql-journal"
    assert props["apicurio.kafkasql.snapshots.topic"] == "t-kafkasql-snapshots"
    # Nothing in the shared /tmp; the marker that tells this server's JVM from another's is in its command line.
    scratch = str(cfg.data_dir / "tmp")
    assert props["java.io.tmpdir"] == props["apicurio.storage.snapshot.location"] == scratch
    assert server.Registry(cfg, dist).marker in "\0".join(cmd).encode()


def test_start_names_the_port_that_is_taken(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        cfg = server.RegistryConfig(data_dir=tmp_path, port=free_port(), management_port=taken)
        registry = server.Registry(cfg, distribution.Distribution("3.3.3", tmp_path))
        with pytest.raises(RegistrySetupError, match=f"port {taken} on 127.0.0.1 .*management.*"
                                                     "REGISTRY_MANAGEMENT_PORT"):
            registry.start()
    assert not registry.pid_file.exists()


def test_failed_download_leaves_no_cache(tmp_path):
    # Offline and a version nobody has: Maven fails fast, and nothing may be left for the next run.
    cache = tmp_path / "cache"
    with pytest.raises(RegistrySetupError, match="Maven could not fetch io.apicurio:apicurio-registry-app:"
                                                 "0.0.0-missing:tar.gz:all .*nothing was cached"):
        distribution.fetch(cache, "0.0.0-missing", offline=True)
    assert list(cache.iterdir()) == []
    assert distribution.cached(cache, "0.0.0-missing") is None


def test_fetch_without_maven_names_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RegistrySetupError, match="`mvn` not found on PATH: Maven is required to fetch Apicurio"):
        distribution.fetch(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_an_incomplete_cache_is_not_used(tmp_path):
    (tmp_path / "3.3.3").mkdir()
    (tmp_path / "3.3.3" / "quarkus-run.jar").write_bytes(b"half")
    assert distribution.cached(tmp_path) is None
    (tmp_path / "3.3.3" / jvm.MARKER).write_text("3.3.3\n")
    assert distribution.cached(tmp_path) == distribution.Distribution("3.3.3", tmp_path / "3.3.3")


def test_a_corrupt_or_incomplete_archive_is_refused(tmp_path):
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(RegistrySetupError, match="truncated.tar.gz is corrupt"):
        distribution._unpack(truncated, tmp_path / "out")

    archive = tmp_path / "no-runner.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"jar"
        info = tarfile.TarInfo("app/apicurio-registry-app-3.3.3.jar")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    distribution._unpack(archive, tmp_path / "unpacked")
    with pytest.raises(RegistrySetupError, match="has no quarkus-run.jar"):
        distribution._verify(tmp_path / "unpacked", "3.3.3")


def test_cli_status_and_fetch_say_what_is_wrong(monkeypatch, tmp_path):
    runner = CliRunner()
    monkeypatch.setenv("REGISTRY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("REGISTRY_PORT", "1")
    monkeypatch.setenv("REGISTRY_MANAGEMENT_PORT", "2")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 1
    assert f"Apicurio Registry on http://127.0.0.1:1 is not running from {tmp_path / 'data'}" in result.output

    monkeypatch.setenv("REGISTRY_JAVA_HOME", str(fake_jdk(tmp_path, "jdk17", openjdk("17.0.15"))))
    monkeypatch.setenv("REGISTRY_DIST_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["fetch"])
    assert result.exit_code == 1
    assert "is Java 17; Apicurio Registry 3.3.3 needs Java 21 or newer" in result.output.replace("\n", "")
    assert not (tmp_path / "cache").exists()  # refused before the download
