"""Our SAML 2.0 service provider for DigiD, on pysaml2 (which signs and verifies with the
``xmlsec1`` binary, Debian package ``xmlsec1``).

The flow (Logius, DigiD SAML koppelvlak): a signed ``AuthnRequest`` over HTTP-Redirect with a
``RequestedAuthnContext`` (the minimum level, comparison ``minimum``); the IdP answers with an
artifact (HTTP-Artifact) that we resolve over SOAP on the back channel (``ArtifactResolve``,
mutual TLS), or, through a broker, with a POSTed ``Response``. The assertion must be signed,
for us (audience), in time, in response to our request, and at least at the minimum level.

pysaml2 is synchronous and starts an ``xmlsec1`` process per signature, so every call into it
runs in a worker thread. Only this module imports pysaml2; its errors become
:class:`LoginRefusedError` with a reason here, and its log lines (which quote messages) are
switched off in ``idcontact.logs``.
"""

from __future__ import annotations

import base64
import calendar
import functools
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
from saml2 import (
    BINDING_HTTP_ARTIFACT,
    BINDING_HTTP_POST,
    BINDING_HTTP_REDIRECT,
    BINDING_SOAP,
    SAMLError,
)
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import create_metadata_string
from saml2.response import (
    StatusAuthnFailed,
    StatusError,
    StatusRequestDenied,
    UnsolicitedResponse,
)
from saml2.s_utils import sid
from saml2.saml import AuthnContextClassRef, NameID
from saml2.samlp import RequestedAuthnContext
from saml2.sigver import CryptoBackendXmlSec1, SignatureError, SigverError
from saml2.time_util import str_to_time
from saml2.validate import ResponseLifetimeExceed, ToEarly
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

from idcontact.digid.levels import Level, LoginRefusedError, achieved, bsn_of
from idcontact.digid.xmlguard import check_xml

Binding = Literal["artifact", "post"]
BINDINGS = {"artifact": BINDING_HTTP_ARTIFACT, "post": BINDING_HTTP_POST}
MAX_ARTIFACT_CHARS = 200


@dataclass(frozen=True)
class SpSettings:
    """One municipality's service provider (its own entity id, key and certificate)."""

    entity_id: str
    acs_url: str
    slo_url: str
    certificate_file: Path
    key_file: Path
    response_binding: Binding
    minimum: Level
    want_response_signed: bool = False
    clock_skew: int = 60
    """Seconds of clock difference accepted on the assertion's time window."""
    metadata_valid_hours: int = 24 * 14


@dataclass(frozen=True)
class Login:
    """A verified DigiD login: only what we need, never the SAML message."""

    bsn: str
    level: Level
    idp: str
    assertion_id: str
    not_on_or_after: float
    name_id: str
    session_index: str | None


class _XmlSec1(CryptoBackendXmlSec1):  # type: ignore[misc]
    """pysaml2's xmlsec1 backend, asking the binary for its version once rather than before
    every signature and every check (one process start less each time)."""

    @functools.cached_property
    def version(self) -> str:
        version: str = super().version
        return version


