"""Attribute and metadata encoding, against the reference's examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from idcontact.irma.attributes import (
    AttributeError_,
    Metadata,
    credential_id,
    decode_value,
    encode_value,
)

DATA = Path(__file__).parent / "testdata" / "vectors"
CASES = json.loads((DATA / "attribute-decoding.json").read_text())
DISCLOSURE = json.loads((DATA / "disclosure-studentid-456.json").read_text())


@pytest.mark.parametrize("case", CASES["value_cases"], ids=lambda c: c["int"])
def test_values_decode_as_the_reference_does(case: dict[str, object]) -> None:
    value = int(str(case["int"]))
    assert decode_value(value, int(str(case["metadata_version"]))) == case["expected"]


def test_an_even_value_is_an_absent_attribute_and_one_is_empty() -> None:
    assert decode_value(0, 3) is None and decode_value(6842988, 3) is None
    assert decode_value(1, 3) == ""
    assert encode_value(None) == 0 and encode_value("") == 1


def test_metadata_decodes_as_the_reference_does() -> None:
    case = CASES["metadata_cases"][0]
    metadata = Metadata.decode(int(case["int"]))
    expected = case["expected"]
    assert metadata.version == expected["version"]
    assert metadata.signing_date == expected["signing_date_unix"]
    assert metadata.expiry == expected["expiry_unix"]
    assert metadata.key_counter == expected["key_counter"]
    assert metadata.credential_id == credential_id(expected["credential_type"])
    assert metadata.encode() == int(case["int"])
    disclosed = DISCLOSURE["expected"]["metadata_attribute"]
    again = Metadata.decode(int(disclosed["hex"], 16))
    assert (again.version, again.expiry, again.key_counter) == (3, disclosed["expiry_unix"], 2)


def test_wrong_sizes_and_encodings_are_errors() -> None:
    with pytest.raises(AttributeError_):
        Metadata.decode(1 << (24 * 8))
    with pytest.raises(AttributeError_):
        decode_value((0xFF << 1) | 1, 3)  # not UTF-8


@given(st.text(max_size=40).filter(lambda t: not t.startswith("\x00")))
def test_values_round_trip(text: str) -> None:
    """(Leading NUL characters are lost: a value is a number, as in every IRMA client.)"""
    assert decode_value(encode_value(text), 3) == text
    if text:
        assert decode_value(encode_value(text, 2), 2) == text
