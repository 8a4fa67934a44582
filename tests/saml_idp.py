"""A DigiD-like SAML identity provider for the tests, on pysaml2's IdP, run for real on
127.0.0.1: the front channel (``/sso``, ``/slo``) over HTTP and the artifact resolution service
over HTTPS that demands a client certificate (mutual TLS), as DigiD's back channel does.

Certificates are generated here per test (a CA, the IdP's and the SP's signing pairs, a TLS
server certificate for 127.0.0.1 and the SP's TLS client certificate). Knobs make the IdP
misbehave the way a broken or hostile one would: another signing key, another audience, an
expired assertion, a lower level, a cancel, artifacts that stay resolvable.
"""

from __future__ import annotations

import base64
import datetime
import html
import re
import shutil
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_ARTIFACT, BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, BINDING_SOAP
from saml2.assertion import Policy
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.saml import NAMEID_FORMAT_UNSPECIFIED, NameID
from saml2.samlp import STATUS_AUTHN_FAILED, response_from_string
from saml2.server import Server
from saml2.sigver import pre_signature_part
from saml2.soap import make_soap_enveloped_saml_thingy
from saml2.time_util import instant
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.flows._servers import HOST, free_port
from tests.live import serve

BSN = "999990019"
MIDDEN = "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    idp: Pair
    rogue: Pair
    """A signing pair of the IdP's name that its metadata does not list."""
    sp: Pair
    sp2: Pair
    """A second municipality's SAML pair."""
    tls_server: Pair
    tls_client: Pair


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(directory: Path, name: str, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pair


def _cert(
    name: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None = None,
    *,
    ca: bool = False,
    server: bool = False,
    client: bool = False,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert = _cert("Test CA", ca_key, ca=True)
    ca = directory / "ca.crt"
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pairs = {}
    for name in ("idp", "rogue", "sp", "sp2"):
        key = _key()
        pairs[name] = _write(directory, name, key, _cert(f"test {name}", key))
    server_key, client_key = _key(), _key()
    issuer = (ca_cert.subject, ca_key)
    return Pki(
        ca,
        pairs["idp"],
        pairs["rogue"],
        pairs["sp"],
        pairs["sp2"],
        _write(directory, "tls-server", server_key, _cert(HOST, server_key, issuer, server=True)),
        _write(directory, "tls-client", client_key, _cert("sp", client_key, issuer, client=True)),
    )


@dataclass
class Idp:
    """The IdP's state and knobs; ``trust(sp_metadata)`` before the first login."""

    pki: Pki
    base: str
    ars_base: str
    bsn: str = BSN
    class_ref: str = MIDDEN
    cancel: bool = False
    rogue_signature: bool = False
    audience: str | None = None
    lifetime_minutes: int = 5
    age_seconds: int = 0
    """Issue the assertion as if this long ago (its whole time window moves back)."""
    keep_artifacts: bool = False
    """Answer an artifact more than once (a broken IdP), so the SP's own check shows."""
    binding: str = BINDING_HTTP_ARTIFACT
    requests: list[Any] = field(default_factory=list)
    """Parsed AuthnRequests, for the tests to inspect."""
    logouts: int = 0
    logout_name_ids: list[str] = field(default_factory=list)
    resolves: int = 0
    last_response: str = ""
    """The last signed Response XML (before the artifact), for replay and tamper tests."""
    _server: Server | None = None
    _rogue: Server | None = None
    _artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def entity_id(self) -> str:
        return f"{self.base}/idp"

    def _config(self, pair: Pair, sp_metadata: tuple[str, ...]) -> IdPConfig:
        config = IdPConfig()
        config.load(
            {
                "entityid": self.entity_id,
                "xmlsec_binary": shutil.which("xmlsec1"),
                "key_file": str(pair.key),
                "cert_file": str(pair.cert),
                "metadata": {"inline": list(sp_metadata)} if sp_metadata else {},
                "signing_algorithm": SIG_RSA_SHA256,
                "digest_algorithm": DIGEST_SHA256,
                "service": {
                    "idp": {
                        "endpoints": {
                            "single_sign_on_service": [(f"{self.base}/sso", BINDING_HTTP_REDIRECT)],
                            "single_logout_service": [(f"{self.base}/slo", BINDING_HTTP_REDIRECT)],
                            "artifact_resolution_service": [(f"{self.ars_base}/ars", BINDING_SOAP)],
                        },
                        "want_authn_requests_signed": True,
                        "policy": {"default": {"lifetime": {"minutes": 5}}},
                    }
                },
            }
        )
        return config

    def metadata(self) -> str:
        xml: str | bytes = create_metadata_string(None, config=self._config(self.pki.idp, ()))
        return xml.decode() if isinstance(xml, bytes) else xml

    def trust(self, *sp_metadata: str) -> None:
        """Know these service providers (their metadata), and only these."""
        self._server = Server(config=self._config(self.pki.idp, sp_metadata))
        self._rogue = Server(config=self._config(self.pki.rogue, sp_metadata))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/metadata", self.serve_metadata),
                Route("/sso", self.sso),
                Route("/slo", self.slo),
            ]
        )

    def ars_app(self) -> Starlette:
        return Starlette(routes=[Route("/ars", self.ars, methods=["POST"])])

    async def serve_metadata(self, request: Request) -> Response:
        return Response(self.metadata(), media_type="application/samlmetadata+xml")

    def sso(self, request: Request) -> Response:
        """Sync: pysaml2 and xmlsec1 block, so Starlette runs this in its thread pool."""
        assert self._server is not None and self._rogue is not None, "call trust() first"
        q = request.query_params
        parsed = self._server.parse_authn_request(q["SAMLRequest"], **_redirect(q))
        authn = parsed.message
        self.requests.append(authn)
        server = self._rogue if self.rogue_signature else self._server
        args = server.response_args(authn, [self.binding])
        if self.cancel:
            response = server.create_error_response(
                authn.id, args["destination"], (STATUS_AUTHN_FAILED, "cancelled")
            )
        else:
            policy = Policy(
                {"default": {"lifetime": {"minutes": self.lifetime_minutes}}}, mds=server.metadata
            )
            response = server.create_authn_response(
                {},
                authn.id,
                args["destination"],
                self.audience or authn.issuer.text,
                name_id=NameID(format=NAMEID_FORMAT_UNSPECIFIED, text=f"s00000000:{self.bsn}"),
                authn={"class_ref": self.class_ref, "authn_auth": self.entity_id},
                release_policy=policy,
                sign_assertion=True,
                sign_response=False,
                sign_alg=SIG_RSA_SHA256,
                digest_alg=DIGEST_SHA256,
            )
        self.last_response = str(response)
        if self.age_seconds and not self.cancel:
            self.last_response = self._backdated(server, self.last_response)
        relay = q.get("RelayState", "")
        if self.binding == BINDING_HTTP_POST:
            encoded = base64.b64encode(self.last_response.encode()).decode()
            return HTMLResponse(
                f'<form method="post" action="{html.escape(args["destination"])}">'
                f'<input type="hidden" name="SAMLResponse" value="{encoded}">'
                f'<input type="hidden" name="RelayState" value="{html.escape(relay)}">'
                "</form>"
            )
        artifact = server.use_artifact(response_from_string(self.last_response), 1)
        self._artifacts[artifact] = self.last_response
        query = urlencode({"SAMLart": artifact, "RelayState": relay})
        return RedirectResponse(f"{args['destination']}?{query}", status_code=302)

    def _backdated(self, server: Server, xml: str) -> str:
        """The Response with its assertion's times moved back, signed again."""
        parsed = response_from_string(xml)
        assertion = parsed.assertion[0]
        then = time.time() - self.age_seconds
        stamp = instant(time_stamp=then)
        assertion.issue_instant = parsed.issue_instant = stamp
        assertion.conditions.not_before = stamp
        assertion.conditions.not_on_or_after = instant(time_stamp=then + 300)
        for confirmation in assertion.subject.subject_confirmation:
            confirmation.subject_confirmation_data.not_on_or_after = instant(time_stamp=then + 300)
        assertion.authn_statement[0].authn_instant = stamp
        assertion.signature = pre_signature_part(
            assertion.id, server.sec.my_cert, 1, sign_alg=SIG_RSA_SHA256, digest_alg=DIGEST_SHA256
        )
        signed: str = server.sec.sign_statement(
            str(parsed), "urn:oasis:names:tc:SAML:2.0:assertion:Assertion", node_id=assertion.id
        )
        return signed

    async def ars(self, request: Request) -> Response:
        body = (await request.body()).decode()
        return await anyio.to_thread.run_sync(self._resolve, body)

    def _resolve(self, body: str) -> Response:
        assert self._server is not None
        self.resolves += 1
        resolve = self._server.parse_artifact_resolve(body)
        artifact = resolve.artifact.text
        known = self._artifacts.get(artifact)
        if known is not None and not self.keep_artifacts:
            del self._artifacts[artifact]
        if known is None:
            return Response(status_code=500)  # unknown (or spent) artifact
        # The resolved message is the signed Response, as issued.
        self._server.artifact[artifact] = response_from_string(known)
        answer = self._server.create_artifact_response(resolve, artifact)
        return Response(make_soap_enveloped_saml_thingy(answer), media_type="text/xml")

    async def slo(self, request: Request) -> Response:
        assert self._server is not None
        q = request.query_params
        request_ = self._server.parse_logout_request(q["SAMLRequest"], **_redirect(q))
        assert request_ is not None
        self.logouts += 1
        self.logout_name_ids.append(request_.message.name_id.text)
        sp = request_.message.issuer.text
        back = self._server.metadata.single_logout_service(sp, BINDING_HTTP_REDIRECT, "spsso")
        query = urlencode({"RelayState": q.get("RelayState", "")})
        return RedirectResponse(f"{back[0]['location']}?{query}", status_code=302)


