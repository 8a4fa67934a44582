"""The ``openid4vp`` auth plugin: the resident presents SD-JWT VCs from an EU-style wallet (Yivi
speaks it too) over OpenID4VP 1.0, for exactly the attributes the topic needs.

The flow: ``start_authentication`` makes a transaction (its own ``state``, ``nonce`` and, for
``direct_post.jwt``, an ephemeral encryption key); the resident's page shows a QR code and an
``openid4vp://`` link holding our client id and a one-time ``request_uri``. The wallet fetches
the signed request object there (once), and posts its answer to the transaction's
``response_uri``. We verify it (:mod:`idcontact.openid4vp.sdjwt`), map the requested claims to
our tags, deliver the signed and encrypted result to the comm side at once, and the page moves
on. ``state`` is single use: the first answer, good or bad, closes the transaction.

Wallets do not dial back over OpenID4VP, so a phone conversation needs the core's tel page
(``shim_tel_url = true`` on the method): after the presentation this browser is sent there,
and only it sees the number and code.

Transactions live in this process's memory, like the built-in IRMA server's sessions: run one
instance, or route ``/auth/<tag>/`` of a flow to one instance.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlencode, urlsplit

import httpx
from cryptography import x509
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from joserfc.jwk import ECKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from idcontact.agents.credentials import qr_svg
from idcontact.errors import BadRequestError, ConfigError, NotFoundError
from idcontact.keyring import demo_pair
from idcontact.keys import KeyConfig
from idcontact.openid4vp import dcql
from idcontact.openid4vp.errors import (
    MalformedPresentationError,
    PresentationError,
    PresentationTooLargeError,
    StateUsedError,
    UnknownTransactionError,
)
from idcontact.openid4vp.holder import (
    Credential,
    Wallet,
    WalletError,
    parse_link,
    verify_request,
)
from idcontact.openid4vp.issuer import issue
from idcontact.openid4vp.request import (
    REQUEST_MEDIA_TYPE,
    Prefix,
    ResponseMode,
    VerifierIdentity,
    identity,
    open_response,
    request_object,
)
from idcontact.openid4vp.sdjwt import Limits, VerifiedCredential, verify_presentation
from idcontact.openid4vp.statuslist import StatusLists
from idcontact.openid4vp.trust import IssuerTrust, did_jwk_of, load_pem_certificates
from idcontact.plugins.auth.common import (
    ClientUrl,
    StartAuthRequest,
    check_keys,
    check_provides,
    deliver,
    plugin_settings,
    provenance,
)
from idcontact.plugins.base import Kind, PluginContext
from idcontact.settings import Settings, Tenant
from idcontact.tokens import AuthResult
from idcontact.web.pages import TOKEN_PAGE_HEADERS, language, render
from idcontact.web.routing import Router

log = logging.getLogger(__name__)

MAX_PENDING = 10_000
MAX_RESPONSE_BYTES = 48 * 1024
DEMO_VCT = "urn:idcontact:demo:pid:1"
DEMO_RESIDENTS: dict[str, dict[str, Any]] = {
    "demi": {
        "given_name": "Demi",
        "family_name": "de Demo",
        "bsn": "999990019",
        "birthdate": "1980-04-01",
        "resident_postal_code": "6811AA",
        "resident_city": "Arnhem",
        "municipality": "Arnhem",
        "age_over_18": True,
        "email": "demi@example.org",
    },
    "piet": {
        "given_name": "Piet",
        "family_name": "Proef",
        "bsn": "999991772",
        "birthdate": "1952-11-23",
        "resident_postal_code": "6511AB",
        "resident_city": "Nijmegen",
        "municipality": "Nijmegen",
        "age_over_18": True,
        "email": "piet@example.org",
    },
}
"""The demo issuer's made-up residents (their BSNs are test numbers)."""


