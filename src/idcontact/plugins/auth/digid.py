"""The ``digid`` auth plugin: the resident logs in with DigiD, sees what will be passed on, and
says yes or no.

Each municipality (tenant) has its own DigiD connection, directly at Logius or through a
broker: its own SAML entity id, certificate and key, its SP metadata at ``…/metadata``, and
its IdP's metadata from a file or a URL (``idcontact.digid.saml``). A broker that speaks
OpenID Connect instead is configured with ``protocol = "oidc"``. The BSN comes from the login;
a purpose that needs more gets the rest from the BRP (``idcontact.digid.brp``).

No server-side state: the pending login lives in a sealed, HTTP-only cookie of the browser
that started it (path: this plugin), so several instances can serve one flow and a login
answer is only accepted in the browser that asked for it. Artifacts and assertion ids are
marked used (``ctx.once``) so neither works twice.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from idcontact.agents.sso import OidcRelyingParty
from idcontact.digid.brp import BrpAttribute, BrpClient
from idcontact.digid.levels import (
    BY_CLASS_REF,
    LEVELS,
    Level,
    LevelName,
    LoginRefusedError,
    achieved,
    bsn_of,
)
from idcontact.digid.saml import (
    BackChannel,
    Binding,
    Login,
    ServiceProvider,
    SpSettings,
    in_thread,
)
from idcontact.digid.xmlguard import MAX_XML_BYTES
from idcontact.errors import ConfigError, IdContactError
from idcontact.plugins.auth.common import (
    ClientUrl,
    StartAuthRequest,
    check_keys,
    deliver,
    plugin_settings,
)
from idcontact.plugins.base import Kind, PluginContext
from idcontact.sealing import InvalidStateError
from idcontact.settings import Assurance
from idcontact.storage.once import MemoryOneTime, OneTime
from idcontact.tokens import AuthResult
from idcontact.web.pages import TOKEN_PAGE_HEADERS, language, render
from idcontact.web.routing import Router

log = logging.getLogger(__name__)

SEAL_START = "auth-digid-start"
SEAL_FLOW = "auth-digid-flow"
FLOW_SECONDS = 15 * 60
METADATA_SECONDS = 24 * 3600
MAX_FORM_BYTES = 2 * MAX_XML_BYTES


class TlsClient(BaseModel):
    """A client certificate for mutual TLS, and the CA that signs the server (default: the
    system's trust store)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    certificate_file: Path
    key_file: Path
    ca_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            context.load_cert_chain(str(self.certificate_file), str(self.key_file))
        except (OSError, ssl.SSLError):
            raise ConfigError("tls: the certificate, key or CA file cannot be read") from None
        return context


class SamlSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    entity_id: str = Field(min_length=1, max_length=1024)
    certificate_file: Path
    """This municipality's SAML signing certificate (PEM), published in its SP metadata."""
    key_file: Path
    idp_metadata_file: Path | None = None
    idp_metadata_url: str | None = None
    binding: Binding = "artifact"
    """How the answer comes back: ``artifact`` (DigiD; resolved over the back channel) or
    ``post`` (brokers)."""
    back_channel_tls: TlsClient | None = None
    """The client certificate for the SOAP back channel (DigiD demands mutual TLS)."""
    want_response_signed: bool = False
    clock_skew: int = Field(default=60, ge=0, le=300)

    @model_validator(mode="after")
    def _check(self) -> SamlSettings:
        if (self.idp_metadata_file is None) == (self.idp_metadata_url is None):
            raise ValueError("set exactly one of idp_metadata_file and idp_metadata_url")
        if self.idp_metadata_url is not None and not self.idp_metadata_url.startswith(
            ("https://", "http://")
        ):
            raise ValueError("idp_metadata_url: an http(s) URL")
        return self


class OidcSettings(BaseModel):
    """A broker that offers DigiD over OpenID Connect (authorization code + PKCE)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    issuer: str
    client_id: str = Field(min_length=1, max_length=256)
    client_secret: SecretStr
    scopes: tuple[str, ...] = ("openid",)
    bsn_claim: str = Field(default="bsn", min_length=1, max_length=100)
    """The ID token claim with the BSN (with or without the ``s00000000:`` sector prefix)."""
    acr_values: dict[LevelName, str] = Field(default_factory=dict)
    """The broker's ``acr`` value for each DigiD level (default: the SAML class refs)."""
    allow_http: bool = False
    """Accept a plain-http broker on 127.0.0.1/localhost (tests and demos only)."""
    algorithms: tuple[Literal["RS256", "PS256", "ES256", "EdDSA"], ...] = ("RS256", "ES256")

    @model_validator(mode="after")
    def _check(self) -> OidcSettings:
        url = urlsplit(self.issuer)
        loopback = url.hostname in ("127.0.0.1", "localhost", "::1")
        if not (url.scheme == "https" or (url.scheme == "http" and self.allow_http and loopback)):
            raise ValueError("issuer: an https URL (plain http only on 127.0.0.1 with allow_http)")
        if "openid" not in self.scopes:
            raise ValueError("scopes: must include 'openid'")
        return self


@dataclass(frozen=True)
class _Broker:
    """The broker as the OpenID Connect relying party sees it: the settings, and the ``acr``
    values at or above the minimum level."""

    settings: OidcSettings
    require_acr: tuple[str, ...]

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    @property
    def client_id(self) -> str:
        return self.settings.client_id

    @property
    def scopes(self) -> tuple[str, ...]:
        return self.settings.scopes

    @property
    def allow_http(self) -> bool:
        return self.settings.allow_http

    @property
    def algorithms(self) -> tuple[str, ...]:
        return self.settings.algorithms

    def secret(self) -> str:
        return self.settings.client_secret.get_secret_value()


class BrpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str
    """The ``/personen`` endpoint of Haal Centraal BRP Personen Bevragen."""
    tls: TlsClient | None = None
    api_key: SecretStr | None = None
    attributes: dict[str, str | BrpAttribute] = Field(default_factory=dict)
    """Our attribute tags and where they are in the BRP answer."""

    def mapping(self) -> dict[str, BrpAttribute]:
        return {
            tag: BrpAttribute(path=a) if isinstance(a, str) else a
            for tag, a in self.attributes.items()
        }


class DigidConfig(BaseModel):
    """``[plugins.auth.<tag>]`` of a method with ``plugin = "digid"``."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    protocol: Literal["saml", "oidc"] = "saml"
    level: LevelName = "midden"
    """The minimum DigiD level: requested, and checked on the answer."""
    saml: SamlSettings | None = None
    oidc: OidcSettings | None = None
    brp: BrpSettings | None = None
    test_bsns: dict[str, str] = Field(default_factory=dict)
    """Acceptance environments only: DigiD test BSN → the BSN used instead (and at the BRP)."""
    single_logout: bool = True
    """End the session at the IdP after the resident decided (when its metadata offers it)."""

    @model_validator(mode="after")
    def _check(self) -> DigidConfig:
        if self.protocol == "saml" and self.saml is None:
            raise ValueError("saml: needed with protocol = 'saml'")
        if self.protocol == "oidc" and self.oidc is None:
            raise ValueError("oidc: needed with protocol = 'oidc'")
        for a, b in self.test_bsns.items():
            if not (a.isdigit() and b.isdigit() and len(a) == len(b) == 9):
                raise ValueError("test_bsns: nine-digit BSNs")
        return self


class DigidAuthPlugin:
    kind: ClassVar[Kind] = "auth"

    def __init__(
        self,
        ctx: PluginContext,
        config: dict[str, Any],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_keys(ctx, "digid")
        tag = ctx.method.tag
        self._config = plugin_settings(DigidConfig, ctx, config)
        self._ctx = ctx
        self._clock = clock
        self._level = LEVELS[self._config.level]
        claimed = getattr(ctx.method, "assurance", "low")
        if Assurance[claimed] > Assurance[self._level.eidas]:
            raise ConfigError(
                f"auth_methods ({tag}).assurance: {claimed!r} is more than DigiD level "
                f"{self._level.label} gives ({self._level.eidas!r})"
            )
        self._brp_attributes = self._config.brp.mapping() if self._config.brp else {}
        self._provides = {"bsn", *self._brp_attributes}
        provides = getattr(ctx.method, "provides", None)
        missing = sorted(set(provides or ()) - self._provides)
        if missing:
            raise ConfigError(
                f"auth_methods ({tag}).provides: DigiD gives the BSN, and with [brp] the mapped "
                f"attributes (not mapped: {', '.join(missing)})"
            )
        self._once: OneTime = ctx.once or MemoryOneTime(clock)
        self._clients: list[httpx.AsyncClient] = []
        self._back_channel = BackChannel(
            self._client(self._saml_tls()), ctx.settings.plugin_timeout
        )
        self._brp = self._make_brp()
        self._oidc = self._make_oidc()
        self._sp: ServiceProvider | None = None
        self._sp_at = 0.0
        saml = self._config.saml
        if self._config.protocol == "saml" and saml and saml.idp_metadata_file is not None:
            # A file: checked now, so a bad one stops start-up.
            try:
                metadata = saml.idp_metadata_file.read_text()
            except OSError:
                raise ConfigError(
                    f"plugins.auth.{tag}.saml.idp_metadata_file: cannot be read"
                ) from None
            self._sp = self._build_sp(saml, metadata)

    # -- construction helpers ---------------------------------------------------------------

    def _saml_tls(self) -> TlsClient | None:
        return self._config.saml.back_channel_tls if self._config.saml else None

    def _client(self, tls: TlsClient | None) -> httpx.AsyncClient:
        """The shared client, or one of our own with the client certificate (closed with us)."""
        if tls is None:
            return self._ctx.http
        client = httpx.AsyncClient(verify=tls.context(), timeout=self._ctx.settings.plugin_timeout)
        self._clients.append(client)
        return client

    def _make_brp(self) -> BrpClient | None:
        brp = self._config.brp
        if brp is None:
            return None
        headers = {"Accept": "application/json"}
        if brp.api_key is not None:
            headers["X-API-KEY"] = brp.api_key.get_secret_value()
        return BrpClient(self._client(brp.tls), brp.url, headers)

    def _make_oidc(self) -> OidcRelyingParty | None:
        oidc = self._config.oidc
        if self._config.protocol != "oidc" or oidc is None:
            return None
        acr = self._acr_values(oidc)
        accepted = tuple(v for name, v in acr.items() if LEVELS[name].rank >= self._level.rank)
        return OidcRelyingParty(
            _Broker(oidc, accepted),
            self._ctx.http,
            self._ctx.sealer,
            self._clock,
            seal="auth-digid-oidc",
        )

    def _minimum_acr(self) -> str:
        oidc = self._config.oidc
        return self._acr_values(oidc)[self._level.name] if oidc else self._level.class_ref

    @staticmethod
    def _acr_values(oidc: OidcSettings) -> dict[LevelName, str]:
        return {name: oidc.acr_values.get(name, level.class_ref) for name, level in LEVELS.items()}

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    async def _service_provider(self) -> ServiceProvider:
        """pysaml2's SP, built on first use and again when the IdP metadata is a day old."""
        saml = self._config.saml
        if saml is None:  # pragma: no cover - checked in the config
            raise ConfigError("saml settings missing")
        now = self._clock()
        if self._sp is not None and (
            saml.idp_metadata_url is None or now - self._sp_at < METADATA_SECONDS
        ):
            return self._sp
        try:
            metadata = await self._fetch_metadata(str(saml.idp_metadata_url))
        except LoginRefusedError:
            if self._sp is None:
                raise
            # Keep the metadata we have; try again in five minutes.
            log.warning("digid: IdP metadata refresh failed; keeping the old one")
            self._sp_at = now - METADATA_SECONDS + 300
            return self._sp
        self._sp = await in_thread(self._build_sp, saml, metadata)
        self._sp_at = now
        return self._sp

    def _build_sp(self, saml: SamlSettings, metadata: str) -> ServiceProvider:
        base = self._ctx.public_base
        settings = SpSettings(
            entity_id=saml.entity_id,
            acs_url=f"{base}/acs",
            slo_url=f"{base}/slo",
            certificate_file=saml.certificate_file,
            key_file=saml.key_file,
            response_binding=saml.binding,
            minimum=self._level,
            want_response_signed=saml.want_response_signed,
            clock_skew=saml.clock_skew,
        )
        try:
            return ServiceProvider(settings, metadata)
        except LoginRefusedError:
            raise ConfigError("saml: the IdP metadata is not acceptable XML") from None
        except Exception as exc:  # pysaml2 raises many kinds on bad metadata or keys
            log.warning("digid: SAML set-up failed", extra={"error": type(exc).__name__})
            raise ConfigError("saml: the IdP metadata, certificate or key is not usable") from None

    async def _fetch_metadata(self, url: str) -> str:
        try:
            response = await self._ctx.http.get(url, timeout=self._ctx.settings.plugin_timeout)
        except httpx.HTTPError:
            raise LoginRefusedError("unreachable", "The IdP metadata cannot be fetched") from None
        if response.status_code != 200 or len(response.content) > MAX_XML_BYTES:
            raise LoginRefusedError("unreachable", "The IdP metadata cannot be fetched")
        return response.text

    # -- the flow cookie --------------------------------------------------------------------

    @property
    def _cookie(self) -> str:
        return f"idc_digid_{self._ctx.method.tag}"

    def _set_flow(self, response: Response, data: dict[str, object]) -> None:
        secure = self._ctx.settings.public_url.startswith("https://")
        response.set_cookie(
            self._cookie,
            self._ctx.sealer.seal(SEAL_FLOW, data, FLOW_SECONDS),
            max_age=FLOW_SECONDS,
            path=self._ctx.mount_path,
            httponly=True,
            secure=secure,
            # The POST binding arrives cross-site from the IdP: only None lets the cookie come.
            samesite="none" if secure else "lax",
        )

    def _flow(self, request: Request, phase: str) -> dict[str, object]:
        sealed = request.cookies.get(self._cookie, "")
        if not sealed:
            raise LoginRefusedError("no-flow", "This login was not started in this browser")
        try:
            data = self._ctx.sealer.unseal(SEAL_FLOW, sealed)
        except IdContactError:
            raise LoginRefusedError("no-flow", "This login has expired or is not valid") from None
        if data.get("phase") != phase:
            raise LoginRefusedError("no-flow", "This step does not belong to this login")
        return data

    # -- results ----------------------------------------------------------------------------

    def _bsn(self, bsn: str) -> str:
        return self._config.test_bsns.get(bsn, bsn)

    async def _attributes(self, start: StartAuthRequest, bsn: str) -> dict[str, str]:
        values: dict[str, str] = {}
        wanted = {t: self._brp_attributes[t] for t in start.attributes if t != "bsn"}
        if wanted:
            if self._brp is None:  # pragma: no cover - refused at the start
                raise LoginRefusedError("brp", "No BRP is configured")
            values |= await self._brp.lookup(bsn, wanted, self._ctx.settings.plugin_timeout)
        if "bsn" in start.attributes:
            values["bsn"] = bsn
        return {t: values[t] for t in start.attributes}

    def _provenance(self, level: Level, idp: str) -> dict[str, str]:
        method = self._ctx.method
        return {
            "method": method.tag,
            "method_name": method.name,
            "assurance": level.eidas,
            "issuer": idp,
            "credential": f"DigiD {level.label} ({level.class_ref.rsplit(':', 1)[-1]})",
        }

    # -- routes -----------------------------------------------------------------------------

    @property
    def router(self) -> APIRouter:
        router = Router(prefix=self._ctx.mount_path, tags=["auth plugin: digid"])
        ctx = self._ctx

        @router.post("/start_authentication", response_model=ClientUrl)
        async def start_authentication(body: StartAuthRequest) -> ClientUrl:
            """Start a DigiD login for ``attributes``; answer where to send the browser."""
            body.check_for(self._provides)
            state = ctx.sealer.seal(SEAL_START, body.model_dump(), max_age=FLOW_SECONDS)
            return ClientUrl(client_url=f"{ctx.public_base}/login/{state}")

        @router.get("/login/{state}")
        async def login(request: Request, state: str) -> Response:
            """Off to DigiD: a signed AuthnRequest (or the broker's authorization URL)."""
            start = StartAuthRequest.model_validate(ctx.sealer.unseal(SEAL_START, state))
            lang = language(request, ctx.settings)
            relay = secrets.token_urlsafe(16)
            flow: dict[str, object] = {
                "phase": "login",
                "start": start.model_dump(),
                "relay": relay,
                "lang": lang,
                "retry": state,
            }
            try:
                if self._oidc is not None:
                    url, sealed = await self._oidc.begin(
                        f"{ctx.public_base}/oidc", False, "", acr_values=self._minimum_acr()
                    )
                    flow["oidc"] = sealed
                else:
                    sp = await self._service_provider()
                    request_id, url = await in_thread(sp.login, relay)
                    flow["request"] = request_id
            except IdContactError as exc:
                log.warning("digid: cannot start a login", extra={"error": type(exc).__name__})
                return self._failure(request, lang, "unreachable", state)
            response = RedirectResponse(url, status_code=303, headers=TOKEN_PAGE_HEADERS)
            self._set_flow(response, flow)
            return response

        @router.get("/metadata")
        async def metadata() -> Response:
            """This municipality's SAML SP metadata (signed), for DigiD or the broker."""
            sp = await self._service_provider()
            xml = await in_thread(sp.metadata)
            return Response(xml, media_type="application/samlmetadata+xml")

        @router.get("/acs", response_class=HTMLResponse)
        async def acs_artifact(request: Request) -> Response:
            """The HTTP-Artifact binding: resolve the artifact over the back channel."""
            return await self._answer(request, artifact=request.query_params.get("SAMLart"))

        @router.post("/acs", response_class=HTMLResponse)
        async def acs_post(request: Request) -> Response:
            """The HTTP-POST binding (brokers): the Response comes with the browser."""
            if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
                return self._failure(request, self._lang(request), "malformed", None, 413)
            form = await request.form(max_part_size=MAX_FORM_BYTES)
            encoded = form.get("SAMLResponse")
            return await self._answer(
                request,
                posted=encoded if isinstance(encoded, str) else "",
                relay=str(form.get("RelayState") or ""),
            )

        @router.get("/oidc", response_class=HTMLResponse)
        async def oidc_callback(request: Request) -> Response:
            """The broker's answer (OpenID Connect)."""
            return await self._answer(request, oidc=True)

        @router.get("/confirm", response_class=HTMLResponse)
        async def confirm(request: Request) -> Response:
            """What will be passed to the agent, with "pass on" and "cancel"."""
            try:
                flow = self._flow(request, "confirm")
            except LoginRefusedError as exc:
                return self._failure(request, self._lang(request), exc.reason, None)
            lang = str(flow["lang"])
            values: dict[str, str] = flow["values"]  # type: ignore[assignment]
            rows = [(ctx.tenant.attribute_label(t, lang), v) for t, v in values.items()]
            level = LEVELS[flow["level"]]  # type: ignore[index]
            return render(
                ctx.templates,
                request,
                "digid_confirm.html",
                {"rows": rows, "level": level.label, "action": f"{ctx.public_base}/confirm"},
                tenant=ctx.tenant,
                lang=lang,
                carries_token=True,
            )

        @router.post("/confirm")
        async def decide(
            request: Request, action: Literal["share", "cancel"] = Form(...)
        ) -> Response:
            """Pass on (success) or cancel (failed); then end the IdP session and go on."""
            try:
                flow = self._flow(request, "confirm")
            except LoginRefusedError as exc:
                return self._failure(request, self._lang(request), exc.reason, None)
            start = StartAuthRequest.model_validate(flow["start"])
            lang = str(flow["lang"])
            if action == "share":
                result = AuthResult(
                    status="success",
                    attributes=flow["values"],  # type: ignore[arg-type]
                    provenance=flow["provenance"],  # type: ignore[arg-type]
                )
            else:
                result = AuthResult(status="failed", attributes=None)
            target = await deliver(ctx, result, start)
            logout = await self._logout_url(flow)
            if logout is not None:
                # End the IdP session first; /slo then goes on (or says "cancelled").
                response: Response = RedirectResponse(
                    logout, status_code=303, headers=TOKEN_PAGE_HEADERS
                )
                self._set_flow(
                    response,
                    {
                        "phase": "logout",
                        "target": target,
                        "lang": lang,
                        "cancelled": action == "cancel",
                    },
                )
                return response
            if action == "cancel":
                response = self._cancelled(request, lang, target)
            else:
                response = RedirectResponse(
                    self._next(target), status_code=303, headers=TOKEN_PAGE_HEADERS
                )
            response.delete_cookie(self._cookie, path=ctx.mount_path)
            return response

        @router.get("/slo")
        async def slo(request: Request) -> Response:
            """Back from the IdP's single logout: on to where the resident was going."""
            try:
                flow = self._flow(request, "logout")
            except LoginRefusedError:
                return RedirectResponse(f"{ctx.tenant.prefix}/", status_code=303)
            target = str(flow["target"])
            response: Response
            if flow.get("cancelled"):
                response = self._cancelled(request, str(flow["lang"]), target)
            else:
                response = RedirectResponse(
                    self._next(target), status_code=303, headers=TOKEN_PAGE_HEADERS
                )
            response.delete_cookie(self._cookie, path=ctx.mount_path)
            return response

        @router.post("/give_up")
        async def give_up(request: Request, state: str = Form(max_length=8192)) -> Response:
            """After a failed login: choose another way (the comm side learns it failed)."""
            try:
                start = StartAuthRequest.model_validate(ctx.sealer.unseal(SEAL_START, state))
            except (InvalidStateError, IdContactError):
                return self._failure(request, self._lang(request), "no-flow", None)
            target = await deliver(ctx, AuthResult(status="failed", attributes=None), start)
            response = RedirectResponse(
                self._next(target), status_code=303, headers=TOKEN_PAGE_HEADERS
            )
            response.delete_cookie(self._cookie, path=ctx.mount_path)
            return response

        return router

    # -- the answer -------------------------------------------------------------------------

    async def _answer(
        self,
        request: Request,
        *,
        artifact: str | None = None,
        posted: str | None = None,
        relay: str | None = None,
        oidc: bool = False,
    ) -> Response:
        """Verify the IdP's answer; on success the confirmation page, else a clear page."""
        lang = self._lang(request)
        try:
            flow = self._flow(request, "login")
        except LoginRefusedError as exc:
            return self._failure(request, lang, exc.reason, None)
        lang = str(flow["lang"])
        retry = str(flow["retry"])
        start = StartAuthRequest.model_validate(flow["start"])
        try:
            if oidc:
                bsn, level, idp = await self._oidc_login(request, flow)
                session = None
            else:
                login = await self._saml_login(request, flow, artifact, posted, relay)
                bsn, level, idp = login.bsn, login.level, login.idp
                session = {"n": login.name_id, "s": login.session_index}
            bsn = self._bsn(bsn)
            values = await self._attributes(start, bsn)
        except LoginRefusedError as exc:
            if exc.reason == "cancelled":
                target = await deliver(
                    self._ctx, AuthResult(status="failed", attributes=None), start
                )
                cancelled = self._cancelled(request, lang, target)
                cancelled.delete_cookie(self._cookie, path=self._ctx.mount_path)
                return cancelled
            log.info("digid: login refused", extra={"reason": exc.reason})
            return self._failure(request, lang, exc.reason, retry)
        response = RedirectResponse(f"{self._ctx.public_base}/confirm", status_code=303)
        self._set_flow(
            response,
            {
                "phase": "confirm",
                "start": start.model_dump(),
                "values": values,
                "provenance": self._provenance(level, idp),
                "level": level.name,
                "lang": lang,
                "session": session,
            },
        )
        return response

    async def _saml_login(
        self,
        request: Request,
        flow: dict[str, object],
        artifact: str | None,
        posted: str | None,
        relay: str | None,
    ) -> Login:
        sp = await self._service_provider()
        given_relay = request.query_params.get("RelayState") if relay is None else relay
        if given_relay != flow["relay"]:
            raise LoginRefusedError("no-flow", "This answer does not belong to this login")
        request_id = str(flow["request"])
        if artifact is not None:
            expires = self._clock() + FLOW_SECONDS
            if not await self._once.use("saml-artifact", artifact, expires):
                raise LoginRefusedError("replay", "This SAML artifact was used before")
            destination, body = await in_thread(sp.artifact_resolve, artifact)
            soap = await self._back_channel.post(destination, body)
            encoded = await in_thread(sp.artifact_response, soap)
            login: Login = await in_thread(sp.response, encoded, "artifact", request_id)
        else:
            if not posted:
                raise LoginRefusedError("malformed", "The SAML answer is missing")
            login = await in_thread(sp.response, posted, "post", request_id)
        keep_until = max(login.not_on_or_after, self._clock()) + 600
        if not await self._once.use(
            "saml-assertion", f"{login.idp} {login.assertion_id}", keep_until
        ):
            raise LoginRefusedError("replay", "This SAML assertion was used before")
        return login

    async def _oidc_login(
        self, request: Request, flow: dict[str, object]
    ) -> tuple[str, Level, str]:
        oidc, settings = self._oidc, self._config.oidc
        if oidc is None or settings is None:  # pragma: no cover - routes only with oidc
            raise LoginRefusedError("invalid", "No OpenID Connect broker is configured")
        params = dict(request.query_params)
        if params.get("error") == "access_denied":
            raise LoginRefusedError("cancelled", "The login was cancelled")
        try:
            pending = oidc.pending(str(flow.get("oidc", "")))
            claims = await oidc.verified_claims(params, pending, f"{self._ctx.public_base}/oidc")
        except IdContactError as exc:
            reason = "level" if type(exc).__name__ == "SsoRefusedError" else "invalid"
            if type(exc).__name__ == "SsoProviderError":
                reason = "unreachable"
            raise LoginRefusedError(reason, "The broker's answer could not be used") from None
        by_acr = {v: LEVELS[n] for n, v in self._acr_values(settings).items()}
        acr = claims.get("acr")
        level = by_acr.get(acr) if isinstance(acr, str) else None
        if level is None:
            level = achieved([str(acr)], self._level) if acr in BY_CLASS_REF else None
        if level is None or level.rank < self._level.rank:
            raise LoginRefusedError("level", "The DigiD level of the login is below the minimum")
        raw = claims.get(settings.bsn_claim)
        if not isinstance(raw, str):
            raise LoginRefusedError("invalid", "The login does not carry a BSN")
        bsn = bsn_of(raw if raw.startswith("s00000000:") else f"s00000000:{raw}")
        return bsn, level, settings.issuer

    async def _logout_url(self, flow: dict[str, object]) -> str | None:
        session = flow.get("session")
        if not self._config.single_logout or not isinstance(session, dict):
            return None
        try:
            sp = await self._service_provider()
            url: str | None = await in_thread(
                sp.logout, str(session["n"]), session.get("s"), secrets.token_urlsafe(16)
            )
        except Exception as exc:  # logging out is a courtesy: never block the resident
            log.warning("digid: single logout failed", extra={"error": type(exc).__name__})
            return None
        return url

    # -- pages ------------------------------------------------------------------------------

    def _lang(self, request: Request) -> str:
        return language(request, self._ctx.settings)

    def _next(self, target: str) -> str:
        return f"{self._ctx.tenant.prefix}/" if target.startswith("tel:") else target

    def _cancelled(self, request: Request, lang: str, target: str) -> HTMLResponse:
        return render(
            self._ctx.templates,
            request,
            "digid_failed.html",
            {"reason": "cancelled", "next": self._next(target), "state": None, "base": ""},
            tenant=self._ctx.tenant,
            lang=lang,
            carries_token=True,
        )

    def _failure(
        self, request: Request, lang: str, reason: str, state: str | None, status: int = 400
    ) -> HTMLResponse:
        response = render(
            self._ctx.templates,
            request,
            "digid_failed.html",
            {
                "reason": reason,
                "next": None,
                "state": state,
                "base": self._ctx.public_base,
            },
            tenant=self._ctx.tenant,
            lang=lang,
            carries_token=True,
        )
        response.status_code = status
        return response
