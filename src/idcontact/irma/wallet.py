"""A test issuer and wallet: CL signatures from an issuer's private key, and disclosure proofs.

For tests and the demo only (the keys of demo schemes are public, so anyone can issue their
credentials). The issuer signs attributes directly (``Z = A^e · S^v · Π R_i^{m_i} mod n``),
without the interactive issuance protocol; the wallet holds credentials and answers a
disclosure request with a proof list that :mod:`idcontact.irma.verify` accepts, as the Yivi
app's would. Randomness comes from ``secrets``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idcontact.irma.attributes import WEEK, Metadata, credential_id, decode_value, encode_value
from idcontact.irma.der import hash_commit
from idcontact.irma.gabi import PARAMS, ProofD, PublicKey, powmod, signed_exponent
from idcontact.irma.request import DisclosureRequest
from idcontact.irma.schemes import CredentialType, Schemes
from idcontact.irma.xml import IDEMIX, SchemeError, read_xml, text

SMALL_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71)


def is_probable_prime(n: int, rounds: int = 40) -> bool:
    """Miller–Rabin with random bases."""
    if n < 2:
        return False
    for p in SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        a = 2 + secrets.randbelow(n - 3)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def random_bits(bits: int) -> int:
    return secrets.randbits(bits)


@dataclass(frozen=True)
class PrivateKey:
    counter: int
    p_prime: int
    q_prime: int

    @property
    def order(self) -> int:
        """The order of the quadratic residues modulo n: p'·q'."""
        return self.p_prime * self.q_prime

    @classmethod
    def load(cls, path: Path) -> PrivateKey:
        root = read_xml(path)
        elements = root.find(f"{IDEMIX}Elements")
        if elements is None:
            raise SchemeError(f"{path.name}: no Elements")
        where = f"private key {path.name}"
        return cls(
            counter=int(text(root, f"{IDEMIX}Counter", where)),
            p_prime=int(text(elements, f"{IDEMIX}pPrime", where)),
            q_prime=int(text(elements, f"{IDEMIX}qPrime", where)),
        )


@dataclass(frozen=True)
class Credential:
    """A signed credential as a wallet holds it: attributes ``m`` (0: secret, 1: metadata)."""

    type: CredentialType
    key: PublicKey
    A: int
    e: int
    v: int
    m: tuple[int, ...]

    @property
    def metadata(self) -> Metadata:
        return Metadata.decode(self.m[1])

    def value_of(self, attribute: str) -> int:
        return self.m[self.type.index_of(attribute)]


class Issuer:
    """Signs credentials of one issuer key (demo and test schemes only)."""

    def __init__(self, key: PublicKey, private: PrivateKey) -> None:
        if key.counter != private.counter:
            raise SchemeError("the private key is not the public key's counterpart")
        self.key = key
        self.private = private

    def issue(
        self,
        ctype: CredentialType,
        attributes: Mapping[str, str | None],
        secret: int,
        *,
        validity_weeks: int = 26,
        now: float | None = None,
    ) -> Credential:
        moment = int(time.time() if now is None else now)
        metadata = Metadata(
            version=3,
            signing_date=moment // WEEK * WEEK,
            validity_weeks=validity_weeks,
            key_counter=self.key.counter,
            credential_id=credential_id(ctype.id),
        )
        values = [secret, metadata.encode()]
        for attribute in ctype.attributes:
            if attribute.revocation:
                values.append(0)
                continue
            if attribute.id not in attributes and not attribute.optional:
                raise ValueError(f"{ctype.id}: attribute {attribute.id!r} is missing")
            values.append(encode_value(attributes.get(attribute.id)))
        if len(values) > len(self.key.R):
            raise ValueError(f"{ctype.id}: more attributes than the key has bases")
        A, e, v = self.sign(values)
        return Credential(ctype, self.key, A, e, v, tuple(values))

    def sign(
        self, values: Sequence[int], *, first: int = 0, commitment: int = 1
    ) -> tuple[int, int, int]:
        """A CL signature ``(A, e, v)`` on ``values`` (for the bases from ``R_first`` on) times
        ``commitment``: in issuance the wallet's ``U``, which hides the secret key (and its
        share ``v'`` of ``v``) from the issuer."""
        if first + len(values) > len(self.key.R):
            raise ValueError("more attributes than the key has bases")
        p, n = self.key.params, self.key.n
        e = self._prime_e()
        v = random_bits(p.lv - 1) | (1 << (p.lv - 1))
        denominator = commitment * powmod(self.key.S, v, n) % n
        for base, m in zip(self.key.R[first:], values, strict=False):
            denominator = denominator * powmod(base, signed_exponent(m, p), n) % n
        q = self.key.Z * pow(denominator, -1, n) % n
        return powmod(q, pow(e, -1, self.private.order), n), e, v

    def _prime_e(self) -> int:
        p = self.key.params
        while True:
            e = (1 << (p.le - 1)) + (random_bits(p.le_prime - 1) | 1)
            if is_probable_prime(e):
                return e


