"""The composition root: ``create_app(settings)`` builds one instance serving one or more roles.

Nothing is built at import time. The lifespan owns the resources (database, key store, HTTP
client, sweeper). In the embedded mode every role runs here and the core reaches in-process
plugins over the same HTTP contract through an in-memory transport, without a network hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from joserfc.jwk import RSAKey
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idcontact import __version__
from idcontact.agents.directory import AgentDirectory
from idcontact.agents.sso import OidcClient
from idcontact.conversations import PURGE_BATCH, Conversations
from idcontact.core import Core
from idcontact.errors import ConfigError
from idcontact.events import Bus, LocalBus, RedisBus
from idcontact.heap import HeapKeeper
from idcontact.irma.download import update_all
from idcontact.irma.requestors import Requestor, Requestors
from idcontact.irma.schemes import Schemes
from idcontact.irma.sessions import Sessions
from idcontact.irma.xml import SchemeError
from idcontact.keyring import KeyRing, demo_pair, load_keyring
from idcontact.klantinteracties import KlantinteractiesClient, Registrations
from idcontact.logs import quiet_libraries
from idcontact.ops import (
    Check,
    Drain,
    Metrics,
    Scrape,
    database_check,
    install as install_ops,
    plugin_checks,
)
from idcontact.phone.ari import AriClient
from idcontact.phone.calls import Calls, PhoneLine
from idcontact.phone.codes import LinkCodes
from idcontact.phone.sms import SmsGateway
from idcontact.plugins.base import INPROC_BASE, Kind, Plugin, PluginContext, load_plugin_class
from idcontact.plugins.comm.common import AuthOnlyStarter, LocalSlots
from idcontact.queues import QueueService
from idcontact.sealing import Sealer
from idcontact.settings import DEFAULT_TENANT, ROLES, Role, Settings, Tenant
from idcontact.storage.audit import SEAL_BATCH, retire, seal
from idcontact.storage.db import Database, is_sqlite, upgrade
from idcontact.storage.keystore import KeyStore, PostgresKeyStore, RedisKeyStore, SqliteKeyStore
from idcontact.storage.leases import Lease
from idcontact.storage.once import DatabaseOneTime, OneTime
from idcontact.storage.vault import Vault
from idcontact.tokens import TokenIssuer, TokenReader
from idcontact.transcripts import TranscriptKeeper, load_hand_over
from idcontact.web import problem
from idcontact.web.agent import agent_router
from idcontact.web.citizen import citizen_router, theme_router
from idcontact.web.demo_wallet import demo_wallet_router
from idcontact.web.irma import irma_router
from idcontact.web.middleware import EdgeMiddleware

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
DEMO_SCHEMES = Path(__file__).parent / "irma" / "demo_schemes"
"""The ``irma-demo`` scheme, whose issuer keys are public: for the embedded mode only."""
IRMA_PREFIX = "/yivi"
SWEEP_INTERVAL = 30.0
SWEEP_LEASE = 1.5 * SWEEP_INTERVAL
"""A sweeper that stopped renewing (killed) is replaced within this plus one interval."""
SEAL_INTERVAL = 1.0


@dataclass(frozen=True)
class TenantServices:
    """One tenant's configuration, keys, conversation store and queues."""

    tenant: Tenant
    keys: KeyRing
    conversations: Conversations | None
    queues: QueueService | None = None
    links: LinkCodes | None = None


