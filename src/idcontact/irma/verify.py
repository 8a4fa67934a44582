"""Verifying a disclosure against its request: the proofs, the keys, expiry, and the match.

The outcome is IRMA's ``proofStatus`` with the disclosed attributes in the shape of the
request (the i-th list answers the i-th conjunction); attributes that were disclosed but
not asked for come last, marked ``EXTRA``. Checks, in order: the proofs are well formed;
each credential type and its key are known; the proofs verify (with the keyshare rule); no
singleton credential appears twice; no credential has expired (unless the request skips the
check for its type); every conjunction is answered by one of its alternatives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from idcontact.irma.attributes import AttributeError_, Metadata, decode_value
from idcontact.irma.gabi import ProofD, ProofFormatError, PublicKey, verify_proofs
from idcontact.irma.request import Conjunction, DisclosureRequest
from idcontact.irma.schemes import CredentialType, Schemes

MAX_PROOFS = 20


class ProofStatus(StrEnum):
    VALID = "VALID"
    INVALID = "INVALID"
    INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
    UNMATCHED_REQUEST = "UNMATCHED_REQUEST"
    MISSING_ATTRIBUTES = "MISSING_ATTRIBUTES"
    EXPIRED = "EXPIRED"


class AttributeStatus(StrEnum):
    PRESENT = "PRESENT"
    EXTRA = "EXTRA"
    NULL = "NULL"


@dataclass(frozen=True)
class DisclosedAttribute:
    id: str
    rawvalue: str | None
    status: AttributeStatus
    issuancetime: int
    """When the credential was issued (metadata signing date, rounded down to weeks)."""
    credential_expiry: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "rawvalue": self.rawvalue,
            # The raw value under "" and, as the Go server does, the same for each language.
            "value": (
                {"": self.rawvalue, "en": self.rawvalue, "nl": self.rawvalue}
                if self.rawvalue is not None
                else None
            ),
            "id": self.id,
            "status": str(self.status),
            "issuancetime": self.issuancetime,
        }


@dataclass(frozen=True)
class Verified:
    status: ProofStatus
    disclosed: list[list[DisclosedAttribute]] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.status is ProofStatus.VALID


@dataclass(frozen=True)
class _Credential:
    proof: ProofD
    type: CredentialType
    key: PublicKey
    metadata: Metadata
    values: dict[int, str | None]


def verify_disclosure(
    disclosure: object,
    request: DisclosureRequest,
    schemes: Schemes,
    *,
    now: float | None = None,
) -> Verified:
    """Check ``disclosure`` (``{"proofs": [...], "indices": [[{"cred","attr"}...]...]}``)."""
    invalid = Verified(ProofStatus.INVALID)
    if request.nonce is None:
        return invalid
    try:
        proofs, indices = _parse(disclosure)
    except (ProofFormatError, ValueError):
        return invalid
    credentials: list[_Credential] = []
    for proof in proofs:
        credential = _credential(proof, schemes)
        if credential is None:
            return invalid
        credentials.append(credential)
    keyshare = [schemes.keyshare_server(c.type.id.split(".", 1)[0]) for c in credentials]
    if not verify_proofs(
        proofs, [c.key for c in credentials], request.context, request.nonce, keyshare=keyshare
    ):
        return invalid
    singletons = [c.type.id for c in credentials if c.type.singleton]
    if len(singletons) != len(set(singletons)):
        return invalid

    moment = time.time() if now is None else now
    expired = any(
        c.metadata.expiry < moment and c.type.id not in request.skip_expiry_check
        for c in credentials
    )

    used: set[tuple[int, int]] = set()
    answers: list[list[DisclosedAttribute]] = []
    missing = len(indices) < len(request.disclose)
    unmatched = len(indices) > len(request.disclose)
    for discon, refs in zip(request.disclose, indices, strict=False):
        for cred, attr in refs:
            if cred >= len(credentials) or attr < 2 or attr not in credentials[cred].values:
                return invalid
        chosen = [(cred, attr, credentials[cred]) for cred, attr in refs]
        if not any(_answers(con, chosen) for con in discon):
            missing = True
        answers.append([_attribute(c, attr, present=True) for _, attr, c in chosen])
        used.update((cred, attr) for cred, attr, _ in chosen)
    extra = [
        _attribute(c, attr, present=False)
        for i, c in enumerate(credentials)
        for attr in sorted(c.values)
        if (i, attr) not in used
    ]
    if extra:
        answers.append(extra)
    if expired:
        return Verified(ProofStatus.EXPIRED, answers)
    if missing:
        return Verified(ProofStatus.MISSING_ATTRIBUTES, answers)
    if unmatched:
        return Verified(ProofStatus.UNMATCHED_REQUEST, answers)
    return Verified(ProofStatus.VALID, answers)


def _parse(data: object) -> tuple[list[ProofD], list[list[tuple[int, int]]]]:
    if not isinstance(data, dict):
        raise ProofFormatError("a disclosure is a JSON object")
    raw_proofs, raw_indices = data.get("proofs"), data.get("indices")
    if not isinstance(raw_proofs, list) or not 0 < len(raw_proofs) <= MAX_PROOFS:
        raise ProofFormatError("proofs must be a non-empty list")
    if not isinstance(raw_indices, list) or len(raw_indices) > 100:
        raise ProofFormatError("indices must be a list")
    indices: list[list[tuple[int, int]]] = []
    for conjunction in raw_indices:
        if not isinstance(conjunction, list) or len(conjunction) > 100:
            raise ProofFormatError("each entry of indices is a list")
        refs = []
        for ref in conjunction:
            if not isinstance(ref, dict):
                raise ProofFormatError("an index is {cred, attr}")
            cred, attr = ref.get("cred"), ref.get("attr")
            if type(cred) is not int or type(attr) is not int or cred < 0 or attr < 0:
                raise ProofFormatError("an index is {cred, attr} with numbers")
            refs.append((cred, attr))
        indices.append(refs)
    return [ProofD.parse(p) for p in raw_proofs], indices


def _credential(proof: ProofD, schemes: Schemes) -> _Credential | None:
    """The proof's credential type, key and decoded values, or None when unknown."""
    raw = proof.a_disclosed.get(1)
    if raw is None:
        return None
    try:
        metadata = Metadata.decode(raw)
    except AttributeError_:
        return None
    type_id = schemes.credential_by_id(metadata.credential_id)
    ctype = schemes.credential_type(type_id) if type_id else None
    if ctype is None:
        return None
    key = schemes.public_key(ctype.id.rsplit(".", 1)[0], metadata.key_counter)
    if key is None:
        return None
    values: dict[int, str | None] = {}
    for index, value in proof.a_disclosed.items():
        if index < 2:
            continue
        position = index - 2
        if position >= len(ctype.attributes) or ctype.attributes[position].revocation:
            return None
        try:
            values[index] = decode_value(value, metadata.version)
        except AttributeError_:
            return None
    return _Credential(proof, ctype, key, metadata, values)


