"""IRMA attribute encoding: the metadata attribute and attribute values.

Metadata (attribute index 1) is 24 bytes, big-endian: version (1) | signing date (3, weeks
since the epoch) | validity (2, weeks) | key counter (2) | credential id (16: the first 16
bytes of ``sha256("scheme.issuer.credential")``). From version 3 on, a value is
``int(UTF-8 bytes) << 1 | 1``, and an even number means "absent" (an optional attribute).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

WEEK = 604_800
METADATA_BYTES = 24


class AttributeError_(ValueError):
    """An attribute or metadata value that cannot be decoded."""


@dataclass(frozen=True)
class Metadata:
    version: int
    signing_date: int
    """Unix time, rounded down to whole weeks."""
    validity_weeks: int
    key_counter: int
    credential_id: bytes

    @property
    def expiry(self) -> int:
        return self.signing_date + self.validity_weeks * WEEK

    @classmethod
    def decode(cls, value: int) -> Metadata:
        if value < 0 or value.bit_length() > METADATA_BYTES * 8:
            raise AttributeError_("the metadata attribute has the wrong size")
        raw = value.to_bytes(METADATA_BYTES, "big")
        return cls(
            version=raw[0],
            signing_date=int.from_bytes(raw[1:4], "big") * WEEK,
            validity_weeks=int.from_bytes(raw[4:6], "big"),
            key_counter=int.from_bytes(raw[6:8], "big"),
            credential_id=raw[8:24],
        )

    def encode(self) -> int:
        raw = (
            bytes([self.version])
            + (self.signing_date // WEEK).to_bytes(3, "big")
            + self.validity_weeks.to_bytes(2, "big")
            + self.key_counter.to_bytes(2, "big")
            + self.credential_id
        )
        return int.from_bytes(raw, "big")


def credential_id(credential_type: str) -> bytes:
    """``scheme.issuer.credential`` as it appears in metadata."""
    return hashlib.sha256(credential_type.encode()).digest()[:16]


def decode_value(value: int, metadata_version: int) -> str | None:
    """A disclosed value as text; ``None`` for an absent optional attribute (version ≥ 3)."""
    if value < 0:
        raise AttributeError_("an attribute value is negative")
    if metadata_version >= 3:
        if not value & 1:
            return None
        value >>= 1
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AttributeError_("an attribute value is not UTF-8") from None


def encode_value(text: str | None, metadata_version: int = 3) -> int:
    if text is None:
        if metadata_version < 3:
            raise AttributeError_("absent attributes need metadata version 3")
        return 0
    value = int.from_bytes(text.encode("utf-8"), "big")
    return value << 1 | 1 if metadata_version >= 3 else value