class Wallet:
    """Holds credentials under one secret key and discloses from them."""

    def __init__(self, secret: int | None = None) -> None:
        self.secret = secret if secret is not None else random_bits(256)
        self.credentials: list[Credential] = []

    def add(self, credential: Credential) -> None:
        self.credentials.append(credential)

    def disclose(
        self, request: DisclosureRequest, *, schemes: Schemes | None = None
    ) -> dict[str, Any]:
        """``{"proofs", "indices"}`` for the first alternative of each conjunction the wallet
        can satisfy (attributes of one type from one credential)."""
        if request.nonce is None:
            raise ValueError("the request has no nonce")
        chosen, indices = self.choose(request)
        proofs = prove(chosen, request.context, request.nonce)
        return {"proofs": [p.to_json() for p in proofs], "indices": indices}

    def choose(
        self, request: DisclosureRequest
    ) -> tuple[list[tuple[Credential, set[int]]], list[list[dict[str, int]]]]:
        """The credentials to prove with the attribute indices each discloses, and the
        ``indices`` that map the request's conjunctions onto them."""
        chosen: list[Credential] = []
        disclosed: dict[int, set[int]] = {}
        indices: list[list[dict[str, int]]] = []
        for discon in request.disclose:
            answer = None
            for con in discon:
                answer = self._answer(con, chosen)
                if answer is not None:
                    break
            if answer is None:
                raise LookupError("the wallet cannot satisfy the request")
            refs = []
            for credential, attribute in answer:
                if credential not in chosen:
                    chosen.append(credential)
                k = chosen.index(credential)
                disclosed.setdefault(k, set()).add(attribute)
                refs.append({"cred": k, "attr": attribute})
            indices.append(refs)
        return [(c, disclosed.get(i, set())) for i, c in enumerate(chosen)], indices

    def _answer(
        self, con: Sequence[Any], chosen: list[Credential]
    ) -> list[tuple[Credential, int]] | None:
        picked: dict[str, Credential] = {}
        out = []
        for wanted in con:
            ctype = wanted.credential_type
            candidates = [picked[ctype]] if ctype in picked else [
                c for c in sorted(self.credentials, key=lambda c: c not in chosen)
                if c.type.id == ctype
            ]  # fmt: skip
            match = None
            for credential in candidates:
                index = credential.type.index_of(wanted.type.rsplit(".", 1)[1])
                value = decode_value(credential.m[index], credential.metadata.version)
                if wanted.satisfied_by(value):
                    match = (credential, index)
                    break
            if match is None:
                return None
            picked[ctype] = match[0]
            out.append(match)
        return out


def secret_commitment() -> int:
    """The randomizer of the secret key, one for every proof of a list (so that their responses
    are equal), sized for the smallest keys so that it fits every key's response bound, as gabi
    does."""
    return random_bits(PARAMS[1024].lm_commit)


def prove(items: Sequence[tuple[Credential, set[int]]], context: int, nonce: int) -> list[ProofD]:
    """Disclosure proofs for credentials sharing one secret key, with one challenge."""
    if not items:
        return []
    while True:
        secret_commit = secret_commitment()
        commitments = [commit_disclosure(c, shown, secret_commit) for c, shown in items]
        contributions = [x for commitment in commitments for x in commitment.contributions]
        c = hash_commit([context, *contributions, nonce])
        proofs = [commitment.respond(c) for commitment in commitments]
        # A negative v response (about 2^-80 likely) has no JSON form: draw again.
        if all(p.v_response >= 0 for p in proofs):
            return proofs


@dataclass(frozen=True)
class DisclosureCommitment:
    """The first move of a disclosure proof: a randomized signature and the commitment ``Ẑ``;
    :meth:`respond` answers the challenge."""

    credential: Credential
    disclosed: frozenset[int]
    a_prime: int
    z_commit: int
    v_prime: int
    e_prime: int
    e_commit: int
    v_commit: int
    m_commit: Mapping[int, int]

    @property
    def contributions(self) -> list[int]:
        return [self.a_prime, self.z_commit]

    def respond(self, c: int) -> ProofD:
        m = self.credential.m
        p = self.credential.key.params
        return ProofD(
            c=c,
            A=self.a_prime,
            e_response=self.e_commit + c * self.e_prime,
            v_response=self.v_commit + c * self.v_prime,
            # A hidden long value was signed as its hash; a disclosed one is hashed by the verifier.
            a_responses={i: r + c * signed_exponent(m[i], p) for i, r in self.m_commit.items()},
            a_disclosed={i: m[i] for i in sorted({1, *self.disclosed})},
        )


def commit_disclosure(
    credential: Credential, disclosed: set[int], secret_commit: int
) -> DisclosureCommitment:
    pk, p = credential.key, credential.key.params
    n = pk.n
    r_a = random_bits(p.ln + p.lstatzk)
    a_prime = credential.A * powmod(pk.S, r_a, n) % n
    e_commit = random_bits(p.le_commit)
    v_commit = random_bits(p.lv + p.lstatzk + p.lh)
    hidden = [i for i in range(len(credential.m)) if i not in disclosed and i != 1]
    m_commit = {i: secret_commit if i == 0 else random_bits(p.lm_commit) for i in hidden}
    z_commit = powmod(a_prime, e_commit, n) * powmod(pk.S, v_commit, n) % n
    for i, r in m_commit.items():
        z_commit = z_commit * powmod(pk.R[i], r, n) % n
    return DisclosureCommitment(
        credential,
        frozenset(disclosed),
        a_prime,
        z_commit,
        v_prime=credential.v - credential.e * r_a,
        e_prime=credential.e - (1 << (p.le - 1)),
        e_commit=e_commit,
        v_commit=v_commit,
        m_commit=m_commit,
    )
