"""Reading IRMA's XML (scheme, issuer and credential descriptions, Idemix keys) safely."""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import Element

from defusedxml import ElementTree

from idcontact.irma.gabi import PublicKey

IDEMIX = "{http://www.zurich.ibm.com/security/idemix}"
MAX_XML_BYTES = 1 << 20


class SchemeError(ValueError):
    """A scheme (or a file in it) is missing, malformed or not signed by its key."""


def read_xml(path: Path) -> Element:
    try:
        data = path.read_bytes()
    except OSError:
        raise SchemeError(f"{path.name}: cannot be read") from None
    if len(data) > MAX_XML_BYTES:
        raise SchemeError(f"{path.name}: larger than {MAX_XML_BYTES} bytes")
    try:
        root: Element = ElementTree.fromstring(data)
    except Exception:  # ParseError and defusedxml's refusals (entities, DTDs)
        raise SchemeError(f"{path.name}: not valid XML") from None
    return root


def text(element: Element, tag: str, where: str) -> str:
    found = element.find(tag)
    if found is None or found.text is None:
        raise SchemeError(f"{where}: no {tag.removeprefix(IDEMIX)}")
    return found.text.strip()


def public_key(path: Path, issuer: str) -> PublicKey:
    """An ``IssuerPublicKey`` file (namespace idemix; decimal integers)."""
    root = read_xml(path)
    where = f"{issuer} public key {path.stem}"
    try:
        elements = root.find(f"{IDEMIX}Elements")
        if elements is None:
            raise SchemeError(f"{where}: no Elements")
        bases = elements.find(f"{IDEMIX}Bases")
        if bases is None:
            raise SchemeError(f"{where}: no Bases")
        count = int(bases.get("num", "-1"))
        R = tuple(int(text(bases, f"{IDEMIX}Base_{i}", where)) for i in range(count))
        return PublicKey(
            issuer=issuer,
            counter=int(text(root, f"{IDEMIX}Counter", where)),
            expiry=int(text(root, f"{IDEMIX}ExpiryDate", where)),
            n=int(text(elements, f"{IDEMIX}n", where)),
            Z=int(text(elements, f"{IDEMIX}Z", where)),
            S=int(text(elements, f"{IDEMIX}S", where)),
            R=R,
        )
    except ValueError as exc:
        if isinstance(exc, SchemeError):
            raise
        raise SchemeError(f"{where}: a number is not a decimal integer") from None
