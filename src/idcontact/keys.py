"""Key configuration, loading and generation for the JOSE tokens (protocol §5.2).

A key is configured as ``{type = "RSA"|"EC", key = "<PEM>"}`` or with ``key_file`` instead of
``key``. Private keys are PKCS#8 (``BEGIN PRIVATE KEY``), public keys SPKI (``BEGIN PUBLIC KEY``).
RSA maps to RS256/RSA-OAEP, EC (P-256 only) to ES256/ECDH-ES. Errors name settings and paths but
never echo key material.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, KeyParameters, RSAKey
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from idcontact.errors import ConfigError

__all__ = [
    "JoseKey",
    "KeyConfig",
    "generate_keypair",
    "is_private",
    "kid_for",
    "load_pem",
]

#: The asymmetric key types the protocol uses.
JoseKey: TypeAlias = RSAKey | ECKey

#: RSA keys smaller than this are refused: they no longer give adequate security.
MIN_RSA_BITS = 2048
#: The only EC curve the original implementation (and ES256/ECDH-ES interop) uses.
EC_CURVE = "P-256"
#: A PEM key file larger than this is certainly not a key; refuse before reading it all.
_MAX_PEM_BYTES = 64 * 1024


def is_private(key: JoseKey) -> bool:
    """True when ``key`` holds private material (so it can sign or decrypt)."""
    return bool(key.is_private)


def kid_for(key: JoseKey) -> str:
    """RFC 7638 thumbprint (base64url SHA-256) of the public part of ``key``.

    Used as the default ``kid``: it is stable, derived from the public key only, and equal for
    the private and public half of a pair, so both sides agree on it without configuration.
    """
    return key.thumbprint()


def load_pem(
    kind: Literal["RSA", "EC"], pem: bytes, *, source: str, kid: str | None = None
) -> JoseKey:
    """Parse a PEM key of the declared ``kind``; ``source`` names it in errors (never content).

    The PEM is parsed and checked with ``cryptography`` first, so unusable keys (wrong family,
    small RSA, other curves, encrypted PEM) become a :class:`ConfigError` before joserfc sees
    them.
    """
    native: object
    try:
        if b"PRIVATE KEY" in pem:
            native = serialization.load_pem_private_key(pem, password=None)
        elif b"PUBLIC KEY" in pem:
            native = serialization.load_pem_public_key(pem)
        else:
            raise ValueError("no PEM key block")
    except (ValueError, TypeError, UnicodeError, UnsupportedAlgorithm):
        # TypeError: the PEM is encrypted (needs a password); ValueError: not a parsable key.
        raise ConfigError(f"{source}: not a usable unencrypted PEM key") from None

    params: KeyParameters | None = {"kid": kid} if kid is not None else None
    if isinstance(native, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if kind != "RSA":
            raise ConfigError(f"{source}: the key is not of the configured type {kind}")
        if native.key_size < MIN_RSA_BITS:
            raise ConfigError(f"{source}: RSA keys must have at least {MIN_RSA_BITS} bits")
        return RSAKey.import_key(native, params)
    if isinstance(native, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if kind != "EC":
            raise ConfigError(f"{source}: the key is not of the configured type {kind}")
        if not isinstance(native.curve, ec.SECP256R1):
            raise ConfigError(f"{source}: EC keys must use curve {EC_CURVE}")
        return ECKey.import_key(native, params)
    raise ConfigError(f"{source}: the key is not of the configured type {kind}")


def _read_key_file(path: Path) -> tuple[bytes, int]:
    """Read a key file and return its bytes and permission bits, from one open file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise ConfigError(f"key_file {path}: cannot be opened") from None
    # fstat on the opened file, so the mode we check is the mode of what we read.
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(f"key_file {path}: not a regular file")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(_MAX_PEM_BYTES + 1)
    if len(data) > _MAX_PEM_BYTES:
        raise ConfigError(f"key_file {path}: too large to be a PEM key")
    return data, stat.S_IMODE(st.st_mode)


class KeyConfig(BaseModel):
    """One configured key: ``type`` plus exactly one of ``key`` (inline PEM) or ``key_file``.

    ``key`` is a :class:`~pydantic.SecretStr` so the PEM never shows in reprs or logs, and
    validation errors hide their input for the same reason.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    type: Literal["RSA", "EC"]
    key: SecretStr | None = None
    key_file: Path | None = None
    kid: str | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> KeyConfig:
        if (self.key is None) == (self.key_file is None):
            raise ValueError("exactly one of 'key' and 'key_file' must be set")
        return self

    def load(self) -> JoseKey:
        """Parse the configured key into a joserfc key (with ``kid`` set when configured).

        A private key file that group or others can read is refused: a leaked signing or
        decryption key breaks every guarantee the tokens give.
        """
        if self.key is not None:
            pem = self.key.get_secret_value().encode("utf-8")
            return load_pem(self.type, pem, source="key", kid=self.kid)
        if self.key_file is None:  # pragma: no cover - excluded by the validator
            raise ConfigError("key_file: not set")
        data, mode = _read_key_file(self.key_file)
        key = load_pem(self.type, data, source=f"key_file {self.key_file}", kid=self.kid)
        if is_private(key) and mode & 0o077:
            raise ConfigError(
                f"key_file {self.key_file}: private key is readable by group or others "
                "(use chmod 600)"
            )
        return key


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` from the first byte on; never overwrite."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, mode)
    try:
        # The umask may have removed bits from ``mode``; set it exactly (0600 stays 0600).
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(kind: Literal["RSA", "EC"], directory: Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair as ``<name>.key.pem`` (PKCS#8, 0600) and ``<name>.pub.pem`` (SPKI,
    0644) in ``directory`` and return both paths (private first).

    Refuses (``FileExistsError``) when either file exists, so a key in use is never replaced.
    """
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError("name: must be a plain file name")
    private_path = directory / f"{name}.key.pem"
    public_path = directory / f"{name}.pub.pem"
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists already; refusing to overwrite")

    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "RSA":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "EC":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ConfigError("kind: must be RSA or EC")
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    _write_new_file(private_path, private_pem, 0o600)
    try:
        _write_new_file(public_path, public_pem, 0o644)
    except BaseException:
        # Do not leave half a pair behind.
        with contextlib.suppress(OSError):
            private_path.unlink()
        raise
    return private_path, public_path