@dataclass(frozen=True)
class Services:
    """The long-lived collaborators of one instance (for the CLI, tests and benchmarks)."""

    settings: Settings
    http: httpx.AsyncClient
    db: Database | None
    keystore: KeyStore | None
    tenants: dict[str, TenantServices]
    bus: Bus
    agents: AgentDirectory | None = None
    calls: Calls | None = None
    """The phone channel's call logic, when a PBX is configured (``[telephony]``)."""
    irma: Sessions | None = None
    """The built-in IRMA server's sessions, when ``[irma] enabled``."""
    hand_overs: dict[str, TranscriptKeeper] = field(default_factory=dict)
    """Per tenant that hands transcripts over (``[transcripts]``): the sweeper's keeper."""
    registrations: dict[str, Registrations] = field(default_factory=dict)
    """Per tenant with ``[klantinteracties]``: contacts agents register, retried by the
    sweeper (the agent console calls ``request`` and ``status``)."""

    @property
    def engine(self) -> AsyncEngine | None:
        """The async engine (migrations, tools and tests)."""
        return self.db.engine if self.db is not None else None

    @property
    def keys(self) -> KeyRing:
        """The default tenant's keys."""
        return self.tenants[DEFAULT_TENANT].keys

    @property
    def conversations(self) -> Conversations | None:
        """The default tenant's conversation store."""
        return self.tenants[DEFAULT_TENANT].conversations


def keystore_for(settings: Settings, db: Database) -> KeyStore:
    kind = settings.resolved_keystore
    if kind == "redis":
        if not settings.redis_url:
            raise ConfigError("redis_url: required when keystore = 'redis'")
        return RedisKeyStore(Redis.from_url(settings.redis_url))
    if kind == "postgres":
        if is_sqlite(settings.resolved_database_url):
            raise ConfigError("keystore: 'postgres' needs a PostgreSQL database_url")
        return PostgresKeyStore(db)
    url = settings.resolved_database_url
    db_path = url.split("///", 1)[1] if "///" in url else ""
    if not db_path or db_path == ":memory:":
        return SqliteKeyStore(settings.data_dir / "keys.sqlite3")
    path = Path(db_path)
    # Beside, never inside, the data file: backups of the data file do not hold the keys.
    return SqliteKeyStore(path.with_name(path.stem + ".keys" + path.suffix))


