"""Idemix issuer keys, and the demo issuer ``irma-demo.gemeente`` that the embedded mode ships.

An issuer key is an RSA-like modulus ``n = p·q`` of safe primes (``p = 2p' + 1``), a generator
``S`` of the quadratic residues, and ``Z`` and the bases ``R_i`` as powers of ``S``; the private
key is ``p, q, p', q'``. Written in the scheme's XML (namespace idemix, decimal integers), so
the Go server reads them too.

``python -m idcontact.irma.keygen <scheme directory>`` (re)makes the demo issuer in that scheme
(``irma-demo``): its keys, its two credential types (a municipality's personal data and address,
with the attribute names of ``pbdf.gemeente`` as the real ``irma-demo`` has them), and a new
signed index (the demo scheme's signing key is public). Its private key is published with it on
purpose, as for every ``irma-demo`` issuer: anyone may issue these demo credentials.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import gmpy2  # type: ignore[import-untyped]  # no stubs

from idcontact.irma.gabi import powmod

NAMESPACE = (
    'xmlns="http://www.zurich.ibm.com/security/idemix" '
    'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
)


def safe_prime(bits: int) -> int:
    """A random safe prime of ``bits`` bits: ``2q + 1`` with ``q`` prime."""
    while True:
        q = gmpy2.mpz(secrets.randbits(bits - 1)) | (1 << (bits - 2)) | 1
        if q % 3 != 2:  # else 2q + 1 is divisible by 3
            continue
        p = 2 * q + 1
        if gmpy2.is_prime(q, 1) and gmpy2.is_prime(p, 1):
            if gmpy2.is_prime(q, 40) and gmpy2.is_prime(p, 40):
                return int(p)


@dataclass(frozen=True, repr=False)
class IssuerKeys:
    counter: int
    expiry: int
    p: int
    q: int
    S: int
    Z: int
    R: tuple[int, ...]
    G: int
    H: int

    @property
    def n(self) -> int:
        return self.p * self.q

    def __repr__(self) -> str:
        return f"IssuerKeys(counter={self.counter}, bits={self.n.bit_length()})"

    def public_xml(self) -> str:
        bases = "\n".join(f"      <Base_{i}>{r}</Base_{i}>" for i, r in enumerate(self.R))
        return (
            '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
            f"<IssuerPublicKey {NAMESPACE}>\n"
            f"  <Counter>{self.counter}</Counter>\n"
            f"  <ExpiryDate>{self.expiry}</ExpiryDate>\n"
            "  <Elements>\n"
            f"    <n>{self.n}</n>\n    <Z>{self.Z}</Z>\n    <S>{self.S}</S>\n"
            f"    <G>{self.G}</G>\n    <H>{self.H}</H>\n"
            f'    <Bases num="{len(self.R)}">\n{bases}\n    </Bases>\n'
            "  </Elements>\n"
            '  <Features>\n    <Epoch length="432000"/>\n  </Features>\n'
            "</IssuerPublicKey>\n"
        )

    def private_xml(self) -> str:
        return (
            '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
            f"<IssuerPrivateKey {NAMESPACE}>\n"
            f"  <Counter>{self.counter}</Counter>\n"
            f"  <ExpiryDate>{self.expiry}</ExpiryDate>\n"
            "  <Elements>\n"
            f"    <p>{self.p}</p>\n    <q>{self.q}</q>\n"
            f"    <pPrime>{(self.p - 1) // 2}</pPrime>\n    <qPrime>{(self.q - 1) // 2}</qPrime>\n"
            "  </Elements>\n"
            "</IssuerPrivateKey>\n"
        )


def generate(bits: int, bases: int, *, counter: int = 0, expiry: int) -> IssuerKeys:
    """A new issuer key of ``bits`` (1024 or 2048) with ``bases`` bases ``R_i``."""
    half = bits // 2
    while True:
        p, q = safe_prime(half), safe_prime(half)
        if p != q and (p * q).bit_length() == bits:
            break
    n, order = p * q, ((p - 1) // 2) * ((q - 1) // 2)

    def residue_generator() -> int:
        # A random square generates the quadratic residues with overwhelming probability;
        # it must not share a factor with n.
        while True:
            x = secrets.randbelow(n - 3) + 2
            s = x * x % n
            if gmpy2.gcd(s - 1, n) == 1 and gmpy2.gcd(s, n) == 1:
                return s

    S = residue_generator()

    def power() -> int:
        return powmod(S, secrets.randbelow(order - 2) + 2, n)

    return IssuerKeys(
        counter=counter,
        expiry=expiry,
        p=p,
        q=q,
        S=S,
        Z=power(),
        R=tuple(power() for _ in range(bases)),
        G=residue_generator(),
        H=residue_generator(),
    )


# -- the demo issuer ------------------------------------------------------------------------

PERSONAL_DATA = (
    ("initials", "Initials", "Voorletters"),
    ("firstnames", "First names", "Voornamen"),
    ("prefix", "Prefix", "Voorvoegsel"),
    ("familyname", "Family name", "Achternaam"),
    ("fullname", "Full name", "Volledige naam"),
    ("gender", "Gender", "Geslacht"),
    ("nationality", "Dutch nationality", "Nederlandse nationaliteit"),
    ("surname", "Surname", "Geslachtsnaam"),
    ("dateofbirth", "Date of birth", "Geboortedatum"),
    ("cityofbirth", "City of birth", "Geboorteplaats"),
    ("countryofbirth", "Country of birth", "Geboorteland"),
    ("over12", "Over 12", "Ouder dan 12"),
    ("over16", "Over 16", "Ouder dan 16"),
    ("over18", "Over 18", "Ouder dan 18"),
    ("over21", "Over 21", "Ouder dan 21"),
    ("over65", "Over 65", "Ouder dan 65"),
    ("bsn", "BSN", "BSN"),
    ("digidlevel", "DigiD assurance level", "DigiD-betrouwbaarheidsniveau"),
)
ADDRESS = (
    ("street", "Street", "Straat"),
    ("houseNumber", "House number", "Huisnummer"),
    ("zipcode", "Postal code", "Postcode"),
    ("municipality", "Municipality", "Gemeente"),
    ("city", "City", "Woonplaats"),
)
OPTIONAL = {"prefix", "fullname", "nationality"}


def _credential_xml(
    scheme: str,
    issuer: str,
    credential: str,
    names: tuple[str, str],
    attributes: tuple[tuple[str, str, str], ...],
) -> str:
    rows = []
    for attribute, en, nl in attributes:
        optional = ' optional="true"' if attribute in OPTIONAL else ""
        rows.append(
            f'\t\t<Attribute id="{attribute}"{optional}>\n'
            f"\t\t\t<Name>\n\t\t\t\t<en>{escape(en)}</en>\n\t\t\t\t<nl>{escape(nl)}</nl>\n"
            "\t\t\t</Name>\n"
            f"\t\t\t<Description>\n\t\t\t\t<en>{escape(en)}</en>\n\t\t\t\t<nl>{escape(nl)}</nl>\n"
            "\t\t\t</Description>\n\t\t</Attribute>"
        )
    return (
        '<IssueSpecification version="4">\n'
        f"\t<Name>\n\t\t<en>Demo {escape(names[0])}</en>\n\t\t<nl>Demo {escape(names[1])}</nl>\n"
        "\t</Name>\n"
        f"\t<SchemeManager>{scheme}</SchemeManager>\n\t<IssuerID>{issuer}</IssuerID>\n"
        f"\t<CredentialID>{credential}</CredentialID>\n"
        f"\t<Description>\n\t\t<en>Demo {escape(names[0])} (not real)</en>\n"
        f"\t\t<nl>Demo {escape(names[1])} (niet echt)</nl>\n\t</Description>\n"
        "\t<ShouldBeSingleton>true</ShouldBeSingleton>\n"
        "\t<Attributes>\n" + "\n".join(rows) + "\n\t</Attributes>\n"
        "</IssueSpecification>\n"
    )


def make_demo_gemeente(scheme: Path, *, bits: int = 1024) -> IssuerKeys:
    """Write the demo issuer ``gemeente`` into ``scheme`` (an ``irma-demo`` directory) and
    re-sign the scheme's index with its (public) ``sk.pem``."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    name = scheme.name
    issuer = scheme / "gemeente"
    if issuer.exists():
        shutil.rmtree(issuer)
    for credential in ("personalData", "address"):
        (issuer / "Issues" / credential).mkdir(parents=True)
    (issuer / "PublicKeys").mkdir()
    (issuer / "PrivateKeys").mkdir()
    (issuer / "description.xml").write_text(
        '<Issuer version="4">\n  <ID>gemeente</ID>\n'
        "  <Name>\n    <en>Demo Municipality</en>\n    <nl>Demo Gemeente</nl>\n  </Name>\n"
        f"  <SchemeManager>{name}</SchemeManager>\n"
        "  <ContactAddress>ID Contact demo (not a real municipality)</ContactAddress>\n"
        "  <ContactEMail>demo@example.org</ContactEMail>\n</Issuer>\n"
    )
    logo = scheme / "MijnOverheid" / "logo.png"
    shutil.copy(logo, issuer / "logo.png")
    for credential, names, attributes in (
        ("personalData", ("Personal data", "Persoonsgegevens"), PERSONAL_DATA),
        ("address", ("Address", "Adres"), ADDRESS),
    ):
        (issuer / "Issues" / credential / "description.xml").write_text(
            _credential_xml(name, "gemeente", credential, names, attributes)
        )
        shutil.copy(logo, issuer / "Issues" / credential / "logo.png")
    keys = generate(bits, len(PERSONAL_DATA) + 2, expiry=int(time.time()) + 10 * 365 * 86400)
    (issuer / "PublicKeys" / "0.xml").write_text(keys.public_xml())
    (issuer / "PrivateKeys" / "0.xml").write_text(keys.private_xml())

    # The index: every signed file (private keys and sk.pem stay out), then the timestamp.
    stamp = int(time.time())
    (scheme / "timestamp").write_text(f"{stamp}\n")
    files = sorted(
        p.relative_to(scheme).as_posix()
        for p in scheme.rglob("*")
        if p.is_file()
        and "PrivateKeys" not in p.parts
        and p.name not in ("index", "index.sig", "pk.pem", "sk.pem", "README.md")
    )
    index = "".join(
        f"{hashlib.sha256((scheme / f).read_bytes()).hexdigest()} {name}/{f}\n" for f in files
    )
    (scheme / "index").write_text(index)
    key = serialization.load_pem_private_key((scheme / "sk.pem").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("sk.pem: not an EC key")
    (scheme / "index.sig").write_bytes(key.sign(index.encode(), ec.ECDSA(hashes.SHA256())))
    return keys


if __name__ == "__main__":  # pragma: no cover - a maintainer's tool
    made = make_demo_gemeente(Path(sys.argv[1]))
    print(f"made {made!r} in {sys.argv[1]}/gemeente")