class ServiceProvider:
    """pysaml2's client for one SP and one IdP (from its metadata XML)."""

    def __init__(self, sp: SpSettings, idp_metadata: str) -> None:
        check_xml(idp_metadata.encode())
        self.settings = sp
        xmlsec = shutil.which("xmlsec1")
        if xmlsec is None:
            raise SAMLError("xmlsec1 is not installed (Debian package xmlsec1)")
        config = SPConfig()
        config.load(
            {
                "entityid": sp.entity_id,
                "xmlsec_binary": xmlsec,
                "key_file": str(sp.key_file),
                "cert_file": str(sp.certificate_file),
                "encryption_keypairs": [
                    {"key_file": str(sp.key_file), "cert_file": str(sp.certificate_file)}
                ],
                "metadata": {"inline": [idp_metadata]},
                "signing_algorithm": SIG_RSA_SHA256,
                "digest_algorithm": DIGEST_SHA256,
                "accepted_time_diff": sp.clock_skew,
                "service": {
                    "sp": {
                        "endpoints": {
                            "assertion_consumer_service": [
                                (sp.acs_url, BINDINGS[sp.response_binding])
                            ],
                            "single_logout_service": [(sp.slo_url, BINDING_HTTP_REDIRECT)],
                        },
                        "authn_requests_signed": True,
                        "logout_requests_signed": True,
                        "want_assertions_signed": True,
                        "want_response_signed": sp.want_response_signed,
                        "allow_unsolicited": False,
                    }
                },
            }
        )
        self._config = config
        self._client = Saml2Client(config)
        crypto = self._client.sec.crypto
        if isinstance(crypto, CryptoBackendXmlSec1):
            self._client.sec.crypto = _XmlSec1(
                crypto.xmlsec, delete_tmpfiles=crypto.delete_tmpfiles
            )
        idps = list(self._client.metadata.identity_providers())
        if len(idps) != 1:
            raise SAMLError("the IdP metadata must describe exactly one identity provider")
        self.idp: str = idps[0]

    # -- outgoing -----------------------------------------------------------------------

    def metadata(self) -> str:
        """Our signed SP metadata, for the IdP or broker."""
        xml: str | bytes = create_metadata_string(
            None,
            config=self._config,
            valid=self.settings.metadata_valid_hours,
            sign=True,
            sign_alg=SIG_RSA_SHA256,
            digest_alg=DIGEST_SHA256,
        )
        return xml.decode() if isinstance(xml, bytes) else xml

    def login(self, relay_state: str) -> tuple[str, str]:
        """A signed AuthnRequest over HTTP-Redirect: (its id, the IdP URL to send the browser)."""
        context = RequestedAuthnContext(
            authn_context_class_ref=[AuthnContextClassRef(text=self.settings.minimum.class_ref)],
            comparison="minimum",
        )
        request_id, info = self._client.prepare_for_authenticate(
            entityid=self.idp,
            relay_state=relay_state,
            binding=BINDING_HTTP_REDIRECT,
            response_binding=BINDINGS[self.settings.response_binding],
            sign=True,
            sigalg=SIG_RSA_SHA256,
            digest_alg=DIGEST_SHA256,
            requested_authn_context=context,
        )
        return str(request_id), dict(info["headers"])["Location"]

    def artifact_resolve(self, artifact: str) -> tuple[str, str]:
        """The signed SOAP ``ArtifactResolve`` for ``artifact``: (where to post it, the body)."""
        if not artifact or len(artifact) > MAX_ARTIFACT_CHARS:
            raise LoginRefusedError("malformed", "The SAML artifact is not valid")
        try:
            destination = self._client.artifact2destination(artifact, "idpsso")
        except (ValueError, KeyError, TypeError):
            raise LoginRefusedError("malformed", "The SAML artifact is not valid") from None
        if not destination:
            raise LoginRefusedError("malformed", "The SAML artifact is not from our IdP")
        _id, message = self._client.create_artifact_resolve(
            artifact,
            destination,
            sid(),
            sign=True,
            sign_alg=SIG_RSA_SHA256,
            digest_alg=DIGEST_SHA256,
        )
        return str(destination), soap_envelope(str(message))

    def logout(self, name_id: str, session_index: str | None, relay_state: str) -> str | None:
        """Where to send the browser to end the IdP session (a signed LogoutRequest over
        HTTP-Redirect), or None when the IdP offers no single logout that way."""
        try:
            destination = self._client.metadata.single_logout_service(
                self.idp, BINDING_HTTP_REDIRECT, "idpsso"
            )
        except SAMLError:
            return None
        if not destination:
            return None
        location = destination[0]["location"]
        _id, request = self._client.create_logout_request(
            location,
            self.idp,
            name_id=NameID(text=name_id),
            session_indexes=[session_index] if session_index else None,
            sign=False,  # the Redirect binding signs the query string instead
        )
        info = self._client.apply_binding(
            BINDING_HTTP_REDIRECT,
            str(request),
            location,
            relay_state,
            sign=True,
            sigalg=SIG_RSA_SHA256,
        )
        return str(dict(info["headers"])["Location"])

    # -- incoming -----------------------------------------------------------------------

    def artifact_response(self, soap: bytes) -> str:
        """The ``Response`` inside a SOAP ``ArtifactResponse``, base64 as pysaml2 wants it."""
        check_xml(soap)
        try:
            inner = self._client.parse_artifact_resolve_response(soap.decode())
        except (SigverError, SignatureError):
            raise LoginRefusedError(
                "signature", "The SAML message is not signed by the IdP"
            ) from None
        except (SAMLError, ValueError, IndexError, AttributeError, TypeError):
            raise LoginRefusedError("invalid", "The IdP's artifact response is not valid") from None
        if inner is None:
            raise LoginRefusedError("invalid", "The IdP's artifact response is empty")
        return base64.b64encode(str(inner).encode()).decode()

    def response(self, encoded: str, binding: Binding, request_id: str) -> Login:
        """Verify a ``Response`` (base64) answering ``request_id``; return the login."""
        try:
            xml = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise LoginRefusedError("malformed", "The SAML message is not valid base64") from None
        check_xml(xml)
        try:
            parsed = self._client.parse_authn_request_response(
                encoded, BINDINGS[binding], outstanding={request_id: "digid"}
            )
        except (StatusAuthnFailed, StatusRequestDenied):
            raise LoginRefusedError("cancelled", "The login was cancelled") from None
        except StatusError:
            raise LoginRefusedError("idp-error", "DigiD could not complete the login") from None
        except UnsolicitedResponse:
            raise LoginRefusedError("unsolicited", "The login answers no request of ours") from None
        except (SignatureError, SigverError):
            raise LoginRefusedError(
                "signature", "The SAML message is not signed by the IdP"
            ) from None
        except (ResponseLifetimeExceed, ToEarly):
            raise LoginRefusedError(
                "expired", "The SAML assertion is outside its time window"
            ) from None
        except Exception as exc:  # pysaml2 raises bare exceptions for several checks
            raise _classify(exc) from None
        if parsed is None or parsed.assertion is None:
            raise LoginRefusedError("invalid", "The SAML response holds no assertion")
        try:
            return self._login(parsed)
        finally:
            if parsed.name_id is not None:
                # pysaml2 caches every subject's session in memory: forget it at once.
                self._client.users.remove_person(parsed.name_id)

    def _login(self, parsed: Any) -> Login:
        refs = [str(ref) for ref, *_ in parsed.authn_info()]
        level = achieved(refs, self.settings.minimum)
        name_id = parsed.name_id.text if parsed.name_id is not None else ""
        bsn = bsn_of(str(name_id or ""))
        conditions = parsed.assertion.conditions
        not_on_or_after = (
            float(_epoch(conditions.not_on_or_after))
            if conditions is not None and conditions.not_on_or_after
            else 0.0
        )
        statements = parsed.assertion.authn_statement or []
        session_index = statements[0].session_index if statements else None
        return Login(
            bsn=bsn,
            level=level,
            idp=str(parsed.issuer() or self.idp),
            assertion_id=str(parsed.assertion.id),
            not_on_or_after=not_on_or_after,
            name_id=str(name_id),
            session_index=str(session_index) if session_index else None,
        )


