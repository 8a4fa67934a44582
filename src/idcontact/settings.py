"""Configuration: one TOML file plus ``IDCONTACT_*`` environment overrides.

Validation fails closed: any problem stops start-up with a :class:`ConfigError` that names the
offending setting (``purposes[2].allowed_auth``) and never its value, because values may be keys.
"""

from __future__ import annotations

import ipaddress
import math
import re
import string
import tomllib
from collections.abc import Mapping
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from idcontact.domain.queueing import Channel, OpeningHours
from idcontact.errors import ConfigError
from idcontact.keys import KeyConfig

TAG_PATTERN = r"^[a-z][a-z0-9_]*$"
Role = Literal["core", "auth", "comm"]
ROLES: tuple[Role, ...] = ("core", "auth", "comm")


class Assurance(IntEnum):
    """eIDAS levels of assurance; a purpose states the minimum it needs."""

    low = 1
    substantial = 2
    high = 3


AssuranceName = Literal["low", "substantial", "high"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class Labels(_Model):
    """A text in Dutch (the default) and English."""

    nl: str
    en: str | None = None

    def get(self, lang: str) -> str:
        return self.en if lang == "en" and self.en else self.nl


class LegalBasis(_Model):
    """Why a purpose may process the data: the GDPR ground, the national law, the register entry."""

    gdpr_ground: Literal[
        "consent", "contract", "legal_obligation", "vital_interest", "public_task", "legitimate"
    ] = "public_task"
    law: str = ""
    register_id: str = ""


class EligibilityRule(_Model):
    """A rule on a disclosed attribute, checked when the attributes arrive."""

    attribute: str
    one_of: tuple[str, ...]


class Method(_Model):
    """An auth or comm method: served in-process (``plugin``) and/or remote (``start``)."""

    tag: str = Field(pattern=TAG_PATTERN)
    name: str
    image_path: str = ""
    plugin: str | None = Field(default=None, pattern=TAG_PATTERN)
    start: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Method:
        # ``plugin``: the instance serving this role runs it in-process; ``start``: where the
        # core reaches it when it runs elsewhere (split roles). At least one is needed.
        if self.plugin is None and self.start is None:
            raise ValueError("set 'plugin' (in-process), 'start' (remote URL) or both")
        if self.start is not None and not self.start.startswith(("http://", "https://")):
            raise ValueError("'start' must be an http(s) URL")
        if self.start is not None:
            object.__setattr__(self, "start", self.start.rstrip("/"))
        return self


class AuthMethod(Method):
    assurance: AssuranceName = "low"
    provides: tuple[str, ...] | None = None
    """The attribute tags this method can prove; unset: every tag. A purpose is only offered
    the methods that can prove all its attributes."""
    signature_key: KeyConfig | None = None
    """Public key of a remote auth plugin; used for its tokens that carry no ``kid``."""
    shim_tel_url: bool = False
    disable_attr_url: bool = False


class CommMethod(Method):
    disable_attributes_at_start: bool = False
    channel: Channel = "chat"
    """How the resident talks, for the queue rules: an agent holds several chats but one call."""


class Purpose(_Model):
    tag: str = Field(pattern=TAG_PATTERN)
    attributes: tuple[str, ...]
    allowed_auth: tuple[str, ...] = ()
    allowed_comm: tuple[str, ...] = ()
    label: Labels | None = None
    legal_basis: LegalBasis = LegalBasis()
    min_assurance: AssuranceName = "low"
    eligibility: tuple[EligibilityRule, ...] = ()
    retention_minutes: int = Field(default=120, gt=0, le=7 * 24 * 60)
    idle_minutes: int = Field(default=15, gt=0, le=24 * 60)
    allow_unidentified: bool = False
    """Offer "talk without identifying" for this topic (the agent then sees no data)."""
    subject_attribute: str | None = None
    """The attribute that identifies the resident (e.g. ``bsn``); the audit log keeps only a
    keyed pseudonym of it, so "who saw my data?" can be answered without keeping it."""
    queue: str | None = None
    """The queue this topic's conversations wait in; unset: the tenant's first queue."""


class Queue(_Model):
    """A queue of waiting residents, served by the agents who are members of it."""

    tag: str = Field(pattern=TAG_PATTERN)
    name: Labels = Labels(nl="Algemeen", en="General")
    opening_hours: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """``{mon = ["08:30-12:00", "13:00-17:00"], …}``; empty: always open."""
    closed_dates: tuple[str, ...] = ()
    """ISO dates on which the queue is closed (public holidays)."""
    time_zone: str = "Europe/Amsterdam"
    handle_seconds: float = Field(default=300.0, gt=0, le=24 * 3600)
    """Seed of the moving average handle time, used until conversations have finished."""
    max_chats: int = Field(default=3, ge=1, le=20)
    """How many chats one agent may hold at once (never more than one call or video)."""
    offer_seconds: int = Field(default=30, ge=5, le=600)
    """An offer not accepted in this time returns the conversation to the head of the queue."""
    long_wait_seconds: int = Field(default=300, ge=0, le=24 * 3600)
    """Above this expected wait the resident is told the wait is long."""
    max_waiting: int = Field(default=0, ge=0, le=100_000)
    """Full at this many waiting (0: never full); then ``overflow_to`` takes new arrivals."""
    overflow_to: str | None = Field(default=None, pattern=TAG_PATTERN)
    """A queue for residents who arrive when this one is closed or full. They are helped
    without their data: the attributes are deleted as they move (an unidentified queue)."""

    @model_validator(mode="after")
    def _hours(self) -> Queue:
        # Parsed here so a typo stops start-up instead of closing the queue silently.
        try:
            self.hours()
        except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"opening hours: {exc}") from None
        return self

    def hours(self) -> OpeningHours:
        return OpeningHours.parse(dict(self.opening_hours), self.time_zone, self.closed_dates)