def create_app(
    settings: Settings,
    *,
    roles: Sequence[Role] = ROLES,
    plugin_classes: Mapping[tuple[Kind, str], type[Plugin]] | None = None,
    clock: Callable[[], float] = time.time,
    heap: HeapKeeper | None = None,
) -> FastAPI:
    """Build an instance serving ``roles``; ``plugin_classes`` overrides entry points (tests);
    ``heap``: the serving process's collector policy, run for as long as the app runs."""
    for role in roles:
        if role not in ROLES:
            raise ConfigError(f"role: unknown role {role!r}")
    quiet_libraries()
    templates = Jinja2Templates(directory=WEB_DIR / "templates")
    templates.env.globals["version"] = __version__  # cache-busts static files per release
    # Templates ship inside the package: no stat() of the file on every render.
    templates.env.auto_reload = False
    keyrings = {t.slug: load_keyring(settings, t) for t in settings.all_tenants}
    sealer = Sealer(keyrings[DEFAULT_TENANT].internal_secret, clock=clock)

    db: Database | None = None
    keystore: KeyStore | None = None
    vault: Vault | None = None
    metrics = Metrics()
    # With Redis, events reach the consoles connected to every instance.
    bus: Bus = (
        RedisBus(Redis.from_url(settings.redis_url), observe=metrics.pushed)
        if settings.redis_url
        else LocalBus(observe=metrics.pushed)
    )
    if "comm" in roles:
        db = Database(settings.resolved_database_url, units=settings.database_units)
        keystore = keystore_for(settings, db)
        vault = Vault(db, keystore, clock)
    directory = (
        AgentDirectory(
            db,
            sealer,
            clock=clock,
            session_seconds=settings.agent_session_hours * 3600,
            idle_seconds=settings.agent_idle_minutes * 60,
        )
        if db is not None
        else None
    )
    tenants: dict[str, TenantServices] = {}
    for tenant in settings.all_tenants:
        keys = keyrings[tenant.slug]
        conversations = None
        if db is not None and vault is not None:
            reader = TokenReader(
                keys.decryption,
                keys.trusted_signers,
                fallback_key=keys.fallback_signers,
                leeway=settings.token_leeway,
                clock=clock,
            )
            conversations = Conversations(
                db,
                vault,
                reader,
                tenant,
                clock,
                pseudonym_secret=keys.pseudonym_secret,
                bus=bus,
                observe=metrics.step,
            )
        queues = QueueService(conversations, bus, clock) if conversations is not None else None
        links = (
            LinkCodes(conversations, tenant.phone, clock, on_failure=metrics.link_failed)
            if conversations is not None
            else None
        )
        tenants[tenant.slug] = TenantServices(tenant, keys, conversations, queues, links)

    ari, calls = _telephony(settings, tenants, bus, directory, clock)
    irma = _irma(settings, clock)
    closers: list[Callable[[], Awaitable[None]]] = []
    drain = Drain(settings.ops.drain_seconds)
    if isinstance(bus, LocalBus | RedisBus):
        drain.on_begin.append(_as_async(bus.drop_all))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        drain.install(asyncio.get_running_loop())
        if db is not None and settings.auto_migrate:
            await upgrade(db.engine)
        if isinstance(bus, RedisBus):
            await bus.start()
        stores = [t.conversations for t in tenants.values() if t.conversations is not None]
        tasks: list[asyncio.Task[None]] = []
        if stores and db is not None:
            lease = Lease(db, "sweeper", SWEEP_LEASE)
            drain.on_begin.append(lease.release)
            tasks.append(
                asyncio.create_task(
                    _sweep(
                        lease,
                        stores,
                        directory,
                        [*registrations.values(), *hand_overs.values()],
                        metrics,
                    )
                )
            )
            tasks.append(asyncio.create_task(_seal(db, list(tenants))))
        for t in tenants.values():
            if t.queues is not None:
                tasks.append(asyncio.create_task(t.queues.run()))
        if ari is not None and calls is not None:
            tasks.append(asyncio.create_task(calls.run(ari.events())))
        if heap is not None and heap.freeze_every > 0:
            tasks.append(asyncio.create_task(heap.run()))
        if irma is not None and settings.irma.scheme_update_minutes:
            keep = irma.keep_schemes(settings.irma.scheme_urls, settings.irma.scheme_update_minutes)
            tasks.append(asyncio.create_task(keep))
        try:
            yield
        finally:
            drain.uninstall()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await http.aclose()
            for close in closers:
                await close()
            if ari is not None:
                await ari.close()
            if isinstance(bus, RedisBus):
                await bus.close()
            if keystore is not None:
                await keystore.close()
            if db is not None:
                await db.dispose()

    app = FastAPI(
        title="ID Contact",
        version=__version__,
        summary=f"Roles: {', '.join(roles)}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    internal = inproc(app)
    http = httpx.AsyncClient(
        mounts={INPROC_BASE: httpx.ASGITransport(app=internal, raise_app_exceptions=False)},
        timeout=settings.plugin_timeout,
        follow_redirects=False,
    )
    hand_overs = {
        slug: TranscriptKeeper(
            t.conversations,
            load_hand_over(t.tenant.transcripts.plugin or "", http, _hand_over_settings(t.tenant)),
        )
        for slug, t in tenants.items()
        if t.conversations is not None and t.tenant.transcripts.keep == "hand_over"
    }
    registrations = {
        slug: Registrations(
            t.conversations, KlantinteractiesClient(http, t.tenant.klantinteracties)
        )
        for slug, t in tenants.items()
        if t.conversations is not None and t.tenant.klantinteracties is not None
    }
    app.state.services = Services(
        settings,
        http,
        db,
        keystore,
        tenants,
        bus,
        directory,
        calls,
        irma.sessions if irma else None,
        hand_overs,
        registrations,
    )
    if irma is not None:
        app.include_router(irma.router)
        if settings.irma.demo_wallet:
            # The demo wallet speaks the app protocol to this instance, in process.
            wallet_http = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=settings.public_url
            )
            closers.append(wallet_http.aclose)
            app.include_router(
                demo_wallet_router(
                    settings,
                    settings.default_tenant,
                    lambda: irma.sessions.schemes,
                    DEMO_SCHEMES / "irma-demo",
                    templates,
                    wallet_http,
                )
            )
    problem.install(app)
    checks: dict[str, Check] = {}
    if db is not None:
        checks["database"] = database_check(db.run)
    if isinstance(bus, RedisBus):
        checks["redis"] = bus.ping
    if ari is not None:
        checks["asterisk"] = ari.ping
    scrape = Scrape(
        {slug: t.queues for slug, t in tenants.items() if t.queues is not None},
        {slug: t.conversations for slug, t in tenants.items() if t.conversations is not None},
        heap,
    )
    install_ops(app, settings.ops, metrics, checks, drain, scrape)
    app.state.drain, app.state.metrics = drain, metrics  # the CLI's SIGTERM path and tests
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.max_body_bytes)

    plugin_classes = dict(plugin_classes or {})
    local = LocalSlots()
    for tenant_services in tenants.values():
        checks |= _mount_tenant(
            app,
            settings,
            tenant_services,
            roles=roles,
            http=http,
            templates=templates,
            sealer=sealer,
            plugin_classes=plugin_classes,
            clock=clock,
            irma=irma.sessions if irma else None,
            once=DatabaseOneTime(db) if db is not None else None,
            closers=closers,
            local=local,
            plugin_post=local_post(internal),
        )

    if db is not None and directory is not None:
        seats = {slug: (t.tenant, t.queues) for slug, t in tenants.items() if t.queues is not None}
        csrf_secret = hmac.new(
            keyrings[DEFAULT_TENANT].internal_secret, b"agent-csrf", hashlib.sha256
        ).digest()
        app.include_router(
            agent_router(
                settings,
                directory,
                seats,
                bus,
                templates,
                csrf_secret,
                clock,
                links={slug: t.links for slug, t in tenants.items() if t.links is not None},
                sso={
                    t.slug: OidcClient(
                        t.agent_sso, http, sealer, clock, leeway=settings.token_leeway
                    )
                    for t in settings.all_tenants
                    if t.agent_sso is not None
                },
                registrations=registrations,
                texts={
                    t.slug: SmsGateway(
                        http,
                        t.phone.sms,
                        where=f"{'' if t.slug == DEFAULT_TENANT else t.slug + '.'}phone.sms",
                    )
                    for t in settings.all_tenants
                    if t.phone.sms is not None and t.slug in tenants
                },
            )
        )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    return app


