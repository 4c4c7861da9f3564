"""Ed25519 keys of model envelopes: generate and load them, sign, verify, and the trust store of public keys.

The publisher alone holds the private key (PEM, PKCS8); a scorer holds public keys only, one ``<key id>.pem`` per
trusted key in its trust folder, beside an optional ``revoked.json`` (``{"keys": [...], "versions": [...]}``).
A verifier reads that folder again for each envelope (``TrustStore.read``), so a rotation (a new public key
dropped in) and a revocation take effect without a restart. Nothing here logs or formats a key, only key ids.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError

from ml.errors import SigningKeyError

log = logging.getLogger(__name__)

# A key id names its public key's file in the trust folder: no path separator, no leading dot.
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
KEY_ID_HEX_CHARS = 16
SIGNATURE_HEX_CHARS = 128  # an Ed25519 signature is 64 bytes
PUBLIC_KEY_SUFFIX = ".pem"
PRIVATE_KEY_SUFFIX = ".key"
REVOKED_FILE = "revoked.json"

_KEY_ID = re.compile(KEY_ID_PATTERN)
_SIGNATURE = re.compile(rf"^[0-9a-f]{{{SIGNATURE_HEX_CHARS}}}$")


def check_key_id(key_id: str) -> str:
    """``key_id`` when it can name a key file; raises SigningKeyError otherwise."""
    if not _KEY_ID.fullmatch(key_id):
        raise SigningKeyError(f"key id {key_id!r} is invalid: 1-64 letters, digits, '.', '_' or '-', starting with "
                              "a letter or digit (it names the public key's file <key id>.pem)")
    return key_id


def derive_key_id(public_key: Ed25519PublicKey) -> str:
    """The default key id: the first 16 hex characters of the SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_CHARS]


def load_private_key(pem: bytes, source: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``pem`` (unencrypted PKCS8); raises SigningKeyError naming ``source``."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:  # the library's messages never quote the key
        raise SigningKeyError(f"{source} is not an unencrypted PEM (PKCS8) private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{source} holds a {type(key).__name__} key, not an Ed25519 one")
    return key


def load_public_key(pem: bytes, source: str) -> Ed25519PublicKey:
    """The Ed25519 public key in ``pem`` (SubjectPublicKeyInfo); raises SigningKeyError naming ``source``."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SigningKeyError(f"{source} is not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{source} holds a {type(key).__name__} key, not an Ed25519 one")
    return key


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """``public_key`` as PEM (SubjectPublicKeyInfo), the format of the trust folder's files."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def is_signature_hex(signature: str) -> bool:
    """True when ``signature`` has the form of an Ed25519 signature in hex (128 lower-case hex characters)."""
    return _SIGNATURE.fullmatch(signature) is not None


def verify(public_key: Ed25519PublicKey, signature: str, data: bytes) -> bool:
    """True when ``signature`` (hex) is ``public_key``'s Ed25519 signature of ``data``."""
    if not is_signature_hex(signature):
        return False
    try:
        public_key.verify(bytes.fromhex(signature), data)
    except InvalidSignature:
        return False
    return True


class Signer:
    """An Ed25519 private key and the key id its envelopes carry; its repr shows the key id only."""

    __slots__ = ("_private_key", "key_id")

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str | None = None) -> None:
        self._private_key = private_key
        self.key_id = check_key_id(key_id) if key_id else derive_key_id(private_key.public_key())

    @classmethod
    def from_pem(cls, pem: bytes, key_id: str | None = None, *, source: str) -> Signer:
        """The signer of a PEM private key; ``source`` names where it came from in errors."""
        return cls(load_private_key(pem, source), key_id)

    @classmethod
    def generate(cls, key_id: str | None = None) -> Signer:
        """A signer with a new random key."""
        return cls(Ed25519PrivateKey.generate(), key_id)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private_key.public_key()

    def sign(self, data: bytes) -> str:
        """The Ed25519 signature of ``data``, in hex."""
        return self._private_key.sign(data).hex()

    def public_pem(self) -> bytes:
        return public_pem(self.public_key)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS8 PEM: for writing the key file, never for a log."""
        return self._private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"


@dataclass(frozen=True)
class KeyFiles:
    """Where a key pair was written."""

    key_id: str
    private_file: Path
    public_file: Path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (a private key is never readable by others, not even for a moment); raises
    SigningKeyError when it exists: a key file is never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise SigningKeyError(f"{path} exists already: a key file is never overwritten") from None
    except OSError as e:
        raise SigningKeyError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # whatever the umask
        f.write(data)


def _make_dir(path: Path, mode: int) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as e:
        raise SigningKeyError(f"cannot create the key folder {path}: {e.strerror}") from None


def write_key_pair(out_dir: Path, signer: Signer) -> KeyFiles:
    """Write ``signer``'s private key to ``<out_dir>/<key id>.key`` (0600) and its public key to ``<key id>.pem``
    (0644); raises SigningKeyError when either exists or cannot be written."""
    _make_dir(out_dir, 0o700)
    files = KeyFiles(signer.key_id, out_dir / f"{signer.key_id}{PRIVATE_KEY_SUFFIX}",
                     out_dir / f"{signer.key_id}{PUBLIC_KEY_SUFFIX}")
    for path in (files.private_file, files.public_file):
        if path.exists():
            raise SigningKeyError(f"{path} exists already: a key file is never overwritten")
    _write_new(files.private_file, signer.private_pem(), 0o600)
    _write_new(files.public_file, signer.public_pem(), 0o644)
    return files


def create_dev_key(private_file: Path, trusted_dir: Path, key_id: str | None = None) -> Signer:
    """A development key pair for the local path: a new private key at ``private_file`` (0600) with its public key
    in ``trusted_dir``; when another process created ``private_file`` first, that key is returned instead."""
    signer = Signer.generate(key_id)
    _make_dir(private_file.parent, 0o700)
    _make_dir(trusted_dir, 0o755)
    public_file = trusted_dir / f"{signer.key_id}{PUBLIC_KEY_SUFFIX}"
    staged = private_file.with_name(f".{private_file.name}.{os.getpid()}.new")
    _write_new(staged, signer.private_pem(), 0o600)
    try:
        # The public key is trusted before the private key appears: whatever it signs is accepted locally.
        public_file.write_bytes(signer.public_pem())
        try:
            os.link(staged, private_file)  # atomic and never replaces: two racing processes end with one key
        except FileExistsError:
            public_file.unlink(missing_ok=True)
            return Signer.from_pem(private_file.read_bytes(), key_id, source=str(private_file))
    except OSError as e:
        raise SigningKeyError(f"cannot create the development key {private_file}: {e.strerror}") from None
    finally:
        staged.unlink(missing_ok=True)
    log.warning("no model signing key is set (MODEL_SIGNING_KEY, MODEL_SIGNING_KEY_FILE): created the development "
                "key %s (key id %s) and trusted its public key as %s; in production generate a key with "
                "`python -m ml keys generate` and keep it as a secret", private_file, signer.key_id, public_file)
    return signer


class RevocationList(BaseModel):
    """``revoked.json`` in a trust folder: key ids and model versions to refuse."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: frozenset[str] = frozenset()
    versions: frozenset[StrictInt] = frozenset()


