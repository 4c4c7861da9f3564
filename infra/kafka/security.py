"""The secured local broker (KAFKA_SECURITY=sasl_ssl): its CA and certificate, one SCRAM principal per role, the
client settings of each role and the broker settings that require them.

Clients authenticate with SCRAM-SHA-512 over TLS; the controller listener takes only clients holding a certificate
of the local CA (the broker's own); every principal but the super users needs ACLs. Keys and passwords are written
owner-only (0600) and never logged.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ml.kafka_client import read_properties

# One SCRAM principal per role of the loop: admin is the super user (topics, ACLs, the registry's storage); the
# others get only what ml/acls.py grants them (replayer writes events, loop retrains, scorer scores, monitor reads).
ROLES = ("admin", "replayer", "loop", "scorer", "monitor")
ADMIN = "admin"
MECHANISM = "SCRAM-SHA-512"
# The broker certificate's subject: its principal on the mTLS controller listener is User:CN=<this>.
BROKER_CN = "retrain-loop-broker"
BROKER_PRINCIPAL = f"User:CN={BROKER_CN}"
CA_DAYS, CERT_DAYS = 3650, 825
RENEW_BEFORE = datetime.timedelta(days=30)  # a certificate this close to expiry is issued again on start


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of the local CA and the broker (``tls_dir`` of a data folder)."""

    tls_dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca.key"

    @property
    def broker_cert(self) -> Path:
        return self.tls_dir / "broker.crt"

    @property
    def broker_keystore(self) -> Path:
        """The broker's private key, certificate and CA certificate in one file: Kafka's PEM key store."""
        return self.tls_dir / "broker.pem"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    # PKCS#8 without a passphrase: what Kafka's PEM key store reads without ssl.key.password.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def subject_alt_names(host: str) -> list[x509.GeneralName]:
    """The names the broker certificate is valid for: ``host``, 127.0.0.1 and localhost (clients verify them)."""
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        extra: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        extra = x509.DNSName(host)
    return names if extra in names else [*names, extra]


def _make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "retrain-loop local CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        # path_length 0: the CA signs leaf certificates only.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_broker_cert(host: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
                      ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_CN)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        # Server: the listeners; client: the broker's own connections to its mTLS controller listener.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _still_good(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - _now() > RENEW_BEFORE


def _broker_cert_fits(files: TlsFiles, host: str, ca_cert: x509.Certificate) -> bool:
    """True when the broker certificate on disk is signed by ``ca_cert``, names ``host`` and is not about to expire."""
    if not (files.broker_cert.exists() and files.broker_keystore.exists()):
        return False
    cert = x509.load_pem_x509_certificate(files.broker_cert.read_bytes())
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return _still_good(cert) and all(name in sans for name in subject_alt_names(host))


def ensure_tls(tls_dir: Path, host: str) -> TlsFiles:
    """The local CA and the broker certificate under ``tls_dir``: made on first use, reused after; the broker
    certificate is issued again when ``host`` changed or it nears expiry, the CA only when missing or expiring."""
    files = TlsFiles(_private_dir(tls_dir))
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes()) if files.ca_cert.exists() else None
    if ca_cert is None or not files.ca_key.exists() or not _still_good(ca_cert):
        ca_key, ca_cert = _make_ca()
        write_private(files.ca_key, _key_pem(ca_key))
        files.ca_cert.write_text(_cert_pem(ca_cert))
    if not _broker_cert_fits(files, host, ca_cert):
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        key, cert = _make_broker_cert(host, ca_key, ca_cert)
        write_private(files.broker_keystore, _key_pem(key) + _cert_pem(cert) + _cert_pem(ca_cert))
        files.broker_cert.write_text(_cert_pem(cert))
    return files


# ---------------------------------------------------------------- principals and their client settings


def client_file(clients_dir: Path, role: str) -> Path:
    return clients_dir / f"{role}.properties"


