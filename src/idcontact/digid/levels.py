"""DigiD's assurance levels and the SAML authentication context classes that stand for them.

Logius names four levels; each maps to one ``AuthnContextClassRef`` (rising in strength) and,
for our purposes' ``min_assurance``, to an eIDAS level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from idcontact.errors import BadRequestError

LevelName = Literal["basis", "midden", "substantieel", "hoog"]
CLASSES = "urn:oasis:names:tc:SAML:2.0:ac:classes:"


@dataclass(frozen=True)
class Level:
    name: LevelName
    label: str
    class_ref: str
    rank: int
    eidas: Literal["low", "substantial", "high"]


LEVELS: dict[LevelName, Level] = {
    "basis": Level("basis", "Basis", CLASSES + "PasswordProtectedTransport", 10, "low"),
    "midden": Level("midden", "Midden", CLASSES + "MobileTwoFactorContract", 20, "substantial"),
    "substantieel": Level("substantieel", "Substantieel", CLASSES + "Smartcard", 25, "substantial"),
    "hoog": Level("hoog", "Hoog", CLASSES + "SmartcardPKI", 30, "high"),
}
BY_CLASS_REF = {level.class_ref: level for level in LEVELS.values()}


class LoginRefusedError(BadRequestError):
    """A login that came back but cannot be used. ``reason`` picks the resident's message."""

    slug = "digid-login-refused"
    title = "The DigiD login could not be used"

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason


def achieved(class_refs: list[str], minimum: Level) -> Level:
    """The level the IdP reports, if it is at least ``minimum``; refused otherwise."""
    levels = [BY_CLASS_REF[c] for c in class_refs if c in BY_CLASS_REF]
    if not levels:
        raise LoginRefusedError("level", "The login has no known DigiD level")
    best = max(levels, key=lambda level: level.rank)
    if best.rank < minimum.rank:
        raise LoginRefusedError("level", "The DigiD level of the login is below the minimum")
    return best


SECTOR_BSN = "s00000000:"


def bsn_of(name_id: str) -> str:
    """The BSN from a DigiD NameID (``s00000000:<BSN>``, the BSN sector code)."""
    if not name_id.startswith(SECTOR_BSN):
        raise LoginRefusedError("invalid", "The login does not carry a BSN")
    bsn = name_id[len(SECTOR_BSN) :]
    if not (bsn.isascii() and bsn.isdigit() and len(bsn) in (8, 9)):
        raise LoginRefusedError("invalid", "The login does not carry a valid BSN")
    return bsn.zfill(9)