class SourceConfig(BaseModel):
    """One way to prove a tag: a credential type and the claims that make the value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vct: str = Field(min_length=1, max_length=200)
    claims: list[str] = Field(min_length=1, max_length=10)
    """Claim names; a nested claim as a dotted path (``address.postal_code``)."""
    take: Literal["value", "year"] = "value"

    def source(self) -> dcql.Source:
        return dcql.Source(
            self.vct, tuple(tuple(c.split(".")) for c in self.claims), take=self.take
        )


class OpenID4VPConfig(BaseModel):
    """``[plugins.auth.<tag>]`` of a method with ``plugin = "openid4vp"``."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    client_id_prefix: Prefix = "x509_san_dns"
    request_key: KeyConfig | None = None
    """EC P-256 private key that signs request objects (the RP certificate's key)."""
    certificate_chain: Path | None = None
    """PEM, leaf first: the relying-party certificate (x509 prefixes)."""
    client_name: str | None = Field(default=None, max_length=100)
    response_mode: ResponseMode = "direct_post.jwt"
    attributes: dict[str, list[SourceConfig]] = Field(default_factory=dict)
    allowed_vct: list[str] | None = None
    """Credential types accepted; default: those named in ``attributes``."""
    trust_anchors: list[Path] = Field(default_factory=list)
    """PEM files of CA certificates that issuers' ``x5c`` chains must lead to."""
    trusted_dids: list[str] = Field(default_factory=list)
    """``did:jwk`` issuers (development only)."""
    did_web_keys: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    """``did:web`` issuers → their public JWKs, pinned (development only; never fetched)."""
    check_status: bool = False
    """Token Status List: refuse revoked or suspended credentials (fetches the lists)."""
    kb_max_age: int = Field(default=300, ge=10, le=3600)
    transaction_lifetime: int = Field(default=600, ge=60, le=3600)
    max_presentation_bytes: int = Field(default=32 * 1024, ge=1024, le=MAX_RESPONSE_BYTES)
    development: bool = False
    """Allows the ``decentralized_identifier`` prefix and DID issuers; a generated request key."""
    demo_wallet: bool = False
    """Development: a demo issuer (trusted) and a demo wallet page that walks the protocol."""

    @model_validator(mode="after")
    def _check(self) -> OpenID4VPConfig:
        for tag, sources in self.attributes.items():
            if not sources:
                raise ValueError(f"attributes.{tag}: list at least one credential")
        if not self.development:
            if self.client_id_prefix == "decentralized_identifier":
                raise ValueError("client_id_prefix: decentralized_identifier needs development")
            if self.trusted_dids or self.did_web_keys:
                raise ValueError("trusted_dids, did_web_keys: only with development = true")
            if self.demo_wallet:
                raise ValueError("demo_wallet: only with development = true")
            if self.request_key is None:
                raise ValueError("request_key: the relying-party certificate's private key")
        if self.client_id_prefix != "decentralized_identifier" and self.certificate_chain is None:
            raise ValueError("certificate_chain: needed for the x509 client id prefixes")
        for did in self.trusted_dids:
            if not did.startswith("did:jwk:"):
                raise ValueError("trusted_dids: did:jwk identifiers only (did:web: did_web_keys)")
        return self

    def mapping(self) -> dict[str, list[dcql.Source]]:
        return {tag: [s.source() for s in sources] for tag, sources in self.attributes.items()}


def load_config(config: Mapping[str, Any], method_tag: str) -> OpenID4VPConfig:
    try:
        return OpenID4VPConfig.model_validate(config)
    except ValidationError as exc:  # check-config has no plugin context
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"plugins.auth.{method_tag}.{where}: {first['msg']}") from None


def _chain(config: OpenID4VPConfig, where: str) -> list[x509.Certificate]:
    if config.certificate_chain is None:
        return []
    try:
        return load_pem_certificates(config.certificate_chain.read_bytes())
    except (OSError, ValueError):
        raise ConfigError(f"{where}.certificate_chain: not readable PEM certificates") from None


