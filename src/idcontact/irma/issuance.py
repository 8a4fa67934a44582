"""Receiving credentials: the wallet's side of IRMA issuance (protocol 2.8), as the Yivi app does.

1. Per new credential the wallet commits to its secret key, ``U = S^v' · R_0^secret mod n``
   with a fresh ``v'``, and proves it can open ``U`` (a ``ProofU``). Disclosure proofs the
   request asks for come first in the same list; every proof shares one challenge,
   ``HashCommit([context, A_1, Ẑ_1, …, U_1, Û_1, …, nonce])``, and one secret-key randomizer,
   so the issuer knows the new credentials carry the disclosing wallet's key. The message
   (``gabi.IssueCommitmentMessage``) also carries ``n_2``, a nonce for the issuer's proof.
2. Per credential the issuer answers a CL signature ``(A, e, v'')`` on ``U`` and the attribute
   values, and a ``ProofS`` that ``A = Q^(1/e)`` for ``Q = A^e``, bound to ``n_2``.
3. The wallet checks each ProofS, sets ``v = v' + v''`` and checks ``Z = A^e · S^v · Π R_i^{m_i}``
   on the values it derives from the request itself, as the issuer did: the metadata (version
   3, signed this week, valid for whole weeks up to the requested expiry, the key counter, the
   credential id) and ``value << 1 | 1`` per present value. A credential is kept only if every
   credential of the session verifies.

Not supported: distributed (keyshare) schemes, revocation, random-blind attributes. The
issuing side (:func:`sign_commitments`) is here for tests and the demo only.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from idcontact.irma.attributes import WEEK, Metadata, credential_id, encode_value
from idcontact.irma.der import hash_commit
from idcontact.irma.gabi import (
    ProofD,
    ProofFormatError,
    PublicKey,
    b64int,
    int_b64,
    powmod,
    signed_exponent,
)
from idcontact.irma.request import DISCLOSURE_CONTEXT, DisclosureRequest, RequestFormatError
from idcontact.irma.schemes import CredentialType, Schemes
from idcontact.irma.wallet import (
    Credential,
    Issuer,
    Wallet,
    commit_disclosure,
    is_probable_prime,
    random_bits,
    secret_commitment,
)

ISSUANCE_CONTEXT = "https://irma.app/ld/request/issuance/v2"
MAX_CREDENTIALS = 20
METADATA_VERSION = 3
NONCE2_BITS = 128
"""``n_2``: gabi's ``Lstatzk`` of the 4096-bit parameters, whatever the keys."""


class IssuanceError(ValueError):
    """Issuance cannot go on: a request the wallet cannot serve, or an issuer's answer that
    does not verify (then no credential of the session is kept)."""


