"""IRMA schemes: the signed directories that define issuers, credential types and keys.

A scheme directory holds ``description.xml``, ``index`` (``sha256hex path`` per file),
``index.sig`` (ECDSA P-256 over SHA-256 of ``index``, DER ``{R, S}``) and ``pk.pem``. Loading
verifies the signature, then every file named in the index against its hash, and refuses the
scheme at the first mismatch: a tampered scheme would let anyone mint keys for its issuers.
Only files in the index are read.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.etree.ElementTree import Element

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idcontact.irma.gabi import PublicKey
from idcontact.irma.xml import SchemeError, public_key, read_xml, text

MAX_INDEX_BYTES = 1 << 20


@dataclass(frozen=True)
class AttributeType:
    id: str
    optional: bool
    names: Mapping[str, str]
    revocation: bool = False
    """The hidden revocation attribute: it takes an index, and is never disclosed."""


@dataclass(frozen=True)
class CredentialType:
    id: str
    """``scheme.issuer.credential``."""
    attributes: tuple[AttributeType, ...]
    singleton: bool
    names: Mapping[str, str]

    def index_of(self, attribute: str) -> int:
        """The attribute's index in a credential: 0 is the secret key, 1 the metadata."""
        for i, a in enumerate(self.attributes):
            if a.id == attribute and not a.revocation:
                return i + 2
        raise KeyError(attribute)


@dataclass(frozen=True)
class Scheme:
    id: str
    demo: bool
    keyshare_server: str | None
    credential_types: Mapping[str, CredentialType]
    public_keys: Mapping[tuple[str, int], PublicKey] = field(repr=False)
    """(``scheme.issuer``, counter) → key."""
    timestamp: int


class Schemes:
    """Every loaded scheme, with the lookups a verifier needs."""

    def __init__(self, schemes: Iterable[Scheme]) -> None:
        self.schemes = {s.id: s for s in schemes}
        self._credential_ids = {
            hashlib.sha256(t.encode()).digest()[:16]: t
            for s in self.schemes.values()
            for t in s.credential_types
        }

    @classmethod
    def load(cls, root: Path, *, require_signature: bool = True) -> Schemes:
        """Every scheme directory under ``root`` (``irma_configuration``)."""
        found = [p for p in sorted(root.iterdir()) if (p / "description.xml").is_file()]
        if not found:
            raise SchemeError(f"{root}: no scheme directories")
        return cls(load_scheme(p, require_signature=require_signature) for p in found)

    def credential_type(self, type_id: str) -> CredentialType | None:
        scheme = self.schemes.get(type_id.split(".", 1)[0])
        return scheme.credential_types.get(type_id) if scheme else None

    def credential_by_id(self, credential_id: bytes) -> str | None:
        """The credential type a metadata attribute's 16-byte id stands for."""
        return self._credential_ids.get(credential_id)

    def public_key(self, issuer: str, counter: int) -> PublicKey | None:
        scheme = self.schemes.get(issuer.split(".", 1)[0])
        return scheme.public_keys.get((issuer, counter)) if scheme else None

    def keyshare_server(self, scheme_id: str) -> str:
        """The scheme's keyshare server, or ``"."`` for none (proofs sharing one must share
        their secret key)."""
        scheme = self.schemes.get(scheme_id)
        return scheme.id if scheme is not None and scheme.keyshare_server else "."


def verify_index(directory: Path) -> dict[str, str]:
    """Check ``index.sig`` with ``pk.pem``, then return the index (path → sha256 hex)."""
    name = directory.name
    try:
        index = (directory / "index").read_bytes()
        signature = (directory / "index.sig").read_bytes()
        key = (directory / "pk.pem").read_bytes()
    except OSError:
        raise SchemeError(f"scheme {name}: index, index.sig or pk.pem missing") from None
    return signed_index(name, index, signature, key)