def check_authorisation(settings: Settings, tenant: Tenant, method_tag: str) -> list[str]:
    """``check-config``: what each purpose offering this method asks beyond what the tenant's
    relying-party certificate authorises (its registration, extension 2.1.123.1)."""
    where = f"plugins.auth.{method_tag}"
    config = load_config(tenant.plugins.get("auth", {}).get(method_tag, {}), method_tag)
    if config.client_id_prefix == "decentralized_identifier":
        return []
    chain = _chain(config, where)
    registration = dcql.registration(chain[0]) if chain else None
    if registration is None:
        return [f"{where}: the certificate carries no registration (extension 2.1.123.1)"]
    rp = registration.get("rp")
    authorised = rp.get("authorized") if isinstance(rp, dict) else None
    mapping = config.mapping()
    problems = []
    for purpose in tenant.purposes:
        if not ({"*", method_tag} & set(purpose.allowed_auth)):
            continue
        if not set(purpose.attributes) <= set(mapping):
            continue
        plan = dcql.build(list(purpose.attributes), mapping)
        problems += [
            f"purposes ({purpose.tag}) via {method_tag}: {p}"
            for p in dcql.unauthorised(plan.query, authorised)
        ]
    return problems


@dataclass
class Transaction:
    """One presentation request, from the resident's start to the wallet's answer."""

    start: StartAuthRequest
    plan: dcql.Plan
    created: float
    lang: str
    request_id: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    state: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    encryption_key: ECKey | None = None
    fetched: bool = False
    answered: bool = False
    target: str | None = None
    """Where the browser goes after a success."""
    problem: str | None = None


