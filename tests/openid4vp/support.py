"""Test material for OpenID4VP: a small PKI (CA, issuer and relying-party certificates made
here), issuers of SD-JWT VCs, settings with an ``openid4vp`` method, and the test wallet
(:class:`idcontact.openid4vp.holder.Wallet`) wired to an in-process app."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey

from idcontact.openid4vp.holder import Credential
from idcontact.openid4vp.issuer import issue
from idcontact.openid4vp.trust import did_jwk_of
from tests.conftest import CANARY_BSN, CANARY_NAME, demo_settings

PID = "urn:eu.europa.ec.eudi:pid:1"
ADDRESS = "urn:test:address:1"
MAPPING: dict[str, Any] = {
    "fullname": [{"vct": PID, "claims": ["given_name", "family_name"]}],
    "bsn": [{"vct": PID, "claims": ["bsn"]}],
    "postcode": [
        {"vct": PID, "claims": ["resident_postal_code"]},
        {"vct": ADDRESS, "claims": ["postal_code"]},
    ],
    "birthyear": [{"vct": PID, "claims": ["birthdate"], "take": "year"}],
    "municipality": [{"vct": PID, "claims": ["municipality"]}],
}
GIVEN, FAMILY = CANARY_NAME.split("-", 1)
RESIDENT = {
    "given_name": GIVEN,
    "family_name": FAMILY,
    "bsn": CANARY_BSN,
    "birthdate": "1980-04-01",
    "resident_postal_code": "6811AA",
    "municipality": "Arnhem",
    "nationality": "NL-canary-extra",  # never asked: must never be stored
}


@dataclass
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def make_ca(cn: str = "Test Root CA") -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Ca(cert, key)


def make_leaf(
    ca: Ca,
    cn: str,
    *,
    org: str | None = None,
    dns: list[str] | None = None,
    registration: dict[str, Any] | None = None,
    days: int = 10,
) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, org))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
        )
    if registration is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("2.1.123.1"), json.dumps(registration).encode()
            ),
            critical=False,
        )
    return Ca(builder.sign(ca.key, hashes.SHA256()), key)


def x5c(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


def private_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class Issuer:
    """Issues SD-JWT VCs: with an x5c chain (``chain``) or as a did:jwk (``chain`` empty)."""

    key: ECKey
    chain: list[x509.Certificate]
    iss: str

    def credential(
        self,
        claims: dict[str, Any] | None = None,
        *,
        vct: str = PID,
        exp_in: int = 3600,
        iat: int | None = None,
        status: dict[str, Any] | None = None,
    ) -> Credential:
        holder = ECKey.generate_key("P-256")
        now = int(time.time()) if iat is None else iat
        sd_jwt = issue(
            self.key,
            iss=self.iss,
            vct=vct,
            claims=RESIDENT if claims is None else claims,
            holder=holder,
            iat=now,
            exp=now + exp_in,
            x5c=x5c(*self.chain) if self.chain else None,
            status=status,
        )
        return Credential(sd_jwt, holder)


def x509_issuer(ca: Ca, cn: str = "Test PID Issuer") -> Issuer:
    leaf = make_leaf(ca, cn, org="Test Issuer B.V.", dns=["issuer.example"])
    return Issuer(ECKey.import_key(leaf.key), [leaf.cert], "https://issuer.example")


def did_issuer() -> Issuer:
    key = ECKey.generate_key("P-256")
    return Issuer(key, [], did_jwk_of(key))


@dataclass
class Pki:
    root: Ca
    rp: Ca
    issuer: Issuer
    dir: Path


AUTHORISED = {
    "rp": {
        "authorized": [
            {
                "credential": PID,
                "attributes": [
                    "given_name",
                    "family_name",
                    "bsn",
                    "resident_postal_code",
                    "birthdate",
                    "municipality",
                ],
            },
            {"credential": ADDRESS, "attributes": ["postal_code"]},
        ]
    }
}


def make_pki(
    tmp_path: Path, *, registration: dict[str, Any] | None = None, registered: bool = True
) -> Pki:
    root = make_ca()
    rp = make_leaf(
        root,
        "Gemeente Test RP",
        org="Gemeente Test",
        dns=["testserver"],
        registration=(AUTHORISED if registration is None else registration) if registered else None,
    )
    directory = tmp_path / "pki"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rp.pem").write_bytes(
        rp.cert.public_bytes(serialization.Encoding.PEM) + root.pem()
    )
    (directory / "rp.key.pem").write_text(private_pem(rp.key))
    (directory / "rp.key.pem").chmod(0o600)
    (directory / "anchors.pem").write_bytes(root.pem())
    return Pki(root, rp, x509_issuer(root), directory)


WALLET_METHOD = {
    "tag": "eudi",
    "name": "EU-wallet",
    "plugin": "openid4vp",
    "assurance": "substantial",
    "provides": list(MAPPING),
    "shim_tel_url": True,
}
DEMO_METHOD = {
    "tag": "demo",
    "name": "Demo-identificatie",
    "plugin": "demo",
    "assurance": "substantial",
    "shim_tel_url": True,
}


def plugin_config(pki: Pki, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "client_id_prefix": "x509_san_dns",
        "request_key": {"type": "EC", "key_file": str(pki.dir / "rp.key.pem")},
        "certificate_chain": str(pki.dir / "rp.pem"),
        "client_name": "Gemeente Test",
        "trust_anchors": [str(pki.dir / "anchors.pem")],
        "attributes": MAPPING,
    }
    config.update(overrides)
    return config


def wallet_settings(tmp_path: Path, config: dict[str, Any], **overrides: Any) -> Any:
    plugins = demo_settings(tmp_path).plugins
    return demo_settings(
        tmp_path,
        auth_methods=[DEMO_METHOD, WALLET_METHOD],
        plugins={**plugins, "auth": {**plugins["auth"], "eudi": config}},
        **overrides,
    )
