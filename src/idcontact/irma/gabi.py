"""Idemix (gabi) disclosure proofs: the issuer's public key, ``ProofD`` and proof lists.

A disclosure proves knowledge of a CL signature on some attributes, revealing some of them.
The verifier recomputes the commitment ``Ẑ`` of each proof from its responses, then the
challenge over every proof of the list with :func:`hash_commit`, and compares it with ``c``.
All arithmetic is modulo the issuer's RSA modulus ``n`` with Python's own big integers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from idcontact.irma.der import hash_commit

try:  # GMP's modular exponentiation is about 8x faster than Python's for these sizes
    import gmpy2  # type: ignore[import-untyped]  # no stubs; one function used

    def powmod(base: int, exponent: int, modulus: int) -> int:
        return int(gmpy2.powmod(base, exponent, modulus))

except ImportError:  # pragma: no cover - gmpy2 is a dependency; this keeps it optional

    def powmod(base: int, exponent: int, modulus: int) -> int:
        return pow(base, exponent, modulus)


class ProofFormatError(ValueError):
    """A proof is not well formed (missing fields, bad base64, wrong types)."""


@dataclass(frozen=True)
class Params:
    """System parameters for a modulus size (gabi's ``sysparams``); derived lengths in bits."""

    ln: int
    lstatzk: int
    lh: int
    lm: int
    le_prime: int = 120

    @property
    def le(self) -> int:
        return self.lstatzk + self.lh + self.lm + 5

    @property
    def le_commit(self) -> int:
        return self.le_prime + self.lstatzk + self.lh

    @property
    def lm_commit(self) -> int:
        return self.lm + self.lstatzk + self.lh

    @property
    def lv(self) -> int:
        return self.ln + 2 * self.lstatzk + self.lh + self.lm + 4

    @property
    def lv_prime(self) -> int:
        """The wallet's share ``v'`` of the signature's ``v`` in issuance."""
        return self.ln + self.lstatzk

    @property
    def lv_prime_commit(self) -> int:
        return self.ln + 2 * self.lstatzk + self.lh


PARAMS: dict[int, Params] = {
    1024: Params(ln=1024, lstatzk=80, lh=256, lm=256),
    2048: Params(ln=2048, lstatzk=128, lh=256, lm=256),
    4096: Params(ln=4096, lstatzk=128, lh=256, lm=512),
}


@dataclass(frozen=True)
class PublicKey:
    """An issuer's public key: ``n``, ``Z``, ``S`` and the bases ``R_i`` (one per attribute)."""

    issuer: str
    """``scheme.issuer``."""
    counter: int
    expiry: int
    """Unix time after which the key may not sign (proofs of older signatures stay valid)."""
    n: int
    Z: int
    S: int
    R: tuple[int, ...]

    @property
    def params(self) -> Params:
        size = self.n.bit_length()
        for ln in sorted(PARAMS):
            if size <= ln:
                return PARAMS[ln]
        raise ValueError(f"no system parameters for a {size}-bit modulus")


def b64int(value: object) -> int:
    """IRMA's JSON big integers: standard base64 of the unsigned big-endian magnitude."""
    if not isinstance(value, str) or len(value) > 4096:
        raise ProofFormatError("a big integer must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProofFormatError("a big integer is not valid base64") from None
    return int.from_bytes(raw, "big")


def int_b64(value: int) -> str:
    return base64.b64encode(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")).decode()


@dataclass(frozen=True)
class ProofD:
    """A disclosure proof for one credential."""

    c: int
    A: int
    e_response: int
    v_response: int
    a_responses: Mapping[int, int]
    """Hidden attributes by index (0 is the secret key)."""
    a_disclosed: Mapping[int, int]
    """Disclosed attributes by index (1 is the metadata attribute)."""

    @classmethod
    def parse(cls, data: object) -> ProofD:
        if not isinstance(data, dict):
            raise ProofFormatError("a proof must be a JSON object")
        if "nonrev_proof" in data or "rangeproofs" in data:
            # Not requested by us, so not accepted (revocation and range proofs: later).
            raise ProofFormatError("non-revocation and range proofs are not supported")
        try:
            return cls(
                c=b64int(data["c"]),
                A=b64int(data["A"]),
                e_response=b64int(data["e_response"]),
                v_response=b64int(data["v_response"]),
                a_responses=_indexed(data["a_responses"]),
                a_disclosed=_indexed(data["a_disclosed"]),
            )
        except KeyError as missing:
            raise ProofFormatError(f"a proof lacks {missing.args[0]!r}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "c": int_b64(self.c),
            "A": int_b64(self.A),
            "e_response": int_b64(self.e_response),
            "v_response": int_b64(self.v_response),
            "a_responses": {str(i): int_b64(v) for i, v in sorted(self.a_responses.items())},
            "a_disclosed": {str(i): int_b64(v) for i, v in sorted(self.a_disclosed.items())},
        }

    def responses_in_bounds(self, pk: PublicKey) -> bool:
        p = pk.params
        if self.e_response.bit_length() > p.le_commit + 1:
            return False
        return all(a.bit_length() <= p.lm_commit + 1 for a in self.a_responses.values())

    def indices_fit(self, pk: PublicKey) -> bool:
        """Every attribute index exists in the key, none is both hidden and disclosed, the
        secret key (0) is hidden and the metadata (1) disclosed."""
        hidden, shown = set(self.a_responses), set(self.a_disclosed)
        every = hidden | shown
        return (
            not hidden & shown
            and 0 in hidden
            and 1 in shown
            and every == set(range(len(every)))
            and len(every) <= len(pk.R)
        )

    def commitment(self, pk: PublicKey) -> int:
        """``Ẑ = (Z / (A^(2^(Le-1)) · Π_D R_i^{a_i}))^{-c} · A^e · S^v · Π_H R_i^{a_i} mod n``."""
        n, p = pk.n, pk.params
        num = powmod(self.A, 1 << (p.le - 1), n)
        for i, a in self.a_disclosed.items():
            num = num * powmod(pk.R[i], signed_exponent(a, p), n) % n
        known = pk.Z * powmod(num, -1, n) % n
        result = powmod(known, -self.c, n)
        result = result * powmod(self.A, self.e_response, n) % n
        result = result * powmod(pk.S, self.v_response, n) % n
        for i, a in self.a_responses.items():
            result = result * powmod(pk.R[i], a, n) % n
        return result


def verify_proofs(
    proofs: Sequence[ProofD],
    keys: Sequence[PublicKey],
    context: int,
    nonce: int,
    *,
    keyshare: Sequence[str] | None = None,
    issig: bool = False,
) -> bool:
    """Whether the list of proofs is valid: every ``c`` equals the challenge over all proofs.

    ``keyshare``: per proof, the keyshare server of its scheme (or ``"."`` for none); proofs
    with the same one must share the secret key, that is ``a_responses[0]``.
    """
    if not proofs or len(proofs) != len(keys):
        return False
    try:
        contributions: list[int] = [context]
        for proof, pk in zip(proofs, keys, strict=True):
            if not proof.indices_fit(pk) or not proof.responses_in_bounds(pk):
                return False
            if not 0 < proof.A < pk.n:
                return False
            contributions += [proof.A, proof.commitment(pk)]
    except ValueError:  # no inverse: A or the disclosed part shares a factor with n
        return False
    contributions.append(nonce)
    challenge = hash_commit(contributions, issig=issig)
    if any(proof.c != challenge for proof in proofs):
        return False
    groups: dict[str, int] = {}
    for proof, server in zip(proofs, keyshare or ["."] * len(proofs), strict=True):
        secret = proof.a_responses[0]
        if groups.setdefault(server, secret) != secret:
            return False
    return True


def signed_exponent(value: int, params: Params) -> int:
    """What the issuer signs for an attribute: the value, or its SHA-256 when it is longer
    than ``Lm`` bits (photos, say)."""
    if value.bit_length() > params.lm:
        return int.from_bytes(hashlib.sha256(_magnitude(value)).digest(), "big")
    return value


def _indexed(data: object) -> dict[int, int]:
    if not isinstance(data, dict) or len(data) > 64:
        raise ProofFormatError("attribute responses must be an object of at most 64 entries")
    out: dict[int, int] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key.isascii() or not key.isdigit() or len(key) > 3:
            raise ProofFormatError("attribute indices must be small numbers")
        out[int(key)] = b64int(value)
    return out


def _magnitude(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")