def _answers(con: Conjunction, chosen: list[tuple[int, int, _Credential]]) -> bool:
    """Whether the disclosed attributes ``chosen`` are exactly this alternative."""
    if len(con) != len(chosen):
        return False
    by_type = {f"{c.type.id}.{c.type.attributes[attr - 2].id}": (cred, c.values[attr])
               for cred, attr, c in chosen}  # fmt: skip
    if len(by_type) != len(chosen):
        return False
    instances: dict[str, int] = {}
    for wanted in con:
        found = by_type.get(wanted.type)
        if found is None or not wanted.satisfied_by(found[1]):
            return False
        # Attributes of one credential type come from one credential.
        if instances.setdefault(wanted.credential_type, found[0]) != found[0]:
            return False
    return True


def _attribute(credential: _Credential, attr: int, *, present: bool) -> DisclosedAttribute:
    value = credential.values[attr]
    attribute_id = f"{credential.type.id}.{credential.type.attributes[attr - 2].id}"
    if not present:
        status = AttributeStatus.EXTRA
    else:
        status = AttributeStatus.PRESENT if value is not None else AttributeStatus.NULL
    return DisclosedAttribute(
        attribute_id,
        value,
        status,
        credential.metadata.signing_date,
        credential.metadata.expiry,
    )
