"""The XML check that runs before pysaml2 parses anything."""

from __future__ import annotations

import pytest

from idcontact.digid.levels import LoginRefusedError
from idcontact.digid.xmlguard import MAX_XML_BYTES, check_xml

GOOD = b'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="a"/>'


def test_plain_saml_passes() -> None:
    check_xml(GOOD)
    check_xml(b'<?xml version="1.0" encoding="UTF-8"?>' + GOOD)


@pytest.mark.parametrize(
    "data",
    [
        b'<!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><r>&b;</r>',
        b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        b'<!doctype r SYSTEM "http://127.0.0.1:9/dtd"><r/>',
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'.encode("utf-16"),
        b"<r><unclosed></r>",
        b"",
        b"<r>" + b"x" * MAX_XML_BYTES + b"</r>",
    ],
    ids=["entity-expansion", "external-entity", "external-dtd", "utf16", "broken", "empty", "big"],
)
def test_dtds_broken_and_oversized_xml_are_refused(data: bytes) -> None:
    with pytest.raises(LoginRefusedError) as refused:
        check_xml(data)
    assert refused.value.reason == "malformed"