GENERAL_QUEUE = Queue(tag="general")


class Keys(_Model):
    """Key material. All keys are ``{type = "RSA"|"EC", key = PEM}`` or ``key_file = path``.

    Missing keys are generated on first run into ``<data_dir>/keys`` (demo keys).
    """

    signing: KeyConfig | None = None
    """Auth side: signs attribute tokens."""
    encryption_public: KeyConfig | None = None
    """Auth side: the comm side's public key that attribute tokens are encrypted to."""
    decryption: tuple[KeyConfig, ...] = ()
    """Comm side: private keys that open attribute tokens (several during a rotation)."""
    trusted_signers: dict[str, KeyConfig] = Field(default_factory=dict)
    """Comm side: kid → public key of auth plugins whose tokens we accept."""
    fallback_signer: KeyConfig | None = None
    """Comm side: key for tokens without ``kid`` (every original ID Contact plugin)."""
    ui_signing: KeyConfig | None = None
    """Core: signs the tel page token."""
    authonly_request_keys: dict[str, KeyConfig] = Field(default_factory=dict)
    """Core: kid → public key of channels that may start auth-only sessions."""
    requestor: KeyConfig | None = None
    """Comm side: signs our own auth-only start requests (auth during a conversation)."""
    generate: Literal["EC", "RSA"] = "EC"
    """Type of the demo keys generated on first run for keys not configured above."""
    directory: Path | None = None
    """A rotating key directory (``idcontact keys rotate``): signing and attribute encryption
    keys by kid, for those of ``signing``, ``encryption_public``, ``decryption`` and
    ``trusted_signers`` not set above (docs/operations.md#key-rotation)."""


HEX_COLOUR = r"^#[0-9a-fA-F]{6}$"


def _at_least_32(v: SecretStr) -> SecretStr:
    if len(v.get_secret_value()) < 32:
        raise ValueError("must be at least 32 characters")
    return v


LongSecret = Annotated[SecretStr, AfterValidator(_at_least_32)]
"""A secret that keys an HMAC: 32 characters at the least."""


class Design(_Model):
    """Design tokens of a tenant, in the spirit of NL Design System (validated: they reach CSS)."""

    primary_color: str = Field(default="#154273", pattern=HEX_COLOUR)
    text_color: str = Field(default="#1a1a1a", pattern=HEX_COLOUR)
    background_color: str = Field(default="#ffffff", pattern=HEX_COLOUR)
    font_family: str = Field(default="system-ui, sans-serif", pattern=r"^[A-Za-z0-9 ,'\"-]{1,200}$")


PHONE_PATTERN = r"^(\+?[0-9][0-9 ()-]{2,24})?$"


def phone_digits(number: str) -> str:
    """A number as the digits a PBX delivers: ``+31 20 123 4567`` → ``0201234567``."""
    digits = "".join(c for c in number if c.isdigit())
    if number.strip().startswith("+31"):
        return "0" + digits[2:]
    if digits.startswith("0031"):
        return "0" + digits[4:]
    return digits


class RecordLink(_Model):
    """A link from the attribute panel to the resident's record elsewhere (KISS, say): a URL
    template whose ``{tag}`` placeholders are filled with disclosed attributes, URL-encoded."""

    label: str = Field(min_length=1, max_length=80)
    url: str = Field(max_length=500)

    @field_validator("url")
    @classmethod
    def _template(cls, v: str) -> str:
        if not v.startswith("https://") and not v.startswith("http://127.0.0.1"):
            raise ValueError("must be an https URL template")
        try:
            fields = [(n, spec, conv) for _, n, spec, conv in string.Formatter().parse(v)]
        except ValueError:
            raise ValueError("must be a URL template with {attribute} placeholders") from None
        names = [n for n, spec, conv in fields if n is not None and not spec and conv is None]
        plain = len(names) == sum(1 for n, _, _ in fields if n is not None)
        if not names or not plain or not all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names):
            raise ValueError("needs {attribute} placeholders, e.g. {bsn}")
        return v

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(n for _, n, _, _ in string.Formatter().parse(self.url) if n is not None)

    def for_attributes(self, values: Mapping[str, object]) -> str | None:
        """The link for these attributes; ``None`` unless every placeholder was disclosed."""
        if not all(isinstance(values.get(n), str) and values.get(n) for n in self.attributes):
            return None
        return self.url.format_map({n: quote(str(values[n]), safe="") for n in self.attributes})