@dataclass(frozen=True)
class _IrmaServer:
    sessions: Sessions
    router: APIRouter
    root: Path

    async def keep_schemes(self, urls: Mapping[str, str], minutes: int) -> None:
        """Update the schemes of ``urls`` now and every ``minutes``; a change is verified
        and loaded whole before sessions see it."""
        while True:
            try:
                if await update_all(self.root, urls):
                    self.sessions.schemes = await asyncio.to_thread(Schemes.load, self.root)
                    log.info("IRMA schemes reloaded")
            except Exception:
                log.exception("IRMA scheme update failed")
            await asyncio.sleep(minutes * 60)


def _irma(settings: Settings, clock: Callable[[], float]) -> _IrmaServer | None:
    """The built-in IRMA server, at ``/yivi``; outside production with the demo scheme and a
    generated result-signing key."""
    config = settings.irma
    if not config.enabled:
        return None
    root = config.schemes_path or DEMO_SCHEMES
    try:
        schemes = Schemes.load(root)
    except (SchemeError, OSError) as exc:
        raise ConfigError(f"irma.schemes_path: {exc}") from None
    sessions = Sessions(
        schemes,
        clock=clock,
        max_lifetime=config.max_session_lifetime,
        result_lifetime=config.result_lifetime,
        max_sessions=config.max_sessions,
    )
    requestors = []
    for r in config.requestors:
        secret = r.secret.get_secret_value() if r.secret else ""
        try:
            if r.auth == "token":
                requestors.append(Requestor.with_token(r.name, secret, r.hosts))
            elif r.auth == "hmac":
                requestors.append(Requestor.with_hmac(r.name, secret, r.hosts))
            elif r.key is not None:
                key = r.key.load()
                if not isinstance(key, RSAKey):
                    raise ValueError("an RSA public key is needed")
                requestors.append(Requestor.with_public_key(r.name, key, r.hosts))
        except ValueError as exc:
            raise ConfigError(f"irma.requestors ({r.name}): {exc}") from None
    jwt_config = (
        config.jwt_key or demo_pair(settings, settings.default_tenant, "irma-result", "RSA")[0]
    )
    jwt_key = jwt_config.load()
    if not isinstance(jwt_key, RSAKey) or not jwt_key.is_private:
        raise ConfigError("irma.jwt_key: must be an RSA private key")
    router = irma_router(
        sessions,
        Requestors(requestors, max_age=config.max_request_age, clock=clock),
        public_url=settings.public_url,
        prefix=IRMA_PREFIX,
        dev_mode=not config.production,
        jwt_key=jwt_key,
        jwt_issuer=config.jwt_issuer,
        clock=clock,
    )
    return _IrmaServer(sessions, router, root)


