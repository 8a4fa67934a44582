"""Agent login through a tenant's identity provider: OpenID Connect, authorization code + PKCE.

No server-side state between the redirect and the callback (several instances may serve the
two): the ``state``, ``nonce`` and PKCE verifier are sealed into a short-lived cookie of the
browser that started the login, and the callback accepts only that browser's ``state``. The
ID token is checked here (signature against the provider's JWKS, ``iss``, ``aud``/``azp``,
``exp``, ``iat``, ``nonce``, optionally ``acr``); the groups it names decide the membership.
Protocol details come from authlib (authorization URL, PKCE challenge, discovery metadata
checks) and joserfc (JWS and claims); the HTTP calls go through the instance's httpx client.

Nothing a provider sends (tokens, codes, names, error descriptions) is logged or echoed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from idcontact.agents.directory import ROLES, Membership
from idcontact.errors import IdContactError
from idcontact.sealing import Sealer
from idcontact.settings import AgentSso

log = logging.getLogger(__name__)

SEAL = "agent-sso"
STATE_SECONDS = 600
"""How long a started login may take at the provider (the sealed cookie's lifetime)."""
METADATA_SECONDS = 3600
MAX_DOCUMENT_BYTES = 256 * 1024


class SsoError(IdContactError):
    status = 400
    slug = "sso-failed"
    title = "Logging in through the identity provider did not succeed; try again"


class SsoRefusedError(IdContactError):
    status = 403
    slug = "sso-refused"
    title = "The identity provider did not let you in; ask your administrator for access"


class SsoProviderError(IdContactError):
    status = 502
    slug = "sso-provider"
    title = "The identity provider cannot be reached now; try again later"


@dataclass(frozen=True)
class SsoIdentity:
    """Who the provider vouched for: a stable key (issuer + subject), a name, the groups."""

    key: str
    name: str
    groups: tuple[str, ...]


def subject_key(issuer: str, subject: str) -> str:
    """A stable, opaque account key: the same person at the same provider, always."""
    return hashlib.sha256(f"{issuer}\0{subject}".encode()).hexdigest()[:32]


def map_groups(tenant: str, config: AgentSso, groups: tuple[str, ...]) -> Membership | None:
    """The membership the groups give in this tenant: the highest role among the mapped
    groups and the queues of all of them; ``None`` when no group is mapped."""
    matched = [g for g in config.groups if g.group in groups]
    if not matched:
        return None
    role = max((g.role for g in matched), key=ROLES.index)
    queues: list[str] = []
    for g in matched:
        queues += [q for q in g.queues if q not in queues]
    return Membership(tenant, role, ("*",) if "*" in queues else tuple(queues))


@dataclass
class _Cache:
    metadata: dict[str, Any] | None = None
    metadata_at: float = 0.0
    keys: KeySet | None = None


class ProviderConfig(Protocol):
    """What a relying party needs to know of its provider (``AgentSso`` has it, and so has
    the DigiD plugin's OIDC broker setting)."""

    @property
    def issuer(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def scopes(self) -> tuple[str, ...]: ...
    @property
    def require_acr(self) -> tuple[str, ...]: ...
    @property
    def allow_http(self) -> bool: ...
    @property
    def algorithms(self) -> tuple[str, ...]: ...
    def secret(self) -> str: ...


class OidcRelyingParty:
    """One provider: discovery and JWKS (cached), authorization URL, code exchange, ID token
    validation. ``seal`` names the purpose of the sealed browser state."""

    seal = SEAL

    def __init__(
        self,
        config: ProviderConfig,
        http: httpx.AsyncClient,
        sealer: Sealer,
        clock: Callable[[], float] = time.time,
        *,
        leeway: int = 5,
        seal: str | None = None,
    ) -> None:
        self.provider = config
        if seal is not None:
            self.seal = seal
        self._http = http
        self._sealer = sealer
        self._clock = clock
        self._leeway = leeway
        self._cache = _Cache()
        config.secret()  # fail at start-up, not at the first login, when the file is missing

    # -- provider documents ---------------------------------------------------------------

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            log.warning("SSO %s: provider not reachable (%s)", what, type(exc).__name__)
            raise SsoProviderError() from None
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
            log.warning("SSO %s: provider answered HTTP %s", what, response.status_code)
            raise SsoProviderError()
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            log.warning("SSO %s: provider sent no JSON object", what)
            raise SsoProviderError()
        return data

    async def metadata(self) -> dict[str, Any]:
        now = self._clock()
        cached = self._cache.metadata
        if cached is not None and now - self._cache.metadata_at < METADATA_SECONDS:
            return cached
        issuer = self.provider.issuer
        doc = await self._get_json(
            issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery"
        )
        try:
            OpenIDProviderMetadata(doc).validate()
        except Exception as exc:  # authlib raises ValueError and its own error types
            log.warning("SSO discovery: invalid provider metadata (%s)", type(exc).__name__)
            raise SsoProviderError() from None
        # OIDC Discovery §4.3: the document must name exactly the issuer we asked.
        if doc.get("issuer") != issuer or "code" not in doc.get("response_types_supported", []):
            log.warning("SSO discovery: issuer mismatch or no code flow")
            raise SsoProviderError()
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not _allowed_url(str(doc.get(name, "")), self.provider.allow_http):
                log.warning("SSO discovery: %s is not an https URL", name)
                raise SsoProviderError()
        self._cache.metadata, self._cache.metadata_at = doc, now
        return doc

    async def _keys(self, kid: str | None) -> KeySet:
        """The provider's keys; fetched again when a token names a key we do not know yet
        (rotation). Tokens come only from our own call to the token endpoint, so nobody but
        the provider can make us fetch."""
        keys = self._cache.keys
        if keys is not None and (kid is None or any(k.kid == kid for k in keys.keys)):
            return keys
        doc = await self._get_json(str((await self.metadata())["jwks_uri"]), "jwks")
        try:
            fresh = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError):
            log.warning("SSO jwks: the provider's key set cannot be read")
            raise SsoProviderError() from None
        self._cache.keys = fresh
        return fresh

    # -- the flow -------------------------------------------------------------------------

    async def begin(
        self, redirect_uri: str, popup: bool, then: str, **extra: str
    ) -> tuple[str, str]:
        """The provider's authorization URL and the sealed state for this browser's cookie;
        ``then``: where the browser goes after the login (a console path, checked); ``extra``:
        more request parameters (``acr_values``)."""
        doc = await self.metadata()
        state = secrets.token_urlsafe(24)
        nonce = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)  # 64 characters (RFC 7636 §4.1: 43 to 128)
        url = prepare_grant_uri(
            doc["authorization_endpoint"],
            self.provider.client_id,
            "code",
            redirect_uri=redirect_uri,
            scope=" ".join(self.provider.scopes),
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
            **extra,
        )
        sealed = self._sealer.seal(
            self.seal,
            {"s": state, "n": nonce, "v": verifier, "p": popup, "r": redirect_uri, "u": then},
            STATE_SECONDS,
        )
        return str(url), sealed

    def pending(self, sealed: str) -> dict[str, object]:
        """The browser's sealed state, or SsoError (missing, tampered with, expired)."""
        if not sealed:
            raise SsoError("This login was not started in this browser (or took too long)")
        try:
            return self._sealer.unseal(self.seal, sealed)
        except IdContactError:
            raise SsoError(
                "This login was not started in this browser (or took too long)"
            ) from None

    async def verified_claims(
        self, params: Mapping[str, str], pending: Mapping[str, object], redirect_uri: str
    ) -> dict[str, Any]:
        """Check the callback against the browser's state, redeem the code, validate the ID
        token; returns its claims. Raises SsoError/SsoRefusedError/SsoProviderError."""
        state = params.get("state", "")
        if pending.get("r") != redirect_uri or not hmac.compare_digest(
            str(pending.get("s", "")).encode(), state.encode()
        ):
            raise SsoError("The answer of the identity provider does not belong to this login")
        error = params.get("error")
        if error is not None:
            # The provider's own words are not shown or logged: they may name the user.
            log.info("SSO: the provider refused the login (%s)", _safe_code(error))
            if error in ("access_denied", "unauthorized_client", "interaction_required"):
                raise SsoRefusedError("The identity provider did not let you log in")
            raise SsoError("The identity provider could not log you in")
        code = params.get("code", "")
        if not code or len(code) > 2048:
            raise SsoError("The identity provider sent no authorization code")
        id_token = await self._redeem(code, str(pending.get("v", "")), redirect_uri)
        return await self._validate(id_token, str(pending.get("n", "")))

    async def _redeem(self, code: str, verifier: str, redirect_uri: str) -> str:
        doc = await self.metadata()
        # RFC 6749 §2.3.1: client id and secret are form-encoded before HTTP Basic.
        auth = httpx.BasicAuth(
            quote(self.provider.client_id, safe=""), quote(self.provider.secret(), safe="")
        )
        body = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        try:
            response = await self._http.post(
                str(doc["token_endpoint"]),
                data=body,
                auth=auth,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            log.warning("SSO token: provider not reachable (%s)", type(exc).__name__)
            raise SsoProviderError() from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            log.warning("SSO token: HTTP %s without a JSON object", response.status_code)
            raise SsoProviderError()
        if response.status_code != 200:
            # invalid_grant: a spent, expired or foreign code, or a wrong PKCE verifier.
            log.info("SSO token: refused (%s)", _safe_code(str(data.get("error", ""))))
            raise SsoError("The identity provider did not accept this login (again)")
        id_token = data.get("id_token")
        if not isinstance(id_token, str) or not id_token or len(id_token) > 64 * 1024:
            log.warning("SSO token: no ID token in the answer")
            raise SsoError("The identity provider sent no ID token")
        return id_token

    async def _validate(self, id_token: str, nonce: str) -> dict[str, Any]:
        config = self.provider
        try:
            header = json.loads(_b64(id_token.split(".", 1)[0]))
            kid = header.get("kid") if isinstance(header, dict) else None
            token = jwt.decode(
                id_token,
                await self._keys(kid if isinstance(kid, str) else None),
                algorithms=list(config.algorithms),
            )
        except (JoseError, ValueError, IndexError) as exc:
            log.warning("SSO: ID token rejected (%s)", type(exc).__name__)
            raise SsoError("The identity provider's answer could not be verified") from None
        claims = dict(token.claims)
        checks: dict[str, Any] = {
            "iss": {"essential": True, "value": config.issuer},
            "sub": {"essential": True},
            "exp": {"essential": True},
            "iat": {"essential": True},
            "aud": {"essential": True, "value": config.client_id},
            "nonce": {"essential": True, "value": nonce},
        }
        if config.require_acr:
            checks["acr"] = {"essential": True, "values": list(config.require_acr)}
        try:
            jwt.JWTClaimsRegistry(
                now=lambda: int(self._clock()), leeway=self._leeway, **checks
            ).validate(claims)
        except JoseError as exc:
            # The claim's name (an error class and claim key), never its value.
            log.warning("SSO: ID token claims rejected (%s)", type(exc).__name__)
            if getattr(exc, "claim", None) == "acr":
                raise SsoRefusedError("Log in with a stronger method (second factor)") from None
            raise SsoError("The identity provider's answer could not be verified") from None
        iat = claims["iat"]
        if not isinstance(iat, int | float) or iat > self._clock() + self._leeway:
            raise SsoError("The identity provider's answer could not be verified")
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != config.client_id:
            # OIDC Core §3.1.3.7: several audiences need azp naming us.
            raise SsoError("The identity provider's answer could not be verified")
        if not isinstance(claims["sub"], str) or not 0 < len(claims["sub"]) <= 255:
            raise SsoError("The identity provider's answer could not be verified")
        return claims


class OidcClient(OidcRelyingParty):
    """An agent login at the tenant's provider: the groups in the ID token decide the
    membership."""

    def __init__(
        self,
        config: AgentSso,
        http: httpx.AsyncClient,
        sealer: Sealer,
        clock: Callable[[], float] = time.time,
        *,
        leeway: int = 5,
    ) -> None:
        super().__init__(config, http, sealer, clock, leeway=leeway)
        self.config = config

    async def finish(
        self, params: Mapping[str, str], pending: Mapping[str, object], redirect_uri: str
    ) -> SsoIdentity:
        """Who logged in (see ``verified_claims``)."""
        claims = await self.verified_claims(params, pending, redirect_uri)
        raw_groups = claims.get(self.config.groups_claim, [])
        if isinstance(raw_groups, str):
            raw_groups = [raw_groups]
        groups = (
            tuple(g for g in raw_groups if isinstance(g, str))
            if isinstance(raw_groups, list)
            else ()
        )
        name = claims.get(self.config.name_claim)
        name = name.strip()[:200] if isinstance(name, str) and name.strip() else ""
        return SsoIdentity(subject_key(self.config.issuer, str(claims["sub"])), name, groups)


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _safe_code(code: str) -> str:
    """An OAuth error code is ``[a-z_]``; anything else is not repeated."""
    return code if code.replace("_", "").isalpha() and len(code) <= 40 else "unrecognised"


def _allowed_url(url: str, allow_http: bool) -> bool:
    if url.startswith("https://"):
        return True
    loopback = ("http://127.0.0.1:", "http://127.0.0.1/", "http://localhost:", "http://[::1]:")
    return allow_http and url.startswith(loopback)