def _origin(value: str) -> str:
    """An origin a browser sends and CSP matches: scheme, host and optional port, no path.
    https only, except the loopback addresses for development."""
    parts = urlsplit(value)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not local):
        raise ValueError("must be an https origin, such as https://kiss.gemeente.example")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be an origin (scheme://host[:port]) without a path")
    if parts.username or parts.password or not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", parts.netloc):
        raise ValueError("must be an origin (scheme://host[:port]) without a path")
    return f"{parts.scheme}://{parts.netloc.lower()}"


EmbedOrigin = Annotated[str, AfterValidator(_origin)]


class Transcripts(_Model):
    """What happens to a conversation's messages (chat, video chat, form) when it ends."""

    keep: Literal["delete", "hand_over"] = "delete"
    """``delete``: destroyed with the conversation. ``hand_over``: first handed, with the
    conversation's attributes, to the municipality's customer-contact system (archiving rules
    may require it) through the ``plugin``; kept sealed until that succeeds."""
    plugin: str | None = None
    """The hand-over plugin (entry point group ``idcontact.handover``): ``webhook`` built in."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """The plugin's own settings (for ``webhook``: ``url``, ``token``/``token_file``)."""
    retry_hours: int = Field(default=24, ge=1, le=14 * 24)
    """How long a failing hand-over is retried; then the data is destroyed anyway (and an
    alarm logged), so no conversation outlives this by accident."""

    @model_validator(mode="after")
    def _plugin_when_handing_over(self) -> Transcripts:
        if self.keep == "hand_over" and not self.plugin:
            raise ValueError("plugin: keep = 'hand_over' needs a hand-over plugin")
        return self


KANALEN: dict[str, str] = {
    "phone": "telefoon",
    "chat": "chat",
    "video": "video",
    "form": "contactformulier",
}
"""The ``kanaal`` of a klantcontact per channel, unless a tenant names its own."""


class _Api(_Model):
    """An HTTP API we call with a token: the URL, and the token inline or in a file."""

    url: str
    token: SecretStr | None = None
    """The API token; or ``token_file``."""
    token_file: Path | None = None
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_token(self) -> _Api:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("token: set exactly one of token and token_file")
        return self

    def read_token(self, where: str) -> str:
        """The token, from the setting or its file; a ConfigError names the setting only."""
        if self.token is not None:
            return self.token.get_secret_value()
        try:
            token = self.token_file.read_text().strip() if self.token_file else ""
        except OSError:
            raise ConfigError(f"{where}.token_file: cannot be read") from None
        if not token:
            raise ConfigError(f"{where}.token_file: is empty")
        return token


class Sms(_Api):
    """An SMS gateway, for texting a caller the link to identify during a call
    (docs/phone.md): ``POST url`` with JSON ``{"to", "from", "text"}`` and
    ``Authorization: Bearer <token>``."""

    sender: str = Field(default="Gemeente", pattern=r"^[A-Za-z0-9]{1,11}$")
    """The sender name the resident sees (alphanumeric, at most 11 characters)."""


class Klantinteracties(_Api):
    """The municipality's Klantinteracties API (Open Klant): where an agent registers a
    contact, on an explicit action (docs/klantinteracties.md). ``url``: the API root, e.g.
    ``https://openklant.example.nl/klantinteracties/api/v1``; the token is sent as
    ``Authorization: Token <token>``."""

    kanalen: dict[str, str] = Field(default_factory=dict)
    """Channel → ``kanaal`` name, over the defaults (``telefoon``, ``chat``, ``video``,
    ``contactformulier``)."""
    bsn_attribute: str = "bsn"
    """The attribute that holds the BSN; a purpose that discloses it registers an identified
    contact (a ``partij`` found or made by that BSN), any other an unidentified one."""
    callback_action: str = Field(default="Terugbellen", min_length=1, max_length=200)
    """The ``gevraagdeHandeling`` of a callback request (an ``internetaak``)."""
    callback_actor: str | None = Field(default=None, pattern=r"^[0-9a-fA-F-]{36}$")
    """UUID of the ``actor`` (a team or employee) callback tasks are assigned to."""
    confidential: bool = False
    """Mark every klantcontact ``vertrouwelijk``; identified ones and those with a transcript
    always are."""
    retry_hours: int = Field(default=24, ge=1, le=14 * 24)
    """How long a failing registration is retried; then it is given up and its sealed data
    destroyed (the agent sees why)."""

    @model_validator(mode="after")
    def _kanalen(self) -> Klantinteracties:
        for channel, name in self.kanalen.items():
            if not 0 < len(name) <= 50:
                raise ValueError(f"kanalen.{channel}: 1 to 50 characters")
        return self

    def kanaal(self, channel: str | None) -> str:
        channel = channel or "chat"
        return self.kanalen.get(channel) or KANALEN.get(channel, channel)[:50]


class Phone(_Model):
    """ID Bellen for one tenant: the line residents call and how its link codes behave.

    The defaults keep the chance that an attacker links a call to someone's live code below
    1 in a million per day (``idcontact check-config`` prints it and refuses more).
    """

    number: str = Field(default="", pattern=PHONE_PATTERN)
    """The ID Bellen number residents dial (national, ``14 0xx`` or international); the
    tenant's ``phone_number`` when empty."""
    dialled: tuple[str, ...] = ()
    """Further forms in which the PBX may deliver that number, for routing calls to tenants."""
    code_length: int = Field(default=10, ge=6, le=16)
    wallet_window_seconds: int = Field(default=300, ge=30, le=3600)
    """How long after the attributes arrive a code links when a wallet dials it."""
    typed_window_seconds: int = Field(default=900, ge=30, le=3600)
    """The same when the code was shown on a page and may be typed by hand."""
    max_linkable_codes: int = Field(default=50, ge=1, le=1_000_000)
    """Codes that may be linkable at once; a new phone conversation beyond it is refused."""
    failed_link_budget: int = Field(default=100, ge=1, le=10_000_000)
    """Failed link attempts per rolling 24 hours for the whole tenant; beyond it linking stops
    (calls still reach an agent, unidentified) and an alarm is logged."""
    caller_failures_per_hour: int = Field(default=6, ge=1, le=1000)
    """Failed attempts per caller number (or per "withheld") per hour, on top of the budget."""
    tries_per_call: int = Field(default=3, ge=1, le=10)
    first_digit_seconds: float = Field(default=10.0, ge=2, le=60)
    """After the greeting, how long a silent caller has to start typing before the call goes
    on as one without a code."""
    next_digit_seconds: float = Field(default=5.0, ge=1, le=30)
    """The longest pause between two digits before the digits so far count as an attempt."""
    fallback_purpose: str | None = None
    """Purpose of calls that link no code (must allow unidentified conversations); without it
    such calls are told to identify first and are ended."""
    announce_every_seconds: int = Field(default=120, ge=30, le=3600)
    """How often a waiting caller hears their place and expected wait again."""
    language: Literal["nl", "en"] = "nl"
    """The language of the phone prompts."""
    identify_code_length: int = Field(default=6, ge=6, le=12)
    """Digits of the code an agent reads out to a caller who should identify during the call."""
    identify_code_minutes: int = Field(default=10, ge=1, le=60)
    """How long such a code works (once)."""
    sms: Sms | None = None
    """An SMS gateway: the agent can also text the caller a link with that code."""
    webhook_secret: LongSecret | None = None
    """Enables ``/link_phone`` and ``/session_info`` for another contact-centre platform, which
    authenticates with it as a bearer token or an HMAC signature (docs/phone.md)."""

    @model_validator(mode="after")
    def _guessing_bound(self) -> Phone:
        chance = self.hijack_chance()
        if chance > MAX_HIJACK_CHANCE:
            raise ValueError(
                f"an attacker would link a call to someone's live code with a chance of "
                f"{chance:.1e} per day (more than 1 in a million); use longer codes, a smaller "
                "failed_link_budget or fewer max_linkable_codes"
            )
        return self

    def hijack_chance(self) -> float:
        """Chance per day that an attacker guessing codes links to someone's live code: at most
        ``failed_link_budget`` guesses, each hitting one of ``max_linkable_codes`` out of
        ``10**code_length`` (spoofed caller IDs make the per-caller limit no bound)."""
        p = self.max_linkable_codes / 10**self.code_length
        return float(-math.expm1(self.failed_link_budget * math.log1p(-min(p, 1.0))))


MAX_HIJACK_CHANCE = 1e-6


class Telephony(_Model):
    """Asterisk's REST interface (ARI), shared by every tenant's phone line."""

    ari_url: str | None = None
    """E.g. ``http://127.0.0.1:8088/ari``; unset: no PBX (the webhook and demo page remain)."""
    ari_user: str = "idcontact"
    ari_password: SecretStr | None = None
    app: str = Field(default="idcontact", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """The Stasis application name in the PBX dialplan: ``Stasis(idcontact,inbound)``."""
    agent_ring_seconds: int = Field(default=25, ge=5, le=120)
    """How long an agent's phone rings before the call goes back to the head of the line."""

    @field_validator("ari_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/") if v else v


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Ops(_Model):
    """Operations: who may read ``/metrics``, how an instance drains, how it logs
    (docs/operations.md)."""

    metrics_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """Client networks that may read ``/metrics`` without a token. Requests that came through
    a proxy (``X-Forwarded-For``/``Forwarded``) never qualify: they need the token."""
    metrics_token: LongSecret | None = None
    """Bearer token that reads ``/metrics`` from anywhere (≥ 32 characters)."""
    drain_seconds: float = Field(default=3.0, ge=0, le=300)
    """On SIGTERM: how long the instance refuses new conversations and streams (503, so the
    proxy sends them elsewhere) and finishes the rest before it stops listening."""
    log_format: Literal["json", "text"] = "json"
    """``json``: one object a line with ``cid`` (docs/operations.md); ``text``: for a terminal."""
    log_levels: dict[str, LogLevel] = Field(default_factory=dict)
    """Per logger, e.g. ``{"idcontact.phone" = "DEBUG"}``; libraries that log URLs or SQL stay
    at WARNING whatever is set here."""
    gc_freeze_seconds: float = Field(default=5.0, ge=0, le=3600)
    """How often ``serve`` moves what survived into the garbage collector's frozen generation,
    which no collection walks (0: never after start-up; Python's own policy)."""
    gc_full_minutes: float = Field(default=60.0, gt=0, le=1440)
    """How often it walks everything, frozen or not, to reclaim what died in a cycle while
    frozen: a pause of ~0.35 ms per open chat."""

    @field_validator("metrics_networks")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"not an IP network: {net!r}") from None
        return v


class IrmaRequestor(_Model):
    """Who may start sessions on the built-in IRMA server, and how it authenticates.

    ``token``: ``secret`` is the API key sent in ``Authorization``. ``hmac``: ``secret`` is the
    base64 HS256 key of JWT requests. ``publickey``: ``key`` is the RSA public key of RS256 JWT
    requests. The same three methods as the Go server's ``--requestors``.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    auth: Literal["token", "hmac", "publickey"] = "token"
    secret: LongSecret | None = None
    key: KeyConfig | None = None
    hosts: tuple[str, ...] = ()
    """Host names it may ask for in session URLs (a request's ``host``)."""

    @model_validator(mode="after")
    def _credential(self) -> IrmaRequestor:
        if self.auth == "publickey":
            if self.key is None or self.key.type != "RSA" or self.secret is not None:
                raise ValueError("publickey: set key (an RSA public key), not secret")
        elif self.secret is None or self.key is not None:
            raise ValueError(f"{self.auth}: set secret, not key")
        return self


class Irma(_Model):
    """The built-in IRMA (Yivi) server, served at ``/yivi`` (issue #5).

    Not yet independently reviewed: the Go ``irma server`` is the recommended production
    backend. ``production`` turns developer mode off: the Yivi app is told ``devMode: false``
    and insists on HTTPS, the scheme directory and the result-signing key must be configured.
    """

    enabled: bool = False
    production: bool = False
    schemes_path: Path | None = None
    """A directory of scheme directories (``irma_configuration``); unset outside production:
    the packaged demo scheme ``irma-demo``."""
    requestors: tuple[IrmaRequestor, ...] = ()
    jwt_key: KeyConfig | None = None
    """RSA private key that signs ``result-jwt``; unset outside production: generated."""
    jwt_issuer: str = "idcontact"
    max_session_lifetime: int = Field(default=900, ge=60, le=3600)
    result_lifetime: int = Field(default=300, ge=10, le=3600)
    max_request_age: int = Field(default=300, ge=10, le=3600)
    """How old a requestor's JWT may be."""
    max_sessions: int = Field(default=10_000, ge=1, le=1_000_000)
    scheme_urls: dict[str, str] = Field(default_factory=dict)
    """Scheme id → the URL it is published at, for the schemes in ``schemes_path`` that are
    kept up to date (``https://schemes.yivi.app/pbdf``); each keeps its own pinned key."""
    scheme_update_minutes: int = Field(default=0, ge=0, le=7 * 24 * 60)
    """How often to update them: at start and then every so many minutes; 0: never."""
    demo_wallet: bool = False
    """Serve the demo wallet at ``/demo-wallet`` (the app's part in a browser tab, with demo
    credentials of the packaged ``irma-demo`` scheme); not in production."""

    @model_validator(mode="after")
    def _production(self) -> Irma:
        if self.jwt_key is not None and self.jwt_key.type != "RSA":
            raise ValueError("jwt_key: must be an RSA key (result-jwt is RS256)")
        _unique("requestors", [r.name for r in self.requestors], key="name")
        if self.production and (self.schemes_path is None or self.jwt_key is None):
            raise ValueError("production: set schemes_path and jwt_key")
        if self.demo_wallet and (self.production or self.schemes_path is not None):
            raise ValueError("demo_wallet: only outside production, on the packaged demo scheme")
        if self.scheme_urls and self.schemes_path is None:
            raise ValueError("scheme_urls: set schemes_path (the packaged demo scheme is fixed)")
        for scheme, url in self.scheme_urls.items():
            if not url.startswith(("https://", "http://")) or "/" in scheme:
                raise ValueError(f"scheme_urls.{scheme}: must be an http(s) URL")
        return self


class SsoGroup(_Model):
    """One group of the identity provider and what its members are in this tenant."""

    group: str = Field(min_length=1, max_length=256)
    """The group as the ID token names it in ``groups_claim`` (an id or a name)."""
    role: Literal["agent", "supervisor", "admin"] = "agent"
    queues: tuple[str, ...] = ("*",)
    """The tenant's queues its members serve; ``*``: all."""


class AgentSso(_Model):
    """Agent login through the municipality's identity provider (OpenID Connect).

    The provider authenticates (with its own second factor); its groups say who may work for
    this tenant, with which role and queues. See docs/agent-console.md.
    """

    issuer: str
    """The provider's issuer URL; its ``/.well-known/openid-configuration`` is read from it."""
    client_id: str = Field(min_length=1, max_length=256)
    client_secret: SecretStr | None = None
    """The client secret ID Contact authenticates with (HTTP Basic at the token endpoint)."""
    client_secret_file: Path | None = None
    """A file holding the client secret instead (one of the two is required)."""
    label: str = Field(default="", max_length=80)
    """The button text: "Inloggen met <label>"; default: the tenant's name."""
    scopes: tuple[str, ...] = ("openid", "profile")
    groups_claim: str = Field(default="groups", min_length=1, max_length=100)
    """The ID token claim holding the user's groups (a list, or one string)."""
    name_claim: str = Field(default="name", min_length=1, max_length=100)
    """The claim shown as the agent's name in the console (never written to the audit log)."""
    groups: tuple[SsoGroup, ...]
    """Which groups may log in here, with which role and queues; a user in several groups
    gets the highest role and the queues of all of them. Nobody else gets in."""
    require_acr: tuple[str, ...] = ()
    """If set, the ID token's ``acr`` must be one of these (e.g. a multi-factor level)."""
    allow_http: bool = False
    """Accept a plain-HTTP issuer on 127.0.0.1/localhost (tests and demos only)."""
    algorithms: tuple[Literal["RS256", "PS256", "ES256", "EdDSA"], ...] = ("RS256", "ES256")
    """ID token signature algorithms accepted (never ``none`` or a shared-secret one)."""

    @model_validator(mode="after")
    def _check(self) -> AgentSso:
        url = urlsplit(self.issuer)
        if url.scheme == "http":
            if not (self.allow_http and url.hostname in ("127.0.0.1", "localhost", "::1")):
                raise ValueError(
                    "issuer: must be an https URL (plain http only on 127.0.0.1 with allow_http)"
                )
        elif url.scheme != "https" or not url.hostname or url.query or url.fragment:
            raise ValueError("issuer: must be an https URL without query or fragment")
        if (self.client_secret is None) == (self.client_secret_file is None):
            raise ValueError(
                "client_secret: set exactly one of client_secret and client_secret_file"
            )
        if "openid" not in self.scopes:
            raise ValueError("scopes: must include 'openid'")
        if not self.groups:
            raise ValueError("groups: map at least one group to a role")
        _unique("groups", [g.group for g in self.groups], key="group")
        if not self.algorithms:
            raise ValueError("algorithms: name at least one")
        return self

    def secret(self) -> str:
        """The client secret, read now (a file may be rotated without a restart)."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        path = self.client_secret_file or Path()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise ConfigError("agent_sso.client_secret_file: cannot be read") from None
        if not text:
            raise ConfigError("agent_sso.client_secret_file: is empty")
        return text


class TenantFields(_Model):
    """What each municipality configures for itself: name, look, purposes, methods and keys.

    The root of the configuration holds the default tenant (served at ``/``); ``[[tenants]]``
    holds the others (served at ``/t/<slug>/``).
    """

    name: str = "ID Contact"
    logo: str = Field(default="", pattern=r"^(/[^\s\"'<>]*)?$")
    """Path of the logo on this instance (``/static/…``); no third-party hosts."""
    design: Design = Design()
    phone_number: str = Field(default="", pattern=PHONE_PATTERN)
    """The municipality's general phone number, told to residents who face a long wait."""
    pseudonym_secret: LongSecret | None = None
    """Keys the residents' pseudonyms in the audit log (≥ 32 characters). Unset: derived from
    the internal secret and the slug; set it in production, since rotating the internal secret
    would change the pseudonyms."""
    keys: Keys = Keys()
    attribute_labels: dict[str, Labels] = Field(default_factory=dict)
    auth_methods: tuple[AuthMethod, ...] = ()
    comm_methods: tuple[CommMethod, ...] = ()
    purposes: tuple[Purpose, ...] = ()
    plugins: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    """Per-method plugin settings: ``[plugins.auth.<tag>]``, ``[plugins.comm.<tag>]``."""
    queues: tuple[Queue, ...] = ()
    """Queues with opening hours; unset: one queue ``general``, always open."""
    sensitive_attributes: tuple[str, ...] = ("bsn",)
    """Attributes masked in the agent console until the agent clicks "show" (audited)."""
    wrap_up_seconds: int = Field(default=120, ge=0, le=3600)
    """After a conversation ends the agent keeps its data this long (wrap-up), then it is gone."""
    record_links: tuple[RecordLink, ...] = ()
    """Links from the agent's panel to the resident's record in the contact-centre system."""
    audit_retention_days: int = Field(default=365, ge=1, le=3650)
    """Audit events older than this are deleted (the chain stays verifiable from its start)."""
    phone: Phone = Phone()
    """ID Bellen: the phone line and its link codes (docs/phone.md)."""
    transcripts: Transcripts = Transcripts()
    """At the end of a conversation with messages: delete them, or hand them over first."""
    embed_origins: tuple[EmbedOrigin, ...] = ()
    """Origins (``https://kiss.gemeente.example``) of the agent desktops that may show the
    attribute panel in a frame (``/agent/embed/…``, docs/agent-console.md); unset: none."""
    agent_sso: AgentSso | None = None
    """Agents of this tenant log in through its identity provider (OpenID Connect)."""
    klantinteracties: Klantinteracties | None = None
    """The Klantinteracties API agents register contacts in; unset: no registration."""

    @model_validator(mode="after")
    def _cross_checks(self) -> TenantFields:
        auth = {m.tag: m for m in self.auth_methods}
        comm = {m.tag: m for m in self.comm_methods}
        _unique("auth_methods", [m.tag for m in self.auth_methods])
        _unique("comm_methods", [m.tag for m in self.comm_methods])
        _unique("purposes", [p.tag for p in self.purposes])
        _unique("queues", [q.tag for q in self.queues])
        queue_tags = [q.tag for q in self.all_queues]
        for i, queue in enumerate(self.all_queues):
            spill = queue.overflow_to
            if spill is not None and (spill not in queue_tags or spill == queue.tag):
                raise ValueError(f"queues[{i}].overflow_to: must be another queue of the tenant")
        expanded: list[Purpose] = []
        for i, p in enumerate(self.purposes):
            if p.queue is not None and p.queue not in queue_tags:
                raise ValueError(f"purposes[{i}].queue: unknown queue {p.queue!r}")
            minimum = Assurance[p.min_assurance]

            def proves(m: AuthMethod, p: Purpose = p) -> bool:
                return m.provides is None or set(p.attributes) <= set(m.provides)

            if "*" in p.allowed_auth:
                # The wildcard means "every method good enough for this purpose".
                allowed_auth = tuple(
                    t for t, m in auth.items() if Assurance[m.assurance] >= minimum and proves(m)
                )
            else:
                for tag in p.allowed_auth:
                    if tag not in auth:
                        raise ValueError(f"purposes[{i}].allowed_auth: unknown auth method {tag!r}")
                    if not proves(auth[tag]):
                        raise ValueError(
                            f"purposes[{i}].allowed_auth: method {tag!r} cannot prove all of "
                            "the purpose's attributes (its 'provides')"
                        )
                    if Assurance[auth[tag].assurance] < minimum:
                        raise ValueError(
                            f"purposes[{i}].allowed_auth: method {tag!r} provides assurance "
                            f"{auth[tag].assurance!r}, below the purpose's min_assurance "
                            f"{p.min_assurance!r}"
                        )
                allowed_auth = p.allowed_auth
            if "*" in p.allowed_comm:
                allowed_comm = tuple(comm)
            else:
                for tag in p.allowed_comm:
                    if tag not in comm:
                        raise ValueError(f"purposes[{i}].allowed_comm: unknown comm method {tag!r}")
                allowed_comm = p.allowed_comm
            if p.subject_attribute is not None and p.subject_attribute not in p.attributes:
                raise ValueError(
                    f"purposes[{i}].subject_attribute: {p.subject_attribute!r} is not one of the "
                    "purpose's attributes"
                )
            for j, rule in enumerate(p.eligibility):
                if rule.attribute not in p.attributes:
                    raise ValueError(
                        f"purposes[{i}].eligibility[{j}].attribute: {rule.attribute!r} is not "
                        "one of the purpose's attributes"
                    )
            expanded.append(
                p.model_copy(update={"allowed_auth": allowed_auth, "allowed_comm": allowed_comm})
            )
        object.__setattr__(self, "purposes", tuple(expanded))
        fallback = self.phone.fallback_purpose
        if fallback is not None:
            target = next((p for p in expanded if p.tag == fallback), None)
            if target is None:
                raise ValueError(f"phone.fallback_purpose: unknown purpose {fallback!r}")
            if not target.allow_unidentified:
                raise ValueError(
                    f"phone.fallback_purpose: purpose {fallback!r} does not allow unidentified "
                    "conversations (allow_unidentified)"
                )
        if self.agent_sso is not None:
            for i, g in enumerate(self.agent_sso.groups):
                for q in g.queues:
                    if q != "*" and q not in queue_tags:
                        raise ValueError(f"agent_sso.groups[{i}].queues: unknown queue {q!r}")
        disclosed = {a for p in self.purposes for a in p.attributes}
        for i, link in enumerate(self.record_links):
            unknown = [a for a in link.attributes if a not in disclosed]
            if unknown:
                raise ValueError(
                    f"record_links[{i}].url: {', '.join(unknown)} is no purpose's attribute"
                )
        if any(m.channel == "phone" for m in self.comm_methods) and not self.phone_line:
            raise ValueError("phone.number: a phone comm method needs the number to call")
        return self

    # -- derived values -------------------------------------------------------------------

    def purpose(self, tag: str) -> Purpose | None:
        return next((p for p in self.purposes if p.tag == tag), None)

    def auth_method(self, tag: str) -> AuthMethod | None:
        return next((m for m in self.auth_methods if m.tag == tag), None)

    def comm_method(self, tag: str) -> CommMethod | None:
        return next((m for m in self.comm_methods if m.tag == tag), None)

    @property
    def all_queues(self) -> tuple[Queue, ...]:
        return self.queues or (GENERAL_QUEUE,)

    def queue_of(self, purpose: Purpose) -> Queue:
        """The queue a purpose's conversations wait in."""
        tag = purpose.queue or self.all_queues[0].tag
        return next(q for q in self.all_queues if q.tag == tag)

    @property
    def phone_line(self) -> str:
        """The number residents dial for ID Bellen."""
        return self.phone.number or self.phone_number

    def attribute_label(self, tag: str, lang: str) -> str:
        label = self.attribute_labels.get(tag)
        return label.get(lang) if label else tag


DEFAULT_TENANT = "default"


class Tenant(TenantFields):
    """One municipality of a shared deployment."""

    slug: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")

    @property
    def prefix(self) -> str:
        """The URL prefix: none for the default tenant (wire compatibility), else ``/t/<slug>``."""
        return "" if self.slug == DEFAULT_TENANT else f"/t/{self.slug}"


class Settings(TenantFields, BaseSettings):
    """The root of the configuration: the deployment, and the default tenant's own fields."""

    model_config = SettingsConfigDict(
        env_prefix="IDCONTACT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
    )

    public_url: str = "http://127.0.0.1:8000"
    """Base URL browsers use to reach this instance (no trailing slash)."""
    internal_url: str | None = None
    """Base URL other roles use to reach this instance; ``None`` means in-process."""
    core_url: str | None = None
    """Where a channel role reaches the core (its auth-only starts); ``None``: in-process."""
    data_dir: Path = Path("data")
    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite+aiosqlite:///<data_dir>/idcontact.sqlite3``."""
    database_units: int = Field(default=8, ge=1, le=64)
    """PostgreSQL: units of work at once per process (``storage.db.POSTGRES_UNITS``); each
    holds a connection, and the pool holds three times as many. More for a distant database."""
    keystore: Literal["auto", "sqlite", "postgres", "redis"] = "auto"
    """Where data keys live; ``auto``: a key file beside SQLite, UNLOGGED table on PostgreSQL."""
    redis_url: str | None = None
    internal_secret: LongSecret | None = None
    """HMAC secret for URL state (≥ 32 characters); generated into the data dir if absent."""
    status_spelling: Literal["succes", "success"] = "succes"
    plugin_timeout: float = Field(default=5.0, gt=0, le=60)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    token_leeway: int = Field(default=5, ge=0, le=120)
    auto_migrate: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    default_language: Literal["nl", "en"] = "nl"
    agent_session_hours: float = Field(default=9.0, gt=0, le=24)
    """An agent's login lasts at most this long (one working day)."""
    agent_idle_minutes: int = Field(default=30, ge=1, le=24 * 60)
    """An agent's session ends after this long without any request."""

    tenants: tuple[Tenant, ...] = ()
    """Further municipalities in this deployment, each at ``/t/<slug>/``."""
    telephony: Telephony = Telephony()
    """The PBX behind the phone channel (Asterisk through ARI)."""
    irma: Irma = Field(default_factory=Irma)
    """The built-in IRMA server (``/yivi``)."""
    ops: Ops = Field(default_factory=Ops)
    """Metrics access, draining on SIGTERM, log format (docs/operations.md)."""

    @field_validator("public_url", "internal_url", "core_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _irma_https(self) -> Settings:
        if self.irma.enabled and self.irma.production and not self.public_url.startswith("https"):
            raise ValueError("irma.production: public_url must be an https URL (the app insists)")
        return self

    @model_validator(mode="after")
    def _tenant_slugs(self) -> Settings:
        slugs = [t.slug for t in self.tenants]
        _unique("tenants", slugs, key="slug")
        if DEFAULT_TENANT in slugs:
            raise ValueError(f"tenants: the slug {DEFAULT_TENANT!r} is the root configuration's")
        return self

    @property
    def default_tenant(self) -> Tenant:
        fields = {name: getattr(self, name) for name in TenantFields.model_fields}
        return Tenant.model_construct(slug=DEFAULT_TENANT, **fields)

    @property
    def all_tenants(self) -> tuple[Tenant, ...]:
        """The default tenant first, then the others."""
        return (self.default_tenant, *self.tenants)

    def tenant(self, slug: str) -> Tenant | None:
        return next((t for t in self.all_tenants if t.slug == slug), None)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'idcontact.sqlite3'}"

    @property
    def resolved_keystore(self) -> Literal["sqlite", "postgres", "redis"]:
        if self.keystore != "auto":
            return self.keystore
        return "postgres" if self.resolved_database_url.startswith("postgresql") else "sqlite"


def _unique(where: str, tags: list[str], key: str = "tag") -> None:
    seen: set[str] = set()
    for i, tag in enumerate(tags):
        if tag in seen:
            raise ValueError(f"{where}[{i}].{key}: duplicate {key} {tag!r}")
        seen.add(tag)


def _describe(exc: ValidationError) -> str:
    """Render validation errors with their location and reason, never the input value."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"])
        loc = loc.replace(".[", "[")
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        # Cross-field checks raise with the location already in the message.
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


class _FileSource(PydanticBaseSettingsSource):
    """The parsed TOML file as the lowest-priority settings source."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def load_settings(
    config_file: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Load and validate the configuration; raise :class:`ConfigError` on any problem.

    Priority: ``overrides`` (command-line flags), then ``IDCONTACT_*`` variables, then the file.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_file}") from None
        except tomllib.TOMLDecodeError as exc:
            # The decoder names a line and column, never a value.
            raise ConfigError(f"{config_file}: not valid TOML ({exc})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_file}: cannot be read ({type(exc).__name__})") from None

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _FileSource(settings_cls, data))

    try:
        return _Loaded(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from None
    except SettingsError as exc:
        # Names the field and the source ("from source EnvSettingsSource"), not the value.
        raise ConfigError(f"invalid configuration: {exc}") from None