def _telephony(
    settings: Settings,
    tenants: Mapping[str, TenantServices],
    bus: Bus,
    directory: AgentDirectory | None,
    clock: Callable[[], float],
) -> tuple[AriClient | None, Calls | None]:
    """The PBX adapter and the call logic, for the tenants with a ``phone`` comm method."""
    telephony = settings.telephony
    if telephony.ari_url is None or directory is None:
        return None, None
    lines = []
    for t in tenants.values():
        method = next((m for m in t.tenant.comm_methods if m.plugin == "phone"), None)
        if method is None or t.conversations is None or t.queues is None or t.links is None:
            continue
        lines.append(PhoneLine(t.tenant, t.conversations, t.queues, t.links, method.tag))
    if not lines:
        return None, None
    password = telephony.ari_password.get_secret_value() if telephony.ari_password else ""
    ari = AriClient(telephony.ari_url, telephony.ari_user, password, telephony.app)
    calls = Calls(
        ari,
        lines,
        bus,
        directory.phone_endpoint,
        ring_seconds=telephony.agent_ring_seconds,
        clock=clock,
    )
    return ari, calls


def _mount_tenant(
    app: FastAPI,
    settings: Settings,
    services: TenantServices,
    *,
    roles: Sequence[Role],
    http: httpx.AsyncClient,
    templates: Jinja2Templates,
    sealer: Sealer,
    plugin_classes: Mapping[tuple[Kind, str], type[Plugin]],
    clock: Callable[[], float],
    irma: Sessions | None,
    once: OneTime | None = None,
    closers: list[Callable[[], Awaitable[None]]] | None = None,
    local: LocalSlots | None = None,
    plugin_post: LocalPost | None = None,
) -> dict[str, Check]:
    """Mount one tenant's plugins, core and pages under its prefix (none for the default);
    return the readiness checks of those with an outside backend."""
    tenant, keys = services.tenant, services.keys
    prefix = tenant.prefix
    issuer = TokenIssuer(
        keys.signing, kid=keys.signing_kid, status_spelling=settings.status_spelling, clock=clock
    )
    starter = AuthOnlyStarter(
        http,
        f"{settings.core_url or INPROC_BASE}{prefix}/start",
        keys.requestor,
        keys.requestor_kid,
        timeout=settings.plugin_timeout,
        clock=clock,
    )
    served: set[tuple[Kind, str]] = set()
    probes: list[tuple[str, object]] = []
    for kind, methods in (("auth", tenant.auth_methods), ("comm", tenant.comm_methods)):
        if kind not in roles:
            continue
        for method in methods:
            if method.plugin is None:
                continue
            key: tuple[Kind, str] = (kind, method.plugin)  # type: ignore[assignment]
            cls = plugin_classes.get(key) or load_plugin_class(key[0], method.plugin)
            path = f"{prefix}/{kind}/{method.tag}"
            ctx = PluginContext(
                settings=settings,
                tenant=tenant,
                method=method,
                http=http,
                templates=templates,
                sealer=sealer,
                mount_path=path,
                public_base=f"{settings.public_url}{path}",
                internal_base=f"{settings.internal_url or INPROC_BASE}{path}",
                issuer=issuer if kind == "auth" else None,
                encrypt_to=keys.encryption_public if kind == "auth" else None,
                conversations=services.conversations if kind == "comm" else None,
                queues=services.queues if kind == "comm" else None,
                links=services.links if kind == "comm" else None,
                irma=irma if kind == "auth" else None,
                starter=starter if kind == "comm" else None,
                once=once if kind == "auth" else None,
                local=local if kind == "auth" else None,
            )
            plugin = cls(ctx, tenant.plugins.get(kind, {}).get(method.tag, {}))
            if kind == "comm" and local is not None and services.conversations is not None:
                local.add(ctx.internal_base, services.conversations)
            close = getattr(plugin, "aclose", None)  # a plugin's own clients (mutual TLS)
            if close is not None and closers is not None:
                closers.append(close)
            router = plugin.router
            if router.prefix != ctx.mount_path:
                raise ConfigError(
                    f"{kind} plugin {method.plugin!r}: its router must use the prefix "
                    f"{ctx.mount_path!r} (ctx.mount_path)"
                )
            app.include_router(router)
            served.add((key[0], method.tag))
            where = f"{tenant.slug}/" if prefix else ""
            probes.append((f"{where}{kind}.{method.tag}", plugin))
    app.include_router(theme_router(tenant, prefix))
    if "core" in roles:
        core = Core(settings, tenant, keys, http, templates, served, clock, plugin_post)
        app.include_router(core.router())
        app.include_router(citizen_router(settings, tenant, core, templates, services.queues))
    return plugin_checks(probes)


