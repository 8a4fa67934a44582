"""The plugin contract.

A plugin is a class registered under the entry-point group ``idcontact.auth`` or
``idcontact.comm`` and enabled by naming it in a method's ``plugin`` setting; installed but
unnamed plugins are never imported. Each plugin serves the original ID Contact HTTP contract
(``POST /start_authentication`` or ``POST /start_communication``) on its own router, built
with the prefix ``ctx.mount_path`` (``/auth/<tag>`` or ``/comm/<tag>``). The core always calls
plugins through that HTTP contract; in the embedded mode the call stays in-process, and an auth
plugin hands its result to a slot of this process directly (``ctx.local``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal, Protocol

import httpx
from fastapi import APIRouter
from fastapi.templating import Jinja2Templates

from idcontact.conversations import Conversations
from idcontact.errors import ConfigError
from idcontact.irma.sessions import Sessions
from idcontact.keys import JoseKey
from idcontact.phone.codes import LinkCodes
from idcontact.plugins.comm.common import AuthOnlyStarter, LocalSlots
from idcontact.queues import QueueService
from idcontact.sealing import Sealer
from idcontact.settings import Method, Settings, Tenant
from idcontact.storage.once import OneTime
from idcontact.tokens import TokenIssuer

Kind = Literal["auth", "comm"]
INPROC_BASE = "http://inproc"


@dataclass(frozen=True)
class PluginContext:
    """Everything a plugin may use, handed over at construction (no globals)."""

    settings: Settings
    tenant: Tenant
    """The municipality this plugin instance serves: purposes, labels, design."""
    method: Method
    http: httpx.AsyncClient
    templates: Jinja2Templates
    sealer: Sealer
    mount_path: str
    """The path prefix of this plugin's routes (``[/t/<tenant>]/<kind>/<tag>``): build the
    router with it."""
    public_base: str
    """Where browsers reach this plugin, e.g. ``https://host/auth/demo``."""
    internal_base: str
    """Where other roles reach this plugin server-side (``http://inproc/...`` when embedded)."""
    issuer: TokenIssuer | None = None
    encrypt_to: JoseKey | None = None
    conversations: Conversations | None = None
    queues: QueueService | None = None
    """Comm plugins: the shared queue model; call ``enqueue`` when the resident is present."""
    links: LinkCodes | None = None
    """Comm plugins: the tenant's phone link codes (the phone channel)."""
    irma: Sessions | None = None
    """Auth plugins: this process's built-in IRMA server (``[irma] enabled``)."""
    starter: AuthOnlyStarter | None = None
    """Comm plugins: start an identification for a resident already in a conversation."""
    once: OneTime | None = None
    """Auth plugins: one-time marks against replay, shared by all instances (the database);
    ``None`` when this instance has no database."""
    local: LocalSlots | None = None
    """Auth plugins: the attr_url slots this process serves, to hand results to directly."""


class Plugin(Protocol):
    kind: ClassVar[Kind]

    def __init__(self, ctx: PluginContext, config: dict[str, Any]) -> None: ...

    @property
    def router(self) -> APIRouter: ...


def load_plugin_class(kind: Kind, name: str) -> type[Plugin]:
    """Load exactly one plugin class by entry-point name; nothing else is imported."""
    group = f"idcontact.{kind}"
    matches = entry_points(group=group, name=name)
    if not matches:
        raise ConfigError(
            f"no {kind} plugin named {name!r} is installed (entry point group {group})"
        )
    cls: type[Plugin] = next(iter(matches)).load()
    return cls