@dataclass(frozen=True)
class CredentialRequest:
    """One credential to be issued: its type, the issuer key and the attribute values."""

    type: CredentialType
    key: PublicKey
    attributes: Mapping[str, str]
    validity: int | None
    """Requested expiry (Unix time); ``None``: six months after signing."""

    def values(self, *, now: float) -> list[int]:
        """The signed attributes from index 1 on: the metadata, then the values in scheme order
        (absent optional values, and the revocation attribute, are 0)."""
        signing = int(now) // WEEK * WEEK
        expiry = self.validity if self.validity is not None else _six_months_after(signing)
        if expiry < signing:
            raise IssuanceError(f"{self.type.id}: the requested validity has already passed")
        metadata = Metadata(
            version=METADATA_VERSION,
            signing_date=signing,
            validity_weeks=(expiry - signing) // WEEK,
            key_counter=self.key.counter,
            credential_id=credential_id(self.type.id),
        )
        values = [metadata.encode()]
        for attribute in self.type.attributes:
            values.append(
                0 if attribute.revocation else encode_value(self.attributes.get(attribute.id))
            )
        return values

    @classmethod
    def parse(cls, data: object, schemes: Schemes) -> CredentialRequest:
        if not isinstance(data, dict):
            raise IssuanceError("a credential request must be a JSON object")
        if data.get("revocationSupported") or data.get("randomblindIDs"):
            raise IssuanceError("revocation and random-blind attributes are not supported")
        type_id = data.get("credential")
        ctype = schemes.credential_type(type_id) if isinstance(type_id, str) else None
        if ctype is None:
            raise IssuanceError("a credential request names an unknown credential type")
        scheme_id = ctype.id.split(".", 1)[0]
        if schemes.keyshare_server(scheme_id) != ".":
            raise IssuanceError(f"{ctype.id}: keyshare (distributed) schemes are not supported")
        counter = data.get("keyCounter", 0)
        if type(counter) is not int or counter < 0:
            raise IssuanceError(f"{ctype.id}: keyCounter must be a number")
        key = schemes.public_key(ctype.id.rsplit(".", 1)[0], counter)
        if key is None:
            raise IssuanceError(f"{ctype.id}: the issuer has no public key {counter}")
        attributes = data.get("attributes")
        if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
        ):
            raise IssuanceError(f"{ctype.id}: attributes must map names to strings")
        known = {a.id for a in ctype.attributes if not a.revocation}
        if not set(attributes) <= known:
            raise IssuanceError(f"{ctype.id}: the request sets attributes the type lacks")
        for a in ctype.attributes:
            if not a.revocation and not a.optional and a.id not in attributes:
                raise IssuanceError(f"{ctype.id}: the required attribute {a.id!r} is missing")
        if len(ctype.attributes) + 2 > len(key.R):
            raise IssuanceError(f"{ctype.id}: more attributes than the key has bases")
        validity = data.get("validity")
        if validity is not None and (type(validity) is not int or validity < 0):
            raise IssuanceError(f"{ctype.id}: validity must be a Unix time")
        return cls(ctype, key, dict(attributes), validity)


@dataclass(frozen=True)
class IssuanceRequest:
    """An issuance session request as the app receives it (``@context …/issuance/v2``)."""

    credentials: tuple[CredentialRequest, ...]
    nonce: int
    context: int = 1
    disclosure: DisclosureRequest | None = None
    """What must be disclosed in the same session, if anything."""

    @classmethod
    def parse(cls, data: object, schemes: Schemes) -> IssuanceRequest:
        if not isinstance(data, dict) or data.get("@context") != ISSUANCE_CONTEXT:
            raise IssuanceError("not an issuance request")
        raw = data.get("credentials")
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_CREDENTIALS:
            raise IssuanceError(f"credentials must be a list of 1 to {MAX_CREDENTIALS}")
        credentials = tuple(CredentialRequest.parse(c, schemes) for c in raw)
        try:
            nonce, context = b64int(data["nonce"]), b64int(data.get("context", "AQ=="))
        except (KeyError, ProofFormatError):
            raise IssuanceError("the request needs a base64 nonce and context") from None
        disclosure = None
        if data.get("disclose"):
            try:
                disclosure = DisclosureRequest.parse(
                    {
                        "@context": DISCLOSURE_CONTEXT,
                        "disclose": data["disclose"],
                        "labels": data.get("labels"),
                        "nonce": data["nonce"],
                        "context": data.get("context", "AQ=="),
                    }
                )
            except RequestFormatError as error:
                raise IssuanceError(f"the disclosure part: {error}") from None
        return cls(credentials, nonce, context, disclosure)


@dataclass(frozen=True)
class ProofU:
    """The wallet's proof that it can open its commitment ``U = S^v' · R_0^secret``."""

    U: int
    c: int
    v_prime_response: int
    s_response: int

    def to_json(self) -> dict[str, Any]:
        return {
            "U": int_b64(self.U),
            "c": int_b64(self.c),
            "v_prime_response": int_b64(self.v_prime_response),
            "s_response": int_b64(self.s_response),
        }

    @classmethod
    def parse(cls, data: object) -> ProofU:
        if not isinstance(data, dict):
            raise ProofFormatError("a proof must be a JSON object")
        if data.get("m_user_responses"):
            raise ProofFormatError("random-blind attributes are not supported")
        try:
            return cls(
                U=b64int(data["U"]),
                c=b64int(data["c"]),
                v_prime_response=b64int(data["v_prime_response"]),
                s_response=b64int(data["s_response"]),
            )
        except KeyError as missing:
            raise ProofFormatError(f"a proof lacks {missing.args[0]!r}") from None

    def commitment(self, pk: PublicKey) -> int:
        """``Û = U^(-c) · S^v'_response · R_0^s_response mod n``."""
        n = pk.n
        result = powmod(self.U, -self.c, n) * powmod(pk.S, self.v_prime_response, n) % n
        return result * powmod(pk.R[0], self.s_response, n) % n

    def in_bounds(self, pk: PublicKey) -> bool:
        return self.v_prime_response.bit_length() <= pk.params.lv_prime_commit + 1


