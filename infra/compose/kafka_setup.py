"""The secured broker of infra/compose/sasl-ssl.yml, prepared as ``make kafka-up KAFKA_SECURITY=sasl_ssl`` prepares
the local one (``infra.kafka.broker.Broker.prepare``) and from the same functions: the CA and the broker certificate
(``security.ensure_tls``: made once, reused, issued again near expiry), the broker's settings
(``broker.server_properties``: SASL_SSL with SCRAM-SHA-512, the mTLS controller listener, the standard authorizer
denying what no ACL allows) and each role's SCRAM credential for the storage format (``security.scram_arguments``).
Only the passwords differ: the deployment's (``KAFKA_<ROLE>_PASSWORD`` in .env), not generated ones.

The apache/kafka container then formats its storage with ``kafka-storage.sh format ... @<scram file>`` (argparse4j
reads the arguments from the file: no password on a command line) and runs ``kafka-server-start.sh`` on these
settings. The image's own start script is not used: it builds its settings from KAFKA_* variables and insists on
JKS key stores with passwords for an SSL listener, where these are PEM files as the local broker's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infra.kafka import broker, security
from infra.kafka.errors import KafkaSetupError
from infra.registry import server as registry_server

# The compose service name: the broker certificate's subject alternative name, its listeners and the address every
# container uses (kafka:9092; the controller kafka:9093, reached by the broker alone).
BROKER_HOST = "kafka"
PORT, CONTROLLER_PORT = 9092, 9093
# Beside server.properties in the broker's folder: the storage format's SCRAM arguments (written only while the
# storage is not formatted; the broker removes it once formatted), and the admin's Java client settings that the
# container's health check uses.
SCRAM_FILE = "storage-format.scram"
ADMIN_CLIENT_FILE = "admin-client.properties"
CA_FILE = "ca.pem"


def password_variable(role: str) -> str:
    """The .env variable of ``role``'s SCRAM password: KAFKA_<ROLE>_PASSWORD (no librdkafka key: never a client
    property, see ``ml.kafka_client.env_key``)."""
    return f"KAFKA_{role.upper()}_PASSWORD"


PASSWORD_VARIABLES = {role: password_variable(role) for role in security.ROLES}


def role_passwords(environ: Mapping[str, str]) -> dict[str, str]:
    """Each role's password from ``environ``; raises KafkaSetupError naming every variable that is unset or empty."""
    missing = [var for var in PASSWORD_VARIABLES.values() if not environ.get(var)]
    if missing:
        raise KafkaSetupError(f"set {', '.join(missing)} in .env (one SCRAM password per role; see .env.example)")
    return {role: environ[var] for role, var in PASSWORD_VARIABLES.items()}


def broker_config(data_dir: Path) -> broker.BrokerConfig:
    """The local broker's settings for the compose one: its host name, ports and folder, secured."""
    return broker.BrokerConfig(data_dir=data_dir, host=BROKER_HOST, port=PORT, controller_port=CONTROLLER_PORT,
                               security="sasl_ssl", overrides={})


@dataclass(frozen=True)
class BrokerFiles:
    """What ``prepare`` wrote."""

    server_properties: Path
    admin_client: Path
    scram: Path | None  # None: the storage exists, its credentials with it
    ca_cert: Path  # the public copy for the clients


def _properties(props: Mapping[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in props.items())


def prepare(data_dir: Path, ca_dir: Path, passwords: Mapping[str, str],
            owner: tuple[int, int] | None = None) -> BrokerFiles:
    """Write the broker's certificate, settings and (before its first start) SCRAM arguments under ``data_dir``, and
    the CA certificate to ``ca_dir`` (readable by all: the clients verify the broker with it). ``owner`` (uid, gid):
    give the broker's files to the user the broker runs as (the one-shot runs as root on fresh volumes)."""
    cfg = broker_config(data_dir)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    tls = security.ensure_tls(cfg.tls.tls_dir, cfg.host)
    admin_password = passwords[security.ADMIN]
    security.write_private(cfg.props_file, _properties(broker.server_properties(cfg, admin_password)))
    admin = security.client_properties(cfg.bootstrap_servers, security.ADMIN, admin_password, tls.ca_cert)
    admin_client = cfg.data_dir / ADMIN_CLIENT_FILE
    # The Java form of the admin's librdkafka settings, as the local registry's storage gets them.
    security.write_private(admin_client, _properties(registry_server.kafka_client_properties(admin)))
    scram: Path | None = cfg.data_dir / SCRAM_FILE
    if (cfg.log_dirs / "meta.properties").exists():
        # SCRAM credentials are created with the storage (as on the local path): none to pass any more.
        scram.unlink(missing_ok=True)
        scram = None
    else:
        # One argument per line, as argparse4j reads an @file.
        security.write_private(scram, "".join(f"{arg}\n" for arg in security.scram_arguments(passwords)))
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_dir.chmod(0o755)
    public_ca = ca_dir / CA_FILE
    shutil.copyfile(tls.ca_cert, public_ca)
    public_ca.chmod(0o644)
    if owner is not None:
        uid, gid = owner
        for path in (cfg.data_dir, tls.tls_dir, *tls.tls_dir.iterdir(), cfg.props_file, admin_client,
                     *([scram] if scram else [])):
            os.chown(path, uid, gid)
    return BrokerFiles(cfg.props_file, admin_client, scram, public_ca)
