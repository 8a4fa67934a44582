"""The ``idcontact`` command: serve, check-config, keys, db, purge, plugins."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click

from idcontact.errors import ConfigError, IdContactError
from idcontact.heap import HeapKeeper
from idcontact.keys import KeyConfig
from idcontact.settings import ROLES, Role, Settings, Tenant, load_settings

DEMO_CONFIG = Path(__file__).parent / "demo.toml"


def _load(config: Path | None, data_dir: Path | None) -> Settings:
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return load_settings(config or DEMO_CONFIG, overrides)


def _fail(exc: ConfigError) -> None:
    click.echo(f"error: {exc.detail}", err=True)
    sys.exit(2)


config_option = click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="IDCONTACT_CONFIG",
    help="TOML configuration file (default: the built-in demo).",
)
data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), help="Data directory."
)


@click.group(invoke_without_command=True)
@click.pass_context
def main(ctx: click.Context) -> None:
    """ID Contact. Without a command: serve the embedded demo."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


@main.command()
@config_option
@data_dir_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    help="Serve only these roles (repeatable); default: all, in one process.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes sharing the port (use about one per core).",
)
def serve(
    config: Path | None = None,
    data_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    roles: tuple[Role, ...] = (),
    workers: int = 1,
) -> None:
    """Run the web service."""
    import uvicorn

    from idcontact import workers as supervisor
    from idcontact.app import create_app
    from idcontact.logs import setup_logging

    os.umask(0o077)  # data files, keys and databases: owner only
    roles = roles or ROLES
    try:
        overrides: dict[str, Any] = {}
        if data_dir is not None:
            overrides["data_dir"] = str(data_dir)
        settings = load_settings(config or DEMO_CONFIG, overrides)
        if "public_url" not in settings.model_fields_set:
            # Nothing configured: browsers reach us where we listen.
            overrides["public_url"] = f"http://{host}:{port}"
            settings = load_settings(config or DEMO_CONFIG, overrides)
        setup_logging(settings.log_level, settings.ops.log_format, settings.ops.log_levels)
        # Built here even with workers: it validates everything and makes the demo keys once.
        heap = heap_keeper(settings)
        app = create_app(settings, roles=roles, heap=heap)
    except ConfigError as exc:
        _fail(exc)
        return
    if config is None and "comm" in roles:
        _demo_agent(settings)
    click.echo(f"ID Contact ({', '.join(roles)}) — open {settings.public_url}/")
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": False,
        "log_config": None,
        "server_header": False,
        # Chat frames are small: compressing each costs more CPU than the bytes it saves.
        "ws_per_message_deflate": False,
        # Live streams (consoles, waiting rooms) would hold a shutdown up; browsers reconnect.
        "timeout_graceful_shutdown": 5,
    }
    if workers == 1:
        heap.settle()
        uvicorn.run(app, **options)
        return
    if "comm" in roles and settings.auto_migrate:
        _migrate(settings)  # once, before the workers start
    os.environ[_WORKER_ENV] = json.dumps(
        {"config": str(config or DEMO_CONFIG), "overrides": overrides, "roles": list(roles)}
    )
    server = uvicorn.Config("idcontact.cli:worker_app", factory=True, workers=workers, **options)
    # Room to drain, then the 5 s uvicorn gives requests in flight, then a margin.
    sys.exit(supervisor.serve(server, workers, stop_seconds=settings.ops.drain_seconds + 10))


_WORKER_ENV = "IDCONTACT_SERVE_WORKER"


def worker_app() -> Any:
    """App factory for each ``serve --workers`` process (uvicorn imports it by name)."""
    from idcontact.app import create_app
    from idcontact.logs import setup_logging

    spec = json.loads(os.environ[_WORKER_ENV])
    settings = load_settings(Path(spec["config"]), {**spec["overrides"], "auto_migrate": False})
    setup_logging(settings.log_level, settings.ops.log_format, settings.ops.log_levels)
    heap = heap_keeper(settings)
    app = create_app(settings, roles=tuple(spec["roles"]), heap=heap)
    heap.settle()
    return app


def heap_keeper(settings: Settings) -> HeapKeeper:
    """The collector policy of a serving process (docs/operations.md, collector pauses)."""
    return HeapKeeper(settings.ops.gc_freeze_seconds, settings.ops.gc_full_minutes * 60)