@dataclass(frozen=True)
class ProofS:
    """The issuer's proof that ``A = Q^(1/e)``, ``c = HashCommit([context, Q, A, n_2, Â])``."""

    c: int
    e_response: int

    def verify(self, pk: PublicKey, A: int, e: int, context: int, nonce2: int) -> bool:
        """``Â = A^(c + e_response · e)`` (that is ``Q^r`` with ``Q = A^e``) must rebuild ``c``."""
        q = powmod(A, e, pk.n)
        a_commit = powmod(A, self.c + self.e_response * e, pk.n)
        return self.c == hash_commit([context, q, A, nonce2, a_commit])


@dataclass(frozen=True)
class IssueSignature:
    """One credential's part of the issuer's answer (``gabi.IssueSignatureMessage``)."""

    A: int
    e: int
    v: int
    """The issuer's share ``v''``; the credential's ``v`` is ``v' + v''``."""
    proof: ProofS

    @classmethod
    def parse(cls, data: object) -> IssueSignature:
        if not isinstance(data, dict):
            raise IssuanceError("a signature message must be a JSON object")
        if data.get("nonrev") or data.get("m_issuer"):
            raise IssuanceError("revocation witnesses and random-blind shares are not supported")
        signature, proof = data.get("signature"), data.get("proof")
        if not isinstance(signature, dict) or not isinstance(proof, dict):
            raise IssuanceError("a signature message has a signature and a proof")
        try:
            return cls(
                A=b64int(signature["A"]),
                e=b64int(signature["e"]),
                v=b64int(signature["v"]),
                proof=ProofS(c=b64int(proof["c"]), e_response=b64int(proof["e_response"])),
            )
        except (KeyError, ProofFormatError):
            raise IssuanceError("a signature message is not well formed") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "signature": {
                "A": int_b64(self.A),
                "e": int_b64(self.e),
                "v": int_b64(self.v),
                "KeyshareP": None,
            },
            "proof": {"c": int_b64(self.proof.c), "e_response": int_b64(self.proof.e_response)},
        }


def verify_signature(pk: PublicKey, A: int, e: int, v: int, values: Sequence[int]) -> bool:
    """The CL signature: ``e`` a prime in ``[2^(Le-1), 2^(Le-1) + 2^(Le'-1)]`` and
    ``Z = A^e · S^v · Π R_i^{m_i} mod n`` (``values`` from ``m_0``, the secret key)."""
    p, n = pk.params, pk.n
    low = 1 << (p.le - 1)
    if not low <= e <= low + (1 << (p.le_prime - 1)) or not is_probable_prime(e):
        return False
    if not 0 < A < n or v < 0 or len(values) > len(pk.R):
        return False
    total = powmod(A, e, n) * powmod(pk.S, v, n) % n
    for base, m in zip(pk.R, values, strict=False):
        total = total * powmod(base, signed_exponent(m, p), n) % n
    return total == pk.Z % n


