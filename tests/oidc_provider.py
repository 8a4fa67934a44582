"""A small OpenID Connect provider for the tests, run for real on 127.0.0.1 (``tests.live``).

Discovery, ``/authorize`` (approves the user the test chose, at once, like a provider with an
existing session), ``/token`` (HTTP Basic client authentication, PKCE S256, single-use codes
bound to client and redirect URI), ``/jwks``. ID tokens are RS256, signed with joserfc. Knobs
let a test make the provider misbehave (a wrong audience, nonce or issuer, an expired or
foreign-signed token, a denial) the way a broken or hostile provider would.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CLIENT_ID = "idcontact-console"
CLIENT_SECRET = "sso-client-secret-CANARY-4f1d9b7e2a"


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    claims: dict[str, Any]
    used: bool = False


@dataclass
class Provider:
    """The provider's state; the test sets ``user`` (the claims of whoever logs in next)."""

    redirect_uris: set[str] = field(default_factory=set)
    user: dict[str, Any] = field(default_factory=dict)
    deny: str | None = None
    """An OAuth error code to answer ``/authorize`` with instead of a code."""
    id_token_changes: dict[str, Any] = field(default_factory=dict)
    """Claims overridden in (or, with value ``None``, removed from) the next ID tokens."""
    interactive: bool = False
    """Show a page with a button first (as a real provider's login page), so the way back is
    a navigation started on the provider's site."""
    foreign_signature: bool = False
    """Sign with a key that is not in the JWKS, under the published key's kid."""
    keys: list[RSAKey] = field(default_factory=list)
    grants: dict[str, Grant] = field(default_factory=dict)
    token_requests: int = 0
    jwks_requests: int = 0
    issuer: str = ""

    def __post_init__(self) -> None:
        if not self.keys:
            self.rotate()

    def rotate(self) -> None:
        """A new signing key with a new kid; the old one is dropped from the JWKS."""
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(4)})]

    def app(self, base: str) -> Starlette:
        self.issuer = base
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/authorize", self.authorize, methods=["GET", "POST"]),
                Route("/token", self.token, methods=["POST"]),
                Route("/jwks", self.jwks),
            ]
        )

    async def discovery(self, request: Request) -> Response:
        base = self.issuer
        return JSONResponse(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "jwks_uri": f"{base}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "scopes_supported": ["openid", "profile"],
            }
        )

    async def jwks(self, request: Request) -> Response:
        self.jwks_requests += 1
        return JSONResponse(KeySet(list(self.keys)).as_dict(private=False))

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if request.method == "POST":
            q = await request.form()  # type: ignore[assignment]
        elif self.interactive:
            fields = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                for k, v in q.items()
            )
            return HTMLResponse(
                '<!doctype html><html lang="en"><title>Test provider</title><main>'
                f'<form method="post" action="/authorize">{fields}'
                "<button>Approve</button></form></main></html>"
            )
        redirect_uri = str(q.get("redirect_uri", ""))
        if q.get("client_id") != CLIENT_ID or redirect_uri not in self.redirect_uris:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if "openid" not in str(q.get("scope", "")).split() or not q.get("nonce"):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        answer: dict[str, str] = {"state": str(q.get("state", ""))}
        if self.deny:
            answer |= {"error": self.deny, "error_description": "User said no CANARY-DESC"}
        else:
            code = secrets.token_urlsafe(24)
            self.grants[code] = Grant(
                CLIENT_ID, redirect_uri, str(q["code_challenge"]), str(q["nonce"]), dict(self.user)
            )
            answer["code"] = code
        return RedirectResponse(f"{redirect_uri}?{urlencode(answer)}", status_code=302)

    async def token(self, request: Request) -> Response:
        self.token_requests += 1
        if request.headers.get("authorization") != "Basic " + base64.b64encode(
            f"{CLIENT_ID}:{CLIENT_SECRET}".encode()
        ).decode("ascii"):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        form = await request.form()
        grant = self.grants.get(str(form.get("code", "")))
        if form.get("grant_type") != "authorization_code" or grant is None or grant.used:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        grant.used = True  # single use, even when the rest of the request is wrong
        verifier = str(form.get("code_verifier", ""))
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if form.get("redirect_uri") != grant.redirect_uri or challenge != grant.challenge:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            **grant.claims,
        }
        for name, value in self.id_token_changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        key = self.keys[0]
        if self.foreign_signature:
            key = RSAKey.generate_key(2048, parameters={"kid": key.kid})
        id_token = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            },
            headers={"Cache-Control": "no-store"},
        )