def _migrate(settings: Settings) -> None:
    from idcontact.storage.db import create_engine, upgrade

    async def run() -> None:
        engine = create_engine(settings.resolved_database_url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


@main.command("check-config")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def check_config(file: Path) -> None:
    """Validate FILE; exit non-zero with the reason when it is invalid."""
    try:
        settings = load_settings(file)
        problems = [p for t in settings.all_tenants for p in _plugin_checks(settings, t)]
        for index, tenant in enumerate(settings.all_tenants):
            # The default tenant is the root of the file; the others are tenants[i].
            where = "" if index == 0 else f"tenants[{index - 1}]."
            _load_keys(tenant, where)
            if tenant.klantinteracties is not None:  # its token file must be readable
                tenant.klantinteracties.read_token(f"{where}klantinteracties")
            if tenant.phone.sms is not None:
                tenant.phone.sms.read_token(f"{where}phone.sms")
    except ConfigError as exc:
        _fail(exc)
        return
    if problems:
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    click.echo(
        f"OK: {len(settings.all_tenants)} tenant(s), {len(settings.purposes)} purposes, "
        f"{len(settings.auth_methods)} auth methods, {len(settings.comm_methods)} comm methods"
    )
    for tenant in settings.all_tenants:
        if any(m.channel == "phone" for m in tenant.comm_methods):
            p = tenant.phone
            click.echo(
                f"phone ({tenant.slug}): chance that guessing links a call to someone's live "
                f"code: {p.hijack_chance():.1e} per day (limit 1e-06; {p.code_length} digits, "
                f"{p.failed_link_budget} failed attempts a day, {p.max_linkable_codes} codes "
                "linkable at once)"
            )


def _plugin_checks(settings: Settings, tenant: Tenant) -> list[str]:
    """What enabled auth plugins with a ``check_config`` class method report (the
    ``openid4vp`` plugin: each purpose's query against the relying-party certificate)."""
    from idcontact.plugins.base import load_plugin_class

    problems: list[str] = []
    for method in tenant.auth_methods:
        if method.plugin is None:
            continue
        check = getattr(load_plugin_class("auth", method.plugin), "check_config", None)
        if callable(check):
            found = check(settings, tenant, method.tag)
            problems += [f"({tenant.slug}) {p}" for p in found]
    return problems


def _load_keys(tenant: Tenant, where: str) -> None:
    """Load every configured key of a tenant, naming the setting of the first that fails."""
    k = tenant.keys
    configured: list[tuple[str, KeyConfig | None]] = [
        (f"keys.{name}", getattr(k, name))
        for name in ("signing", "encryption_public", "fallback_signer", "ui_signing", "requestor")
    ]
    configured += [(f"keys.decryption[{i}]", c) for i, c in enumerate(k.decryption)]
    configured += [
        (f"auth_methods[{i}].signature_key", m.signature_key)
        for i, m in enumerate(tenant.auth_methods)
    ]
    configured += [(f"keys.trusted_signers.{kid}", c) for kid, c in k.trusted_signers.items()]
    configured += [
        (f"keys.authonly_request_keys.{kid}", c) for kid, c in k.authonly_request_keys.items()
    ]
    for name, key in configured:
        if key is not None:
            try:
                key.load()
            except ConfigError as exc:
                raise ConfigError(f"{where}{name}: {exc.detail}") from None
    if k.directory is not None:
        from idcontact.keydir import USES, KeyDirectory

        for use in USES:
            try:
                KeyDirectory(k.directory).load(use)
            except ConfigError as exc:
                raise ConfigError(f"{where}keys.directory: {exc.detail}") from None


@main.group()
def keys() -> None:
    """Key management."""


@keys.command("generate")
@click.option("--type", "kind", type=click.Choice(["EC", "RSA"]), default="EC", show_default=True)
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--name", required=True, help="File name stem: writes NAME.key.pem and NAME.pub.pem.")
def keys_generate(kind: str, directory: Path, name: str) -> None:
    """Generate a key pair (private key file readable by the owner only)."""
    from idcontact.keys import generate_keypair, kid_for, load_pem

    directory.mkdir(parents=True, exist_ok=True)
    try:
        priv, pub = generate_keypair(kind, directory, name)  # type: ignore[arg-type]
    except FileExistsError:
        click.echo(f"error: {directory / name}.*.pem exists already; not overwritten", err=True)
        sys.exit(2)
    except ConfigError as exc:
        _fail(exc)
        return
    kid = kid_for(load_pem(kind, pub.read_bytes(), source=str(pub)))  # type: ignore[arg-type]
    click.echo(f"wrote {priv} (0600) and {pub}; kid {kid}")


def _key_directory(directory: Path | None, config: Path | None, kind: str = "EC") -> Any:
    """The rotating key directory: ``--dir``, else ``[keys] directory`` of ``--config``."""
    from idcontact.keydir import KeyDirectory

    if directory is None and config is not None:
        try:
            directory = load_settings(config).keys.directory
        except ConfigError as exc:
            _fail(exc)
    if directory is None:
        click.echo("error: give --dir, or --config with [keys] directory set", err=True)
        sys.exit(2)
    return KeyDirectory(directory, kind)  # type: ignore[arg-type]


key_dir_option = click.option(
    "--dir", "directory", type=click.Path(path_type=Path, file_okay=False), default=None
)
key_config_option = click.option(
    "--config", "config", type=click.Path(path_type=Path, dir_okay=False), default=None
)
use_option = click.option(
    "--use",
    "uses",
    type=click.Choice(["signing", "encryption"]),
    multiple=True,
    help="Which keys (repeatable); default: both.",
)


@keys.command("rotate")
@key_dir_option
@key_config_option
@use_option
@click.option("--type", "kind", type=click.Choice(["EC", "RSA"]), default="EC", show_default=True)
@click.option("--activate", is_flag=True, help="Use the new key at once (one instance only).")
def keys_rotate(
    directory: Path | None, config: Path | None, uses: tuple[str, ...], kind: str, activate: bool
) -> None:
    """Stage a new key under a new kid; old keys keep verifying and decrypting."""
    keydir = _key_directory(directory, config, kind)
    for use in uses or ("signing", "encryption"):
        try:
            kid = keydir.stage(use)
            if activate:
                keydir.activate(use, kid)
        except ConfigError as exc:
            _fail(exc)
        state = "active" if keydir.active_kid(use) == kid else "staged"
        click.echo(f"{use}: new key {kid} ({state})")


def _key_step(directory: Path | None, config: Path | None, step: str, use: str, kid: str) -> None:
    keydir = _key_directory(directory, config)
    try:
        getattr(keydir, step)(use, kid)
    except ConfigError as exc:
        _fail(exc)
    click.echo(f"{use}: {kid} {'active' if step == 'activate' else 'retired'}")


kid_use_option = click.option("--use", type=click.Choice(["signing", "encryption"]), required=True)
# A thumbprint is base64url and one in 64 starts with "-": read it as the KID, not an option.
kid_command = {"context_settings": {"ignore_unknown_options": True}}


@keys.command("activate", **kid_command)
@key_dir_option
@key_config_option
@kid_use_option
@click.argument("kid")
def keys_activate(directory: Path | None, config: Path | None, use: str, kid: str) -> None:
    """Sign (or encrypt) new tokens with KID from each instance's next start."""
    _key_step(directory, config, "activate", use, kid)


@keys.command("retire", **kid_command)
@key_dir_option
@key_config_option
@kid_use_option
@click.argument("kid")
def keys_retire(directory: Path | None, config: Path | None, use: str, kid: str) -> None:
    """Delete an inactive key: tokens under KID are refused from each instance's next start."""
    _key_step(directory, config, "retire", use, kid)


@keys.command("list")
@key_dir_option
@key_config_option
def keys_list(directory: Path | None, config: Path | None) -> None:
    """The keys of the directory by use and kid, the active one marked."""
    keydir = _key_directory(directory, config)
    for use in ("signing", "encryption"):
        for key in keydir.keys(use):
            click.echo(f"{use}\t{key.kid}\t{'active' if key.active else 'staged/old'}")


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@config_option
@data_dir_option
def db_upgrade(config: Path | None, data_dir: Path | None) -> None:
    """Apply all migrations."""
    from idcontact.storage.db import create_engine, current_revision, upgrade

    try:
        settings = _load(config, data_dir)
    except ConfigError as exc:
        _fail(exc)
        return

    async def run() -> str | None:
        engine = create_engine(settings.resolved_database_url)
        try:
            await upgrade(engine)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    click.echo(f"database at revision {asyncio.run(run())}")


@main.command()
@config_option
@data_dir_option
def purge(config: Path | None, data_dir: Path | None) -> None:
    """Destroy the attributes of every conversation past its retention, now."""
    from idcontact.app import create_app, services_of

    try:
        settings = _load(config, data_dir)
        app = create_app(settings, roles=("comm",))
    except ConfigError as exc:
        _fail(exc)
        return
    services = services_of(app)

    async def run() -> int:
        from idcontact.storage.db import upgrade

        db = services.db
        if db is None:  # pragma: no cover - the comm role has a database
            raise RuntimeError("comm role without storage")
        try:
            await upgrade(db.engine)
            purged = 0
            for tenant in services.tenants.values():  # every tenant's conversations
                if tenant.conversations is not None:
                    while batch := await tenant.conversations.purge_expired():
                        purged += batch
            return purged
        finally:
            if services.keystore is not None:
                await services.keystore.close()
            await db.dispose()
            await services.http.aclose()

    click.echo(f"purged {asyncio.run(run())} conversations")


@main.group()
def audit() -> None:
    """The audit log: verify its hash chain, export it, answer "who saw my data?"."""


def _audit_run(config: Path | None, data_dir: Path | None, work: Any) -> Any:
    """Run ``work(connection, settings)`` on the database, after migrating it."""
    from idcontact.storage.db import Database, upgrade

    try:
        settings = _load(config, data_dir)
    except ConfigError as exc:
        _fail(exc)
        return None

    async def run() -> Any:
        db = Database(settings.resolved_database_url, units=settings.database_units)
        try:
            await upgrade(db.engine)
            return await db.run(lambda conn: work(conn, settings))
        finally:
            await db.dispose()

    return asyncio.run(run())


tenant_option = click.option("--tenant", default="default", show_default=True)


@audit.command("verify")
@config_option
@data_dir_option
@tenant_option
def audit_verify(config: Path | None, data_dir: Path | None, tenant: str) -> None:
    """Check the tenant's hash chain; exit 1 at the first event that does not fit."""
    from idcontact.storage.audit import SEAL_BATCH, seal, verify

    def work(conn: Any, _settings: Settings) -> Any:
        while seal(conn, tenant) == SEAL_BATCH:  # what the running service does every second
            pass
        return verify(conn, tenant)

    verdict = _audit_run(config, data_dir, work)
    if verdict.broken_at is not None:
        click.echo(f"audit chain of {tenant} is BROKEN at event {verdict.broken_at}", err=True)
        sys.exit(1)
    click.echo(f"audit chain of {tenant} intact: {verdict.checked} events")


@audit.command("export")
@config_option
@data_dir_option
@tenant_option
def audit_export(config: Path | None, data_dir: Path | None, tenant: str) -> None:
    """Write the tenant's audit events as CSV to standard output (no attribute values)."""
    from idcontact.storage.audit import events, write_csv

    write_csv(_audit_run(config, data_dir, lambda conn, _s: list(events(conn, tenant))), sys.stdout)


@audit.command("subject")
@config_option
@data_dir_option
@tenant_option
def audit_subject(config: Path | None, data_dir: Path | None, tenant: str) -> None:
    """Who saw the data of one resident? Reads the identifying value (the BSN) from standard
    input, never from the command line, and prints the matching events."""
    from idcontact.keyring import load_keyring
    from idcontact.storage.audit import events, pseudonym

    value = click.prompt("identifying value", hide_input=True, err=True).strip()

    def work(conn: Any, settings: Settings) -> list[Any]:
        chosen = settings.tenant(tenant)
        if chosen is None:
            raise ConfigError(f"tenant: no tenant {tenant!r}")
        subject = pseudonym(load_keyring(settings, chosen).pseudonym_secret, value)
        found = list(events(conn, tenant))
        mine = {e.conversation_id for e in found if json.loads(e.detail).get("subject") == subject}
        return [e for e in found if e.conversation_id in mine]

    try:
        matching = _audit_run(config, data_dir, work)
    except ConfigError as exc:
        _fail(exc)
        return
    from datetime import UTC, datetime

    for e in matching:
        at = datetime.fromtimestamp(e.at, UTC).isoformat(timespec="seconds")
        click.echo(f"{at}\t{e.actor}\t{e.action}\t{e.conversation_id}")
    click.echo(f"{len(matching)} events", err=True)


@main.group()
def agents() -> None:
    """Agent accounts of the console: add, list, reset, disable, enable, phone."""


def _agents_run(config: Path | None, data_dir: Path | None, work: Any) -> Any:
    """Run ``await work(directory, settings)`` on the migrated database."""
    try:
        settings = _load(config, data_dir)
    except ConfigError as exc:
        _fail(exc)
        return None
    return _with_directory(settings, work)


def _with_directory(settings: Settings, work: Any) -> Any:
    from idcontact.agents.directory import AgentDirectory
    from idcontact.keyring import load_keyring
    from idcontact.sealing import Sealer
    from idcontact.storage.db import Database, upgrade

    sealer = Sealer(load_keyring(settings, settings.default_tenant).internal_secret)

    async def run() -> Any:
        db = Database(settings.resolved_database_url, units=settings.database_units)
        try:
            await upgrade(db.engine)
            return await work(AgentDirectory(db, sealer), settings)
        finally:
            await db.dispose()

    try:
        return asyncio.run(run())
    except IdContactError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(1)


def _demo_agent(settings: Settings) -> None:
    """The embedded demo's first run: an admin ``demo`` to try the console with."""
    from idcontact.agents.directory import Membership

    async def work(directory: Any, settings: Settings) -> None:
        if await directory.all():
            return
        code = await directory.add(
            "demo", "Demo-medewerker", [Membership("default", "admin", ("*",))]
        )
        click.echo(_enrol_message(settings, "demo", code))

    _with_directory(settings, work)


def _enrol_message(settings: Settings, username: str, code: str) -> str:
    return (
        f"enrolment link for {username} (valid 72 hours, once; send it privately):\n"
        f"  {settings.public_url}/agent/enrol/{code}"
    )


@agents.command("add")
@config_option
@data_dir_option
@click.argument("username")
@click.option("--name", "display_name", default="", help="Name shown in the console.")
@click.option(
    "--member",
    "members",
    multiple=True,
    default=("default:agent:*",),
    show_default=True,
    help="tenant:role:queues (role agent, supervisor or admin; queues comma-separated or *).",
)
def agents_add(
    config: Path | None,
    data_dir: Path | None,
    username: str,
    display_name: str,
    members: tuple[str, ...],
) -> None:
    """Create an agent and print a one-time enrolment link (password and TOTP set-up)."""
    from idcontact.agents.directory import ROLES, Membership

    memberships = []
    for spec in members:
        tenant, _, rest = spec.partition(":")
        role, _, queues = rest.partition(":")
        if role not in ROLES or not tenant:
            raise click.BadParameter(f"{spec!r}: use tenant:role:queues", param_hint="--member")
        memberships.append(
            Membership(tenant, role, tuple(q for q in (queues or "*").split(",") if q))
        )

    async def work(directory: Any, settings: Settings) -> None:
        for m in memberships:
            if settings.tenant(m.tenant) is None:
                raise click.BadParameter(f"unknown tenant {m.tenant!r}", param_hint="--member")
        code = await directory.add(username, display_name, memberships)
        click.echo(_enrol_message(settings, username, code))

    _agents_run(config, data_dir, work)


@agents.command("reset")
@config_option
@data_dir_option
@click.argument("username")
def agents_reset(config: Path | None, data_dir: Path | None, username: str) -> None:
    """Revoke password, second factor and sessions; print a new enrolment link."""

    async def work(directory: Any, settings: Settings) -> None:
        click.echo(_enrol_message(settings, username, await directory.reset(username)))

    _agents_run(config, data_dir, work)


@agents.command("disable")
@config_option
@data_dir_option
@click.argument("username")
def agents_disable(config: Path | None, data_dir: Path | None, username: str) -> None:
    """Block an agent at once (their sessions end)."""

    async def work(directory: Any, _settings: Settings) -> None:
        await directory.set_disabled(username, True)
        click.echo(f"{username} disabled")

    _agents_run(config, data_dir, work)


@agents.command("enable")
@config_option
@data_dir_option
@click.argument("username")
def agents_enable(config: Path | None, data_dir: Path | None, username: str) -> None:
    """Allow a disabled agent to log in again."""

    async def work(directory: Any, _settings: Settings) -> None:
        await directory.set_disabled(username, False)
        click.echo(f"{username} enabled")

    _agents_run(config, data_dir, work)


@agents.command("list")
@config_option
@data_dir_option
def agents_list(config: Path | None, data_dir: Path | None) -> None:
    """Agents with their memberships (tenant:role:queues) and whether they have enrolled."""

    async def work(directory: Any, _settings: Settings) -> None:
        for a in await directory.all():
            status = "disabled" if a["disabled"] else ("enrolled" if a["enrolled"] else "invited")
            phone = f"\tphone={a['phone']}" if a["phone"] else ""
            click.echo(f"{a['username']}\t{status}\t{' '.join(a['memberships'])}{phone}")

    _agents_run(config, data_dir, work)


@agents.command("phone")
@config_option
@data_dir_option
@click.argument("username")
@click.argument("endpoint", required=False)
def agents_phone(
    config: Path | None, data_dir: Path | None, username: str, endpoint: str | None
) -> None:
    """Set the agent's desk phone for the phone channel (ENDPOINT like PJSIP/agent1); without
    ENDPOINT, remove it."""

    async def work(directory: Any, _settings: Settings) -> None:
        await directory.set_phone(username, endpoint)
        click.echo(f"{username}: phone {endpoint or 'removed'}")

    _agents_run(config, data_dir, work)


@main.group()
def phone() -> None:
    """The phone channel (ID Bellen)."""


@phone.command("prompts")
@config_option
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Directory for the sound files (the PBX plays sound:idcontact/<lang>/<key>).",
)
def phone_prompts(config: Path | None, out: Path) -> None:
    """Render every phone prompt of the configuration to 8 kHz WAV files with espeak-ng and
    sox (a demo voice; record your own under the same names for production)."""
    from idcontact.phone.prompts import keys, text

    try:
        settings = _load(config, None)
    except ConfigError as exc:
        _fail(exc)
        return
    tools: dict[str, str] = {}
    for tool in ("espeak-ng", "sox"):
        found = shutil.which(tool)
        if found is None:
            click.echo(f"error: {tool} is not installed (Debian: apt-get install {tool})", err=True)
            sys.exit(1)
        tools[tool] = found
    thresholds = {q.long_wait_seconds for t in settings.all_tenants for q in t.all_queues}
    voices = {"nl": "nl", "en": "en-gb"}
    count = 0
    for lang in sorted({t.phone.language for t in settings.all_tenants}):
        folder = out / lang
        folder.mkdir(parents=True, exist_ok=True)
        for key in keys(thresholds):
            raw = folder / f"{key}.espeak.wav"
            subprocess.run(  # noqa: S603 - our own arguments, no shell
                [
                    tools["espeak-ng"],
                    "-v",
                    voices[lang],
                    "-s",
                    "150",
                    "-w",
                    str(raw),
                    text(lang, key),
                ],
                check=True,
                capture_output=True,
            )
            subprocess.run(  # noqa: S603 - our own arguments, no shell
                [
                    tools["sox"],
                    str(raw),
                    "-r",
                    "8000",
                    "-c",
                    "1",
                    "-b",
                    "16",
                    str(folder / f"{key}.wav"),
                ],
                check=True,
                capture_output=True,
            )
            raw.unlink()
            count += 1
    click.echo(f"{count} prompts written to {out}")