class OpenID4VPAuthPlugin:
    kind: ClassVar[Kind] = "auth"

    def __init__(
        self,
        ctx: PluginContext,
        config: dict[str, Any],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_keys(ctx, "openid4vp")
        tag = ctx.method.tag
        where = f"plugins.auth.{tag}"
        self._config = plugin_settings(OpenID4VPConfig, ctx, config)
        self._ctx, self._clock = ctx, clock
        check_provides(ctx, self._config.attributes)
        if any(m.channel == "phone" for m in ctx.tenant.comm_methods) and not getattr(
            ctx.method, "shim_tel_url", False
        ):
            raise ConfigError(
                f"auth_methods ({tag}).shim_tel_url: must be true (wallets do not dial back; "
                "the tel page shows the number and code)"
            )
        self._mapping = self._config.mapping()
        self._identity = self._make_identity(where)
        self._demo_issuer: ECKey | None = None
        dids = list(self._config.trusted_dids)
        if self._config.demo_wallet:
            self._demo_issuer = _load_ec(
                demo_pair(ctx.settings, ctx.tenant, "openid4vp-demo-issuer", "EC")[0], where
            )
            dids.append(did_jwk_of(self._demo_issuer))
        anchors: list[x509.Certificate] = []
        for path in self._config.trust_anchors:
            try:
                anchors += load_pem_certificates(path.read_bytes())
            except (OSError, ValueError):
                raise ConfigError(f"{where}.trust_anchors: {path} holds no certificates") from None
        self._trust = IssuerTrust(anchors, dids, self._config.did_web_keys)
        self._allowed_vct = set(
            self._config.allowed_vct
            if self._config.allowed_vct is not None
            else [s.vct for sources in self._config.attributes.values() for s in sources]
        )
        self._limits = Limits(
            kb_max_age=self._config.kb_max_age,
            max_bytes=self._config.max_presentation_bytes,
            leeway=ctx.settings.token_leeway,
        )
        self._status = (
            StatusLists(ctx.http, self._trust, clock=clock) if self._config.check_status else None
        )
        self._flows: dict[str, Transaction] = {}
        self._requests: dict[str, Transaction] = {}

    def _make_identity(self, where: str) -> VerifierIdentity:
        config, ctx = self._config, self._ctx
        key_config = config.request_key
        if key_config is None:  # development only (checked)
            key_config = demo_pair(ctx.settings, ctx.tenant, "openid4vp-request", "EC")[0]
        key = _load_ec(key_config, f"{where}.request_key")
        host = urlsplit(ctx.settings.public_url).hostname
        return identity(config.client_id_prefix, key, _chain(config, where), host)

    @classmethod
    def check_config(cls, settings: Settings, tenant: Tenant, method_tag: str) -> list[str]:
        """Problems ``idcontact check-config`` reports for this method (none: fine)."""
        return check_authorisation(settings, tenant, method_tag)

    @property
    def client_id(self) -> str:
        return self._identity.client_id

    # -- transactions ---------------------------------------------------------------------

    def _forget_old(self) -> None:
        """Drop expired transactions; flows are in creation order, so only the oldest are
        looked at."""
        now = self._clock()
        lifetime = self._config.transaction_lifetime
        while self._flows:
            flow, txn = next(iter(self._flows.items()))
            if now - txn.created <= lifetime:
                break
            self._drop(flow, txn)

    def _begin(self, start: StartAuthRequest, lang: str) -> str:
        self._forget_old()
        if len(self._flows) >= MAX_PENDING:
            raise PresentationError("Too many presentation requests at once; try again later")
        txn = Transaction(start, dcql.build(start.attributes, self._mapping), self._clock(), lang)
        if self._config.response_mode == "direct_post.jwt":
            txn.encryption_key = ECKey.generate_key(
                "P-256", parameters={"kid": secrets.token_urlsafe(8)}
            )
        flow = secrets.token_urlsafe(24)
        self._flows[flow] = txn
        self._requests[txn.request_id] = txn
        return flow

    def _flow(self, flow: str) -> Transaction:
        self._forget_old()
        txn = self._flows.get(flow)
        if txn is None:
            raise NotFoundError("This wallet session is unknown or has ended")
        return txn

    def _page(
        self, request: Request, name: str, context: dict[str, Any], lang: str
    ) -> HTMLResponse:
        """A page in the tenant's look; never cached, no referrer (it leads to results)."""
        ctx = self._ctx
        return render(
            ctx.templates, request, name, context, tenant=ctx.tenant, lang=lang, carries_token=True
        )

    def _live(self, request_id: str) -> Transaction | None:
        """The transaction of a ``request_uri`` / ``response_uri``, unless it has expired."""
        txn = self._requests.get(request_id)
        if txn is None or self._clock() - txn.created > self._config.transaction_lifetime:
            return None
        return txn

    def _drop(self, flow: str, txn: Transaction) -> None:
        self._flows.pop(flow, None)
        self._requests.pop(txn.request_id, None)

    def link(self, txn: Transaction) -> str:
        """The ``openid4vp://`` link (and QR code content) that starts the wallet."""
        query = urlencode(
            {
                "client_id": self._identity.client_id,
                "request_uri": f"{self._ctx.public_base}/request/{txn.request_id}",
            }
        )
        return f"openid4vp://?{query}"

    def signed_request(self, txn: Transaction) -> str:
        ctx = self._ctx
        return request_object(
            self._identity,
            nonce=txn.nonce,
            state=txn.state,
            response_uri=f"{ctx.public_base}/response/{txn.request_id}",
            response_mode=self._config.response_mode,
            dcql_query=txn.plan.query,
            client_name=self._config.client_name or ctx.tenant.name,
            encryption_key=txn.encryption_key,
            now=int(self._clock()),
            lifetime=self._config.transaction_lifetime,
        )

    # -- the answer -----------------------------------------------------------------------

    async def receive(self, request_id: str, form: Mapping[str, str]) -> Transaction:
        """Verify a wallet's answer to ``request_id`` and deliver the attributes; the first
        answer, good or bad, uses up the transaction's ``state``."""
        txn = self._live(request_id)
        if txn is None:
            raise UnknownTransactionError()
        if txn.answered:
            raise StateUsedError()
        if "response" in form:
            if txn.encryption_key is None:
                raise MalformedPresentationError("This request wants a plain direct_post")
            payload = open_response(form["response"], txn.encryption_key)
        elif self._config.response_mode == "direct_post.jwt" and "error" not in form:
            raise MalformedPresentationError("This request wants an encrypted response")
        else:
            payload = dict(form)
        state = payload.get("state")
        if not isinstance(state, str) or not secrets.compare_digest(
            state.encode(), txn.state.encode()
        ):
            raise UnknownTransactionError("The state does not match this request")
        txn.answered = True
        if "error" in payload:
            txn.problem = "cancelled"
            return txn
        try:
            values, origin = await self._verify(txn, payload.get("vp_token"))
        except (PresentationError, PresentationTooLargeError) as exc:
            # The reason only: never a value, a token or the nonce.
            log.info("openid4vp: presentation refused", extra={"reason": exc.slug})
            txn.problem = exc.slug
            raise
        result = AuthResult(status="success", attributes=values, provenance=origin)
        target = await deliver(self._ctx, result, txn.start)
        # A tel: continuation cannot happen (shim_tel_url); the browser goes on from here.
        txn.target = target
        return txn

    async def _verify(
        self, txn: Transaction, vp_token: object
    ) -> tuple[dict[str, str], dict[str, str]]:
        presented = dcql.parse_vp_token(vp_token, txn.plan)
        now = self._clock()
        verified: dict[str, VerifiedCredential] = {}
        for query_id, presentation in presented.items():
            credential = verify_presentation(
                presentation,
                trust=self._trust,
                audience=self._identity.client_id,
                nonce=txn.nonce,
                now=now,
                allowed_vct=self._allowed_vct,
                limits=self._limits,
            )
            dcql.check_vct(txn.plan, query_id, credential.vct)
            if self._status is not None:
                await self._status.check(credential.status)
            verified[query_id] = credential
        values, used = dcql.read(
            txn.plan, txn.start.attributes, {q: c.claims for q, c in verified.items()}
        )
        credentials = sorted(
            {
                f"{verified[q].vct} ({_date(verified[q].issued_at)})"
                if verified[q].issued_at
                else verified[q].vct
                for q in used
            }
        )
        return values, provenance(
            self._ctx,
            issuer=", ".join(sorted({verified[q].issuer for q in used})),
            credential=", ".join(credentials),
        )

    # -- routes ---------------------------------------------------------------------------

    @property
    def router(self) -> APIRouter:
        router = Router(prefix=self._ctx.mount_path, tags=["auth plugin: openid4vp"])
        ctx = self._ctx

        @router.post("/start_authentication", response_model=ClientUrl)
        async def start_authentication(body: StartAuthRequest) -> ClientUrl:
            """Start a presentation of ``attributes``; answer where to send the browser."""
            body.check_for(self._mapping)
            if body.continuation.startswith("tel:"):
                raise BadRequestError(
                    "Wallets do not dial back: this method needs the tel page (shim_tel_url)"
                )
            flow = self._begin(body, ctx.settings.default_language)
            return ClientUrl(client_url=f"{ctx.public_base}/s/{flow}")

        @router.get(
            "/request/{request_id}",
            responses={200: {"content": {REQUEST_MEDIA_TYPE: {}}}},
            response_class=Response,
        )
        async def request_uri(request_id: str) -> Response:
            """The signed request object, served once (the wallet's GET of ``request_uri``)."""
            txn = self._live(request_id)
            if txn is None or txn.fetched or txn.answered:
                raise NotFoundError("This request is unknown or was fetched already")
            txn.fetched = True
            return Response(
                self.signed_request(txn),
                media_type=REQUEST_MEDIA_TYPE,
                headers={"Cache-Control": "no-store"},
            )

        @router.post("/response/{request_id}")
        async def response_uri(request: Request, request_id: str) -> JSONResponse:
            """The wallet's answer: ``direct_post`` (``vp_token``, ``state``) or
            ``direct_post.jwt`` (``response``, encrypted to this transaction's key)."""
            raw = await request.body()
            if len(raw) > MAX_RESPONSE_BYTES:
                raise PresentationTooLargeError()
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/x-www-form-urlencoded":
                raise MalformedPresentationError("The answer must be a form post")
            form = await request.form()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            await self.receive(request_id, fields)
            return JSONResponse({}, headers={"Cache-Control": "no-store"})

        @router.get("/s/{flow}", response_class=HTMLResponse)
        async def session_page(request: Request, flow: str) -> Response:
            txn = self._flow(flow)
            if "lang" in request.query_params:
                txn.lang = language(request, ctx.settings)
            if txn.answered:
                return RedirectResponse(f"{ctx.public_base}/s/{flow}/done", status_code=303)
            link = self.link(txn)
            en = txn.lang == "en"
            demo = (
                f"{ctx.public_base}/demo-wallet?link={quote(link, safe='')}"
                if self._config.demo_wallet
                else None
            )
            return self._page(
                request,
                "openid4vp_session.html",
                {
                    "labels": [
                        ctx.tenant.attribute_label(t, txn.lang) for t in txn.start.attributes
                    ],
                    "qr": qr_svg(
                        link, "QR code for your wallet" if en else "QR-code voor uw wallet"
                    ),
                    "link": link,
                    "base": f"{ctx.public_base}/s/{flow}",
                    "demo_wallet": demo,
                    "phone": "/tel/" in txn.start.continuation,
                },
                txn.lang,
            )

        @router.get("/s/{flow}/status")
        async def status(flow: str) -> JSONResponse:
            """``pending``, ``done`` or ``failed``: the page's script follows it."""
            txn = self._flow(flow)
            state = "pending" if not txn.answered else ("done" if txn.target else "failed")
            return JSONResponse({"status": state}, headers={"Cache-Control": "no-store"})

        @router.get("/s/{flow}/done", response_class=HTMLResponse)
        async def done(request: Request, flow: str) -> Response:
            """Where the attributes were delivered to: on to the comm side (or the tel page)."""
            txn = self._flow(flow)
            if txn.target is not None:
                return RedirectResponse(txn.target, status_code=303, headers=TOKEN_PAGE_HEADERS)
            if not txn.answered:
                return RedirectResponse(f"{ctx.public_base}/s/{flow}", status_code=303)
            return self._page(
                request,
                "openid4vp_failed.html",
                {"reason": txn.problem or "invalid", "base": f"{ctx.public_base}/s/{flow}"},
                txn.lang,
            )

        @router.post("/s/{flow}/retry")
        async def retry(flow: str) -> Response:
            """A new transaction for the same request."""
            txn = self._flow(flow)
            if txn.target is not None:
                return RedirectResponse(txn.target, status_code=303, headers=TOKEN_PAGE_HEADERS)
            new = self._begin(txn.start, txn.lang)
            self._drop(flow, txn)
            return RedirectResponse(f"{ctx.public_base}/s/{new}", status_code=303)

        @router.post("/s/{flow}/give_up")
        async def give_up(flow: str) -> Response:
            """Choose another way: the comm side learns that identifying failed."""
            txn = self._flow(flow)
            if txn.target is not None:
                return RedirectResponse(txn.target, status_code=303, headers=TOKEN_PAGE_HEADERS)
            txn.answered = True
            target = await deliver(ctx, AuthResult(status="failed", attributes=None), txn.start)
            self._drop(flow, txn)
            if "/tel/" in txn.start.continuation:
                target = f"{ctx.tenant.prefix}/"
            return RedirectResponse(target, status_code=303, headers=TOKEN_PAGE_HEADERS)

        if self._demo_issuer is not None:
            self._demo_wallet_routes(router, self._demo_issuer)
        return router

    # -- the demo wallet --------------------------------------------------------------------

    def _demo_wallet_routes(self, router: APIRouter, issuer_key: ECKey) -> None:
        """A wallet in a browser tab, for trying the flow without a phone: it issues SD-JWT
        VCs of a demo resident (our demo issuer) and answers the real request over HTTP."""
        ctx = self._ctx
        seal = f"openid4vp-demo-wallet:{ctx.mount_path}"
        public, internal = ctx.public_base, ctx.internal_base

        def wallet() -> Wallet:
            return Wallet(_Rewriting(ctx.http, public, internal), clock=self._clock)

        def credentials(resident: str) -> list[Credential]:
            holder = ECKey.generate_key("P-256")
            now = int(self._clock())
            sd_jwt = issue(
                issuer_key,
                iss=did_jwk_of(issuer_key),
                vct=DEMO_VCT,
                claims=DEMO_RESIDENTS[resident],
                holder=holder,
                iat=now,
                exp=now + 86400,
            )
            return [Credential(sd_jwt, holder)]

        def page(request: Request, context: dict[str, Any]) -> HTMLResponse:
            lang = language(request, ctx.settings)
            return self._page(request, "openid4vp_demo_wallet.html", context, lang)

        @router.get("/demo-wallet", response_class=HTMLResponse, include_in_schema=False)
        async def demo_wallet(request: Request, link: str = Query(max_length=2000)) -> Response:
            """What scanning the QR code does: fetch and check the request, ask consent."""
            try:
                _, request_uri = parse_link(link)
            except WalletError:
                request_uri = ""
            if not link.startswith("openid4vp://") or not request_uri.startswith(
                f"{public}/request/"
            ):
                raise BadRequestError("Only requests of this verifier can be opened here")
            try:
                asked = await wallet().open(link)
            except WalletError as exc:
                return page(request, {"error": str(exc)})
            token = ctx.sealer.seal(
                seal, {"request": asked.token, "client_id": asked.client_id}, 600
            )
            return page(
                request,
                {
                    "asked": asked.asked(),
                    "client_name": asked.client_name,
                    "verified": asked.verified_by == "x509",
                    "residents": {
                        k: v["given_name"] + " " + v["family_name"]
                        for k, v in DEMO_RESIDENTS.items()
                    },
                    "state": token,
                    "action": f"{public}/demo-wallet",
                },
            )

        @router.post("/demo-wallet", response_class=HTMLResponse, include_in_schema=False)
        async def demo_wallet_answer(
            request: Request,
            state: str = Form(max_length=16_000),
            resident: str = Form("demi", max_length=20),
            action: Literal["share", "cancel"] = Form(...),
        ) -> Response:
            """Share (present the asked claims) or refuse (an ``access_denied`` answer)."""
            sealed = ctx.sealer.unseal(seal, state)
            asked = verify_request(str(sealed["request"]), str(sealed["client_id"]))
            w = wallet()
            if resident not in DEMO_RESIDENTS:
                raise BadRequestError("Unknown demo resident")
            w.credentials = credentials(resident)
            if action == "cancel":
                answer = await w.http.post(
                    str(asked.claims["response_uri"]),
                    data={"error": "access_denied", "state": str(asked.claims["state"])},
                )
            else:
                try:
                    answer = await w.respond(asked, w.presentations(asked))
                except WalletError as exc:
                    return page(request, {"error": str(exc)})
            return page(request, {"done": action, "accepted": answer.status_code == 200})


class _Rewriting:
    """An HTTP client for the demo wallet: URLs under our public base go to this process
    in-memory (the same HTTP requests a phone would send, without a network hop)."""

    def __init__(self, http: httpx.AsyncClient, public: str, internal: str) -> None:
        self._http, self._public, self._internal = http, public, internal

    def _url(self, url: str) -> str:
        return self._internal + url[len(self._public) :] if url.startswith(self._public) else url

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self._http.get(self._url(url), **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self._http.post(self._url(url), **kwargs)


def _load_ec(config: KeyConfig, where: str) -> ECKey:
    key = config.load()
    if not isinstance(key, ECKey) or not key.is_private:
        raise ConfigError(f"{where}: an EC P-256 private key")
    return key


def _date(timestamp: int | None) -> str:
    return datetime.fromtimestamp(timestamp or 0, UTC).strftime("%Y-%m-%d")
