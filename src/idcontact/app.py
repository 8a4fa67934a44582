"""The composition root: ``create_app(settings)`` builds one instance serving one or more roles.

Nothing is built at import time. The lifespan owns the resources (database, key store, HTTP
client, sweeper). In the embedded mode every role runs here and the core reaches in-process
plugins over the same HTTP contract through an in-memory transport, without a network hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from idcontact import __version__
from idcontact.conversations import Conversations
from idcontact.core import Core
from idcontact.errors import ConfigError
from idcontact.keyring import KeyRing, load_keyring
from idcontact.logs import quiet_libraries
from idcontact.plugins.base import INPROC_BASE, Kind, Plugin, PluginContext, load_plugin_class
from idcontact.sealing import Sealer
from idcontact.settings import ROLES, Role, Settings
from idcontact.storage.db import Database, is_sqlite, upgrade
from idcontact.storage.keystore import KeyStore, PostgresKeyStore, RedisKeyStore, SqliteKeyStore
from idcontact.storage.vault import Vault
from idcontact.tokens import TokenIssuer, TokenReader
from idcontact.web import problem
from idcontact.web.citizen import citizen_router
from idcontact.web.middleware import EdgeMiddleware

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
SWEEP_INTERVAL = 30.0


@dataclass(frozen=True)
class Services:
    """The long-lived collaborators of one instance (for the CLI, tests and benchmarks)."""

    settings: Settings
    keys: KeyRing
    http: httpx.AsyncClient
    db: Database | None
    keystore: KeyStore | None
    conversations: Conversations | None

    @property
    def engine(self) -> AsyncEngine | None:
        """The async engine (migrations, tools and tests)."""
        return self.db.engine if self.db is not None else None


def keystore_for(settings: Settings, engine: AsyncEngine) -> KeyStore:
    kind = settings.resolved_keystore
    if kind == "redis":
        if not settings.redis_url:
            raise ConfigError("redis_url: required when keystore = 'redis'")
        return RedisKeyStore(Redis.from_url(settings.redis_url))
    if kind == "postgres":
        if is_sqlite(settings.resolved_database_url):
            raise ConfigError("keystore: 'postgres' needs a PostgreSQL database_url")
        return PostgresKeyStore(engine)
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
) -> FastAPI:
    """Build an instance serving ``roles``; ``plugin_classes`` overrides entry points (tests)."""
    for role in roles:
        if role not in ROLES:
            raise ConfigError(f"role: unknown role {role!r}")
    quiet_libraries()
    keys = load_keyring(settings)
    templates = Jinja2Templates(directory=WEB_DIR / "templates")
    templates.env.globals["version"] = __version__  # cache-busts static files per release
    sealer = Sealer(keys.internal_secret, clock=clock)

    db: Database | None = None
    keystore: KeyStore | None = None
    conversations: Conversations | None = None
    if "comm" in roles:
        db = Database(settings.resolved_database_url)
        keystore = keystore_for(settings, db.engine)
        reader = TokenReader(
            keys.decryption,
            keys.trusted_signers,
            fallback_key=keys.fallback_signers,
            leeway=settings.token_leeway,
            clock=clock,
        )
        conversations = Conversations(
            db, Vault(db, keystore, clock), reader, settings.purpose, clock
        )
    issuer = TokenIssuer(
        keys.signing, kid=keys.signing_kid, status_spelling=settings.status_spelling, clock=clock
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sweeper: asyncio.Task[None] | None = None
        if db is not None and settings.auto_migrate:
            await upgrade(db.engine)
        if conversations is not None:
            sweeper = asyncio.create_task(_sweep(conversations))
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            await http.aclose()
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
    http = httpx.AsyncClient(
        mounts={INPROC_BASE: httpx.ASGITransport(app=app, raise_app_exceptions=False)},
        timeout=settings.plugin_timeout,
        follow_redirects=False,
    )
    app.state.services = Services(settings, keys, http, db, keystore, conversations)
    problem.install(app)
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.max_body_bytes)

    served: set[tuple[Kind, str]] = set()
    plugin_classes = dict(plugin_classes or {})
    for kind, methods in (("auth", settings.auth_methods), ("comm", settings.comm_methods)):
        if kind not in roles:
            continue
        for method in methods:
            if method.plugin is None:
                continue
            key: tuple[Kind, str] = (kind, method.plugin)  # type: ignore[assignment]
            cls = plugin_classes.get(key) or load_plugin_class(key[0], method.plugin)
            ctx = PluginContext(
                settings=settings,
                method=method,
                http=http,
                templates=templates,
                sealer=sealer,
                mount_path=f"/{kind}/{method.tag}",
                public_base=f"{settings.public_url}/{kind}/{method.tag}",
                internal_base=f"{settings.internal_url or INPROC_BASE}/{kind}/{method.tag}",
                issuer=issuer if kind == "auth" else None,
                encrypt_to=keys.encryption_public if kind == "auth" else None,
                conversations=conversations if kind == "comm" else None,
            )
            plugin = cls(ctx, settings.plugins.get(kind, {}).get(method.tag, {}))
            router = plugin.router
            if router.prefix != ctx.mount_path:
                raise ConfigError(
                    f"{kind} plugin {method.plugin!r}: its router must use the prefix "
                    f"{ctx.mount_path!r} (ctx.mount_path)"
                )
            app.include_router(router)
            served.add((key[0], method.tag))

    if "core" in roles:
        core = Core(settings, keys, http, templates, served, clock)
        app.include_router(core.router())

        app.include_router(citizen_router(settings, core, templates))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    return app


def services_of(app: FastAPI) -> Services:
    """The collaborators of an app made by :func:`create_app`."""
    services = app.state.services
    if not isinstance(services, Services):
        raise TypeError("not an ID Contact app")
    return services


async def _sweep(conversations: Conversations) -> None:
    """Purge by time, in-process, on every deployment size."""
    while True:
        try:
            purged = await conversations.purge_expired()
            if purged:
                log.info("purged conversations", extra={"count": purged})
        except Exception:
            log.exception("sweep failed")
        await asyncio.sleep(SWEEP_INTERVAL)