def soap_envelope(signed: str) -> str:
    """``signed`` in a SOAP body, as is (re-serialising it would break its signature)."""
    body = re.sub(r"^\s*<\?xml[^>]*\?>", "", signed)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/">'
        f"<soap-env:Body>{body}</soap-env:Body></soap-env:Envelope>"
    )


def _epoch(stamp: str) -> int:
    return calendar.timegm(str_to_time(stamp))


def _classify(exc: Exception) -> LoginRefusedError:
    """pysaml2's bare exceptions, by what they say (their text is never shown or logged)."""
    text = str(exc)
    if "AudienceRestriction" in text:
        return LoginRefusedError("audience", "The SAML assertion is meant for someone else")
    if "Signature" in text or "signature" in text:
        return LoginRefusedError("signature", "The SAML message is not signed by the IdP")
    return LoginRefusedError("invalid", "The SAML response is not valid")


class BackChannel:
    """The SOAP back channel to the IdP's artifact resolution service (mutual TLS when a
    client certificate is configured)."""

    def __init__(self, http: httpx.AsyncClient, timeout: float) -> None:
        self._http = http
        self._timeout = timeout

    async def post(self, url: str, body: str) -> bytes:
        try:
            response = await self._http.post(
                url,
                content=body.encode(),
                headers={
                    "Content-Type": "text/xml; charset=utf-8",
                    "SOAPAction": '"http://www.oasis-open.org/committees/security"',
                },
                timeout=self._timeout,
            )
        except httpx.HTTPError:
            raise LoginRefusedError("unreachable", "DigiD's back channel is unreachable") from None
        if response.status_code != 200:
            raise LoginRefusedError("unreachable", "DigiD's back channel refused the request")
        return response.content


async def in_thread(function: Any, *args: Any) -> Any:
    """Run a pysaml2 call (xmlsec1 processes, blocking) in a worker thread."""
    return await anyio.to_thread.run_sync(function, *args)


__all__ = [
    "BINDING_SOAP",
    "BackChannel",
    "Login",
    "ServiceProvider",
    "SpSettings",
    "in_thread",
]