@dataclass
class Commitment:
    """The wallet's pending side of one issuance session: :attr:`message` goes to the issuer
    (``POST …/commitments``), :meth:`finish` takes its answer."""

    wallet: Wallet
    request: IssuanceRequest
    message: dict[str, Any]
    v_primes: tuple[int, ...] = field(repr=False)
    nonce2: int = field(repr=False)
    finished: bool = False

    def finish(self, answer: object, *, now: float | None = None) -> list[Credential]:
        """Verify the issuer's answer (``{"proofStatus", "sigs": [...]}``) and add the new
        credentials to the wallet, all of them or, on any error, none. Once only: a second
        answer to the same commitments would add the credentials twice."""
        if self.finished:
            raise IssuanceError("this issuance has already finished")
        if not isinstance(answer, dict):
            raise IssuanceError("the issuer's answer must be a JSON object")
        if answer.get("proofStatus", "VALID") != "VALID":
            raise IssuanceError(f"the issuer refused the commitments ({answer['proofStatus']})")
        raw = answer.get("sigs")
        if not isinstance(raw, list) or len(raw) != len(self.request.credentials):
            raise IssuanceError("the issuer must answer one signature per credential")
        moment = time.time() if now is None else now
        issued = []
        for wanted, v_prime, data in zip(self.request.credentials, self.v_primes, raw, strict=True):
            sig = IssueSignature.parse(data)
            key = wanted.key
            if not 0 < sig.A < key.n:
                raise IssuanceError(f"{wanted.type.id}: the signature's A is out of range")
            if not sig.proof.verify(key, sig.A, sig.e, self.request.context, self.nonce2):
                raise IssuanceError(
                    f"{wanted.type.id}: the issuer's signature proof (ProofS) does not verify"
                )
            values = [self.wallet.secret, *wanted.values(now=moment)]
            v = v_prime + sig.v
            if not verify_signature(key, sig.A, sig.e, v, values):
                raise IssuanceError(
                    f"{wanted.type.id}: the issuer's signature does not verify on the attributes"
                    " and metadata the request implies"
                )
            issued.append(Credential(wanted.type, key, sig.A, sig.e, v, tuple(values)))
        for credential in issued:
            self.wallet.add(credential)
        self.finished = True
        return issued


def commit(wallet: Wallet, request: IssuanceRequest) -> Commitment:
    """The wallet's commitments for every credential of ``request``, with the disclosure
    proofs it asks for (``LookupError`` when the wallet cannot satisfy that part)."""
    chosen: list[tuple[Credential, set[int]]] = []
    indices: list[list[dict[str, int]]] = []
    if request.disclosure is not None:
        chosen, indices = wallet.choose(request.disclosure)
    nonce2 = secrets.randbits(NONCE2_BITS)
    while True:
        secret_commit = secret_commitment()
        disclosures = [commit_disclosure(c, shown, secret_commit) for c, shown in chosen]
        openings = [_commit_secret(c, wallet.secret, secret_commit) for c in request.credentials]
        contributions = [x for d in disclosures for x in d.contributions]
        contributions += [x for o in openings for x in o.contributions]
        c = hash_commit([request.context, *contributions, request.nonce])
        proofs_d = [d.respond(c) for d in disclosures]
        if all(p.v_response >= 0 for p in proofs_d):  # else draw again, see wallet.prove
            break
    proofs_u = [o.respond(c, wallet.secret) for o in openings]
    message: dict[str, Any] = {
        "combinedProofs": [p.to_json() for p in proofs_d] + [p.to_json() for p in proofs_u],
        "n_2": int_b64(nonce2),
    }
    if indices:
        message["indices"] = indices
    return Commitment(wallet, request, message, tuple(o.v_prime for o in openings), nonce2)


@dataclass(frozen=True)
class _Opening:
    key: PublicKey
    U: int
    v_prime: int
    v_prime_commit: int
    secret_commit: int
    u_commit: int

    @property
    def contributions(self) -> list[int]:
        return [self.U, self.u_commit]

    def respond(self, c: int, secret: int) -> ProofU:
        return ProofU(
            U=self.U,
            c=c,
            v_prime_response=self.v_prime_commit + c * self.v_prime,
            s_response=self.secret_commit + c * secret,
        )


def _commit_secret(request: CredentialRequest, secret: int, secret_commit: int) -> _Opening:
    pk, p = request.key, request.key.params
    v_prime = random_bits(p.lv_prime)
    v_prime_commit = random_bits(p.lv_prime_commit)
    u = powmod(pk.S, v_prime, pk.n) * powmod(pk.R[0], secret, pk.n) % pk.n
    u_commit = powmod(pk.S, v_prime_commit, pk.n) * powmod(pk.R[0], secret_commit, pk.n) % pk.n
    return _Opening(pk, u, v_prime, v_prime_commit, secret_commit, u_commit)