def _hand_over_settings(tenant: Tenant) -> dict[str, object]:
    """The hand-over plugin's settings; the ``klantinteracties`` plugin without its own takes
    the tenant's ``[klantinteracties]``."""
    policy = tenant.transcripts
    if policy.plugin == "klantinteracties" and not policy.settings and tenant.klantinteracties:
        return tenant.klantinteracties.model_dump(exclude_defaults=True)
    return dict(policy.settings)


def inproc(app: FastAPI) -> ASGIApp:
    """What a server-side call between two roles of this process goes through: the routes and
    the one error mapping, not the edge. A hop that never leaves the process gets no access log
    line, body limit, security headers or drain refusal (it belongs to a request already let
    in), and keeps the outer request's correlation id. This halves the cost of each hop (the
    core's two calls to plugins per identification)."""
    stack: ASGIApp | None = None

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal stack
        if stack is None:  # built on first use: every exception handler is registered by then
            stack = ExceptionMiddleware(
                AsyncExitStackMiddleware(app.router), handlers=dict(app.exception_handlers)
            )
        scope["app"] = app
        await stack(scope, receive, send)

    return call


LocalPost = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]
"""POST a JSON body to an in-process URL; returns the status and body of the answer."""


def local_post(asgi: ASGIApp) -> LocalPost:
    """The core's calls to in-process plugins, straight to :func:`inproc`'s stack.

    The same request a network client would send (method, path, JSON body and headers)
    through the same routes and error mapping, without httpx's request and response models,
    cookie jar and redirect handling in between: those cost more than the plugin's own route
    (~5 % of a flow's CPU for its two calls)."""

    async def post(url: str, body: bytes) -> tuple[int, bytes]:
        path = url.removeprefix(INPROC_BASE)
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", INPROC_BASE.removeprefix("http://").encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": None,
            "server": None,
        }
        answered = asyncio.Event()
        status = 500
        chunks: list[bytes] = []
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    answered.set()

        try:
            await asgi(scope, receive, send)
        except Exception:  # not mapped to an answer: the plugin failed (a 502 for the caller)
            log.exception("in-process plugin call failed")
            return 500, b""
        finally:
            answered.set()
        return status, b"".join(chunks)

    return post


