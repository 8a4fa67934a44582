"""A check of untrusted XML before pysaml2 (and its parser) ever sees it.

SAML messages never need a document type declaration, so any DTD is refused outright: no
entity expansion (billion laughs), no external entities or references. The size is capped,
and the document must be well-formed under defusedxml.
"""

from __future__ import annotations

from defusedxml import DefusedXmlException, ElementTree

from idcontact.digid.levels import LoginRefusedError

MAX_XML_BYTES = 256 * 1024


def check_xml(data: bytes) -> None:
    """Raise :class:`LoginRefusedError` (reason ``malformed``) unless ``data`` is small,
    well-formed XML without a DTD."""
    if len(data) > MAX_XML_BYTES:
        raise LoginRefusedError("malformed", "The SAML message is too large")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise LoginRefusedError("malformed", "The SAML message contains a DTD")
    try:
        ElementTree.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, ElementTree.ParseError, ValueError):
        raise LoginRefusedError("malformed", "The SAML message is not valid XML") from None