@main.command()
def plugins() -> None:
    """List installed plugins (only those named in the configuration are ever loaded)."""
    for kind in ("auth", "comm", "handover"):
        for ep in sorted(entry_points(group=f"idcontact.{kind}"), key=lambda e: e.name):
            click.echo(f"{kind}\t{ep.name}\t{ep.value}")


@main.group()
def irma() -> None:
    """The built-in IRMA server."""


@irma.command("scheme-update")
@click.argument("url")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--pk",
    "pk",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The scheme's pk.pem, pinned (needed for a first download; never fetched from URL).",
)
def irma_scheme_update(url: str, directory: Path, pk: Path | None) -> None:
    """Download the IRMA scheme at URL into DIRECTORY (named after the scheme id, e.g.
    irma_configuration/pbdf) or bring it up to date. Every file is checked against the index
    signed by the scheme's key; on any failure the local copy stays as it was."""
    from idcontact.irma.download import update_scheme
    from idcontact.irma.xml import SchemeError

    try:
        key = pk.read_bytes() if pk is not None else None
        result = asyncio.run(update_scheme(url, directory, public_key=key))
    except SchemeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if result.updated:
        click.echo(f"updated: {result.fetched} files fetched, timestamp {result.timestamp}")
    else:
        click.echo(f"up to date: timestamp {result.timestamp}")