def services_of(app: FastAPI) -> Services:
    """The collaborators of an app made by :func:`create_app`."""
    services = app.state.services
    if not isinstance(services, Services):
        raise TypeError("not an ID Contact app")
    return services


async def _seal(db: Database, tenants: Sequence[str]) -> None:
    """Link new audit events into each tenant's hash chain, about once a second, in batches
    (``SEAL_BATCH``) spread out: at 400 flows/s, a second's ~1,300 events sealed batch after
    batch took one worker's CPU, and PostgreSQL's, for ~0.15 s each second, and the requests
    that came meanwhile were the slowest 1 % (p99 31-100 ms; spread out, 21-25 ms in most runs)."""
    while True:
        try:
            for tenant in tenants:
                while True:
                    began = time.monotonic()
                    if (
                        await db.run(functools.partial(seal, tenant=tenant), write=True)
                        < SEAL_BATCH
                    ):
                        break
                    # More wait: the next batch after a pause three times as long as this one
                    # took, so sealing takes at most a quarter of the time, spread out.
                    await asyncio.sleep(3 * (time.monotonic() - began))
        except Exception:
            log.exception("audit sealing failed")
        await asyncio.sleep(SEAL_INTERVAL)


def _as_async(call: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        call()

    return run


async def _sweep(
    lease: Lease,
    stores: Sequence[Conversations],
    directory: AgentDirectory | None,
    hand_overs: Sequence[TranscriptKeeper | Registrations] = (),
    metrics: Metrics | None = None,
) -> None:
    """Hand transcripts over and retry registrations, then purge by time, in-process, on every
    deployment size; with several instances, only the one holding the lease sweeps."""
    while True:
        try:
            held = await lease.take()
            if metrics is not None:
                metrics.holds_sweeper(held)
            if held:
                purged = await sweep_once(lease, stores, directory, hand_overs)
                if purged:
                    log.info("purged conversations", extra={"count": purged})
                if metrics is not None:
                    metrics.swept(purged, ok=True)
        except Exception:
            log.exception("sweep failed")
            if metrics is not None:
                metrics.swept(0, ok=False)
        await asyncio.sleep(SWEEP_INTERVAL)


async def sweep_once(
    lease: Lease,
    stores: Sequence[Conversations],
    directory: AgentDirectory | None,
    hand_overs: Sequence[TranscriptKeeper | Registrations] = (),
) -> int:
    """One pass, by the lease's holder: purges in batches, renewing the lease between them so
    a long backlog never lets a second instance start the same work."""
    for keeper in hand_overs:
        await keeper.run()
    purged = 0
    for conversations in stores:
        while (batch := await conversations.purge_expired(PURGE_BATCH)) == PURGE_BATCH:
            purged += batch
            if not await lease.take():
                return purged  # taken over meanwhile: the other instance carries on
        purged += batch
        now = time.time()
        days = conversations.tenant.audit_retention_days
        await conversations.db.run(
            functools.partial(
                retire,
                tenant=conversations.tenant.slug,
                before=now - days * 86400,
                at=now,
            ),
            write=True,
        )
    if directory is not None:
        await directory.purge()
    return purged