def signed_index(name: str, index: bytes, signature: bytes, pk_pem: bytes) -> dict[str, str]:
    """Check ``signature`` over ``index`` with the PEM key, then parse the index (path below
    the scheme → sha256 hex). Loading and downloading share it, so both trust the same lines."""
    if len(index) > MAX_INDEX_BYTES:
        raise SchemeError(f"scheme {name}: index too large")
    try:
        key = serialization.load_pem_public_key(pk_pem)
    except ValueError:
        raise SchemeError(f"scheme {name}: pk.pem is not a public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SchemeError(f"scheme {name}: pk.pem is not an ECDSA key")
    try:
        key.verify(signature, index, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SchemeError(f"scheme {name}: index.sig does not match the index") from None
    entries: dict[str, str] = {}
    for number, line in enumerate(index.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, path = line.strip().partition(" ")
        relative = PurePosixPath(path)
        if (
            len(digest) != 64
            or not all(c in string.hexdigits for c in digest)
            or relative.is_absolute()
            or ".." in relative.parts
            or len(relative.parts) < 2
            or relative.parts[0] != name
        ):
            raise SchemeError(f"scheme {name}: index line {number} is malformed")
        entries[str(PurePosixPath(*relative.parts[1:]))] = digest.lower()
    return entries


def load_scheme(directory: Path, *, require_signature: bool = True) -> Scheme:
    """Load and verify one scheme directory."""
    name = directory.name
    index = verify_index(directory) if require_signature else None

    def checked(relative: str) -> Path:
        path = directory / relative
        if index is not None:
            expected = index.get(relative)
            if expected is None:
                raise SchemeError(f"scheme {name}: {relative} is not in the signed index")
            try:
                actual = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                raise SchemeError(f"scheme {name}: {relative} is missing") from None
            if actual != expected:
                raise SchemeError(f"scheme {name}: {relative} does not match the signed index")
        return path

    description = read_xml(checked("description.xml"))
    scheme_id = text(description, "Id", f"scheme {name}")
    if scheme_id != name:
        raise SchemeError(f"scheme {name}: its description names {scheme_id!r}")
    keyshare = description.findtext("KeyshareServer")
    types: dict[str, CredentialType] = {}
    keys: dict[tuple[str, int], PublicKey] = {}
    for issuer_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        if not (issuer_dir / "description.xml").exists():
            continue
        issuer = f"{scheme_id}.{issuer_dir.name}"
        read_xml(checked(f"{issuer_dir.name}/description.xml"))
        issues = issuer_dir / "Issues"
        credentials = sorted(p for p in issues.iterdir() if p.is_dir()) if issues.is_dir() else []
        for cred_dir in credentials:
            relative = f"{issuer_dir.name}/Issues/{cred_dir.name}/description.xml"
            spec = read_xml(checked(relative))
            type_id = f"{issuer}.{cred_dir.name}"
            types[type_id] = _credential_type(spec, type_id)
        for key_file in sorted((issuer_dir / "PublicKeys").glob("*.xml")):
            relative = f"{issuer_dir.name}/PublicKeys/{key_file.name}"
            pk = public_key(checked(relative), issuer)
            if str(pk.counter) != key_file.stem:
                raise SchemeError(f"scheme {name}: {relative} holds key {pk.counter}")
            keys[(issuer, pk.counter)] = pk
    timestamp_file = directory / "timestamp"
    timestamp = 0
    if timestamp_file.exists():
        raw = checked("timestamp").read_text().strip()
        timestamp = int(raw) if raw.isdigit() else 0
    return Scheme(
        id=scheme_id,
        demo=(description.findtext("Demo") or "").strip() == "true",
        keyshare_server=keyshare.strip() if keyshare else None,
        credential_types=types,
        public_keys=keys,
        timestamp=timestamp,
    )


def _credential_type(spec: Element, type_id: str) -> CredentialType:
    attributes = []
    block = spec.find("Attributes")
    for a in block.findall("Attribute") if block is not None else []:
        attribute_id = a.get("id")
        if a.get("revocation") == "true":
            attributes.append(AttributeType("", optional=False, names={}, revocation=True))
            continue
        if not attribute_id:
            raise SchemeError(f"{type_id}: an attribute without id")
        names = {n.tag: (n.text or "").strip() for n in a.find("Name") or []}
        attributes.append(
            AttributeType(attribute_id, optional=a.get("optional") == "true", names=names)
        )
    names = {n.tag: (n.text or "").strip() for n in spec.find("Name") or []}
    singleton = (spec.findtext("ShouldBeSingleton") or "").strip() == "true"
    return CredentialType(type_id, tuple(attributes), singleton, names)