def passwords(clients_dir: Path, *, create: bool) -> dict[str, str]:
    """Each role's SCRAM password: read from its client file, else made (``create``, before the storage is
    formatted with them). Raises LookupError naming the missing files when a password is gone and may not be made."""
    found, missing = {}, []
    for role in ROLES:
        path = client_file(clients_dir, role)
        password = read_properties(path).get("sasl.password") if path.exists() else None
        if password:
            found[role] = password
        elif create:
            found[role] = secrets.token_urlsafe(24)
        else:
            missing.append(str(path))
    if missing:
        raise LookupError(", ".join(missing))
    return found


def client_properties(bootstrap: str, role: str, password: str, ca_cert: Path) -> dict[str, str]:
    """A role's librdkafka settings for the secured broker (confluent-kafka takes them as they are)."""
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": MECHANISM,
        "sasl.username": role,
        "sasl.password": password,
        "ssl.ca.location": str(ca_cert.resolve()),
    }


def write_client_files(clients_dir: Path, bootstrap: str, role_passwords: Mapping[str, str],
                       ca_cert: Path) -> dict[str, Path]:
    """Write ``clients_dir/<role>.properties`` (0600) for every role; rewritten on each start, as the port may have
    moved. Returns the files by role."""
    _private_dir(clients_dir)
    written = {}
    for role, password in role_passwords.items():
        props = client_properties(bootstrap, role, password, ca_cert)
        body = "".join(f"{k}={v}\n" for k, v in props.items())
        path = client_file(clients_dir, role)
        write_private(path, f"# librdkafka settings of the '{role}' principal of the local broker\n{body}")
        written[role] = path
    return written


def scram_arguments(role_passwords: Mapping[str, str]) -> list[str]:
    """``kafka-storage format`` arguments that create each role's SCRAM credential with the storage."""
    args = []
    for role, password in role_passwords.items():
        args += ["--add-scram", f"{MECHANISM}=[name={role},password={password}]"]
    return args


def connection_failure(bootstrap: str, settings: Mapping[str, str], errors: Sequence[KafkaError],
                       exc: Exception) -> str:
    """Why a client with ``settings`` got no answer from ``bootstrap`` (``exc``), for an error message: refused
    credentials or an untrusted broker certificate when librdkafka reported one (``errors``: its error callback's)."""
    reported = {err.code(): err for err in errors}
    if (auth := reported.get(KafkaError._AUTHENTICATION)) is not None:
        return (f"Kafka at {bootstrap} refused the credentials of '{settings.get('sasl.username')}' "
                f"({settings.get('sasl.mechanism')}): {auth.str()}; check sasl.username and sasl.password")
    if (tls := reported.get(KafkaError._SSL)) is not None:
        return (f"TLS with Kafka at {bootstrap} failed: {tls.str()}; this client trusts "
                f"{settings.get('ssl.ca.location', 'the system CAs')}, the local broker's CA is tls/ca.pem in its data "
                f"folder")
    return f"Kafka at {bootstrap} is not reachable: {exc}"


def jaas_config(username: str, password: str, mechanism: str = MECHANISM) -> str:
    """A Java client's ``sasl.jaas.config`` for SCRAM or PLAIN ``mechanism`` (quotes and backslashes escaped)."""
    module = "scram.ScramLoginModule" if mechanism.upper().startswith("SCRAM-") else "plain.PlainLoginModule"

    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return (f"org.apache.kafka.common.security.{module} required username={quote(username)} "
            f"password={quote(password)};")


def server_properties(host: str, port: int, controller_port: int, tls: TlsFiles, admin_password: str
                      ) -> dict[str, str]:
    """Broker settings of a secured node, over the plaintext ones: SASL_SSL (SCRAM-SHA-512) for clients and between
    brokers (as admin), mTLS for the controller, the standard authorizer denying what no ACL allows."""
    return {
        "listeners": f"SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"SASL_SSL://{host}:{port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        # The credentials the broker presents to its own SASL_SSL listener (transaction markers and the like).
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas_config(ADMIN, admin_password),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls.broker_keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.ca_cert),
        "ssl.endpoint.identification.algorithm": "https",
        # KRaft's controller listener cannot use SCRAM (the credentials live in the metadata it serves): it takes
        # only clients with a certificate of the local CA, i.e. the broker itself (a super user, see below).
        "listener.name.controller.ssl.client.auth": "required",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{ADMIN};{BROKER_PRINCIPAL}",
    }
