"""DigiD levels, their SAML class refs, and the BSN in the NameID."""

from __future__ import annotations

import pytest

from idcontact.digid.levels import CLASSES, LEVELS, LoginRefusedError, achieved, bsn_of


def test_the_levels_rise_with_their_class_refs() -> None:
    names = ["basis", "midden", "substantieel", "hoog"]
    ranks = [LEVELS[n].rank for n in names]  # type: ignore[index]
    assert ranks == sorted(ranks) and len(set(ranks)) == 4
    assert LEVELS["midden"].class_ref == CLASSES + "MobileTwoFactorContract"


def test_the_reached_level_must_be_at_least_the_minimum() -> None:
    midden = LEVELS["midden"]
    assert achieved([CLASSES + "Smartcard"], midden).name == "substantieel"
    assert achieved([CLASSES + "MobileTwoFactorContract"], midden).name == "midden"
    for refs in ([CLASSES + "PasswordProtectedTransport"], ["urn:unknown"], []):
        with pytest.raises(LoginRefusedError) as refused:
            achieved(refs, midden)
        assert refused.value.reason == "level"


def test_the_bsn_comes_from_the_sector_prefixed_name_id() -> None:
    assert bsn_of("s00000000:999990019") == "999990019"
    assert bsn_of("s00000000:12345678") == "012345678"
    for bad in ("999990019", "s00000001:999990019", "s00000000:99999001x", "s00000000:"):
        with pytest.raises(LoginRefusedError):
            bsn_of(bad)