def verify_commitments(message: object, request: IssuanceRequest, schemes: Schemes) -> bool:
    """The issuer's check of the wallet's message: disclosure proofs first, then one ProofU per
    credential, one challenge over all, one secret-key response, ``v'`` responses in bounds."""
    if not isinstance(message, dict):
        return False
    raw = message.get("combinedProofs")
    count = len(request.credentials)
    if not isinstance(raw, list) or not count <= len(raw) <= count + 20:
        return False
    try:
        proofs_d = [ProofD.parse(p) for p in raw[: len(raw) - count]]
        proofs_u = [ProofU.parse(p) for p in raw[len(raw) - count :]]
        b64int(message.get("n_2"))
    except ProofFormatError:
        return False
    keys_d = []
    for proof in proofs_d:
        try:
            metadata = Metadata.decode(proof.a_disclosed.get(1, 0))
        except ValueError:
            return False
        type_id = schemes.credential_by_id(metadata.credential_id)
        key = (
            schemes.public_key(type_id.rsplit(".", 1)[0], metadata.key_counter) if type_id else None
        )
        if key is None:
            return False
        keys_d.append(key)
    keys_u = [c.key for c in request.credentials]
    try:
        contributions = [request.context]
        for proof_d, key in zip(proofs_d, keys_d, strict=True):
            if not proof_d.indices_fit(key) or not proof_d.responses_in_bounds(key):
                return False
            contributions += [proof_d.A, proof_d.commitment(key)]
        for proof_u, key in zip(proofs_u, keys_u, strict=True):
            if not proof_u.in_bounds(key) or not 0 < proof_u.U < key.n:
                return False
            contributions += [proof_u.U, proof_u.commitment(key)]
    except ValueError:  # no inverse modulo n
        return False
    contributions.append(request.nonce)
    c = hash_commit(contributions)
    secret_responses = {p.a_responses[0] for p in proofs_d} | {p.s_response for p in proofs_u}
    challenges = {p.c for p in proofs_d} | {p.c for p in proofs_u}
    return len(secret_responses) == 1 and challenges == {c}


def sign_commitments(
    issuers: Mapping[str, Issuer],
    request: IssuanceRequest,
    message: object,
    schemes: Schemes,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """The issuing side, for tests and the demo: check the wallet's message, then sign each
    credential on its ``U`` with the issuer key (``scheme.issuer`` → :class:`Issuer`) and prove
    the signature (ProofS) against the wallet's ``n_2``."""
    if not isinstance(message, dict) or not verify_commitments(message, request, schemes):
        raise IssuanceError("the wallet's commitments do not verify")
    nonce2 = b64int(message["n_2"])
    raw = message["combinedProofs"][len(message["combinedProofs"]) - len(request.credentials) :]
    moment = time.time() if now is None else now
    sigs = []
    for wanted, proof in zip(request.credentials, raw, strict=True):
        issuer = issuers[wanted.type.id.rsplit(".", 1)[0]]
        if issuer.key != wanted.key:
            raise IssuanceError(f"{wanted.type.id}: no private key for key {wanted.key.counter}")
        U = ProofU.parse(proof).U
        A, e, v = issuer.sign(wanted.values(now=moment), first=1, commitment=U)
        sigs.append(IssueSignature(A, e, v, prove_signature(issuer, A, e, request.context, nonce2)))
    return {"proofStatus": "VALID", "sigs": [s.to_json() for s in sigs]}


def prove_signature(issuer: Issuer, A: int, e: int, context: int, nonce2: int) -> ProofS:
    """ProofS: knowledge of ``d = 1/e`` with ``A = Q^d``: ``Â = Q^r``, ``e_response = r - c·d``
    modulo the group order ``p'q'``."""
    n, order = issuer.key.n, issuer.private.order
    q = powmod(A, e, n)
    r = secrets.randbelow(order)
    c = hash_commit([context, q, A, nonce2, powmod(q, r, n)])
    return ProofS(c, (r - c * pow(e, -1, order)) % order)


def _six_months_after(signing: int) -> int:
    """Go's ``AddDate(0, 6, 0)`` in UTC: a day past the month's end rolls into the next."""
    start = datetime.fromtimestamp(signing, UTC)
    month = start.month - 1 + 6
    first = start.replace(year=start.year + month // 12, month=month % 12 + 1, day=1)
    return int((first + timedelta(days=start.day - 1)).timestamp())
