"""The challenge hash of Idemix proofs: SHA-256 over the DER encoding of a list of integers.

``HashCommit(values, issig)`` = ``sha256(DER(SEQUENCE { [BOOLEAN TRUE], INTEGER len(values),
INTEGER v_1, … }))`` read as an unsigned big-endian integer. INTEGERs are minimal two's
complement (a leading zero byte when the top bit is set), lengths definite (short or long
form), the BOOLEAN only for attribute-based signatures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_integer(value: int) -> bytes:
    """A DER INTEGER (two's complement, minimal)."""
    size = (value.bit_length() + 8) // 8 if value >= 0 else ((-value - 1).bit_length() + 8) // 8
    body = value.to_bytes(max(size, 1), "big", signed=True)
    return b"\x02" + der_length(len(body)) + body


def hash_commit(values: Sequence[int], *, issig: bool = False) -> int:
    body = b"\x01\x01\xff" if issig else b""
    body += der_integer(len(values)) + b"".join(der_integer(v) for v in values)
    encoded = b"\x30" + der_length(len(body)) + body
    return int.from_bytes(hashlib.sha256(encoded).digest(), "big")