def _redirect(q: Any) -> dict[str, Any]:
    """How pysaml2 parses (and verifies) a signed request of the HTTP-Redirect binding."""
    return {
        "binding": BINDING_HTTP_REDIRECT,
        "relay_state": q.get("RelayState"),
        "sigalg": q.get("SigAlg"),
        "signature": q.get("Signature"),
    }


@contextmanager
def running_idp(pki: Pki, *, binding: str = BINDING_HTTP_ARTIFACT) -> Iterator[Idp]:
    """The IdP on two real servers (front channel http, back channel https + client cert)."""
    front, back = free_port(), free_port()
    idp = Idp(pki, f"http://{HOST}:{front}", f"https://{HOST}:{back}", binding=binding)
    with ExitStack() as stack:
        stack.enter_context(serve(lambda _base: idp.app(), port=front))
        stack.enter_context(
            serve(
                lambda _base: idp.ars_app(),
                port=back,
                ssl_certfile=str(pki.tls_server.cert),
                ssl_keyfile=str(pki.tls_server.key),
                ssl_ca_certs=str(pki.ca),
                ssl_cert_reqs=ssl.CERT_REQUIRED,
            )
        )
        yield idp


def form_fields(page: str) -> dict[str, str]:
    """The hidden inputs of an auto-post form (the POST binding)."""
    return dict(re.findall(r'name="(\w+)" value="([^"]*)"', page))


__all__ = ["BSN", "MIDDEN", "Idp", "Pki", "form_fields", "make_pki", "running_idp"]