def read_revocations(path: Path) -> RevocationList:
    """The revocation list at ``path``, empty when there is none; raises SigningKeyError when it cannot be read
    or is malformed (a revocation is never silently ignored)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return RevocationList()
    except OSError as e:
        raise SigningKeyError(f"cannot read the revocation list {path}: {e.strerror}") from None
    try:
        return RevocationList.model_validate_json(text)
    except ValidationError as e:
        raise SigningKeyError(f'revocation list {path} is not {{"keys": [key ids], "versions": [model versions]}}: '
                              f"{e.errors(include_url=False, include_input=False)[:3]}") from None


@dataclass(frozen=True)
class TrustedKeys:
    """A trust store as read at one moment: the public keys by key id and what is revoked."""

    keys: Mapping[str, Ed25519PublicKey]
    revoked_keys: frozenset[str]
    revoked_versions: frozenset[int]
    model_name: str | None
    source: str
    unreadable: tuple[str, ...] = ()

    def revokes_version(self, model_name: str, version: int) -> bool:
        """True when ``version`` of ``model_name`` is revoked (revoked versions are of the store's model)."""
        return version in self.revoked_versions and self.model_name in (None, model_name)

    def describe(self) -> str:
        """The trusted key ids and the files that could not be read, for a refusal's reason or a log line."""
        text = f"trusted keys {sorted(self.keys) or 'none'} in {self.source}"
        return text + (f"; unreadable: {'; '.join(self.unreadable)}" if self.unreadable else "")


@dataclass(frozen=True)
class TrustStore:
    """Where a verifier finds the public keys it trusts and what it refuses. Picklable: it crosses to the scorer's
    loader child, which reads it anew for each envelope."""

    keys_dir: Path
    revoked_keys: frozenset[str] = frozenset()
    revoked_versions: frozenset[int] = frozenset()
    # The model the revoked versions are of (None: any model's).
    model_name: str | None = None
    # (key id, public PEM) trusted besides the folder's: the publisher's own key when it reads the topic back.
    pinned: tuple[tuple[str, bytes], ...] = ()

    def read(self) -> TrustedKeys:
        """The folder's public keys and revocations now (a missing folder trusts no key; a file that is no
        public key is reported, not trusted). Raises SigningKeyError when ``revoked.json`` cannot be read."""
        keys: dict[str, Ed25519PublicKey] = {}
        unreadable: list[str] = []
        for path in sorted(self.keys_dir.glob(f"*{PUBLIC_KEY_SUFFIX}")):
            key_id = path.name.removesuffix(PUBLIC_KEY_SUFFIX)
            try:
                keys[check_key_id(key_id)] = load_public_key(path.read_bytes(), path.name)
            except SigningKeyError as e:
                unreadable.append(str(e))
            except OSError as e:
                unreadable.append(f"{path.name}: {e.strerror}")
        for key_id, pem in self.pinned:
            keys[key_id] = load_public_key(pem, f"the publisher's own key {key_id}")
        revoked = read_revocations(self.keys_dir / REVOKED_FILE)
        return TrustedKeys(keys, self.revoked_keys | revoked.keys, self.revoked_versions | revoked.versions,
                           self.model_name, str(self.keys_dir), tuple(unreadable))
