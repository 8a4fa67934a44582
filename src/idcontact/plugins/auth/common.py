"""What every auth plugin of ours does the same way: the start request, and handing the signed
and encrypted result to the comm side."""

from __future__ import annotations

import logging
from collections.abc import Collection, Container, Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, Field, ValidationError

from idcontact.core import append_result
from idcontact.errors import BadRequestError, ConfigError
from idcontact.plugins.base import PluginContext
from idcontact.tokens import AuthResult

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class StartAuthRequest(BaseModel):
    attributes: list[str] = Field(max_length=50)
    continuation: str = Field(max_length=4096)
    attr_url: str | None = Field(default=None, max_length=4096)

    def check_for(self, provided: Container[str]) -> None:
        """Refuse attributes the plugin cannot provide, then check the URLs."""
        unknown = [a for a in self.attributes if a not in provided]
        if unknown:
            raise UnknownAttributeError("Unknown attributes: " + ", ".join(sorted(unknown)[:10]))
        self.check()

    def check(self) -> None:
        if not self.continuation.startswith(("http://", "https://", "tel:")):
            raise BadRequestError("continuation must be an http(s) or tel: URL")
        if self.attr_url is not None and not self.attr_url.startswith(("http://", "https://")):
            raise BadRequestError("attr_url must be an http(s) URL")


class ClientUrl(BaseModel):
    client_url: str


class UnknownAttributeError(BadRequestError):
    slug = "unknown-attribute"
    title = "This auth method cannot provide the requested attributes"


def plugin_settings(model: type[M], ctx: PluginContext, config: Mapping[str, Any]) -> M:
    """A plugin's ``[plugins.auth.<tag>]`` validated, or a ConfigError naming the setting
    (never its value)."""
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"plugins.auth.{ctx.method.tag}.{where}: {first['msg']}") from None


def check_provides(ctx: PluginContext, mapped: Collection[str]) -> None:
    """The method's ``provides`` is set, and each tag in it is mapped in its settings."""
    provides = getattr(ctx.method, "provides", None)
    missing = sorted(set(provides or ()) - set(mapped))
    if provides is None or missing:
        raise ConfigError(
            f"auth_methods ({ctx.method.tag}).provides: list the attribute tags this method "
            "proves, each mapped in its plugin settings' attributes"
            + (f" (not mapped: {', '.join(missing)})" if missing else "")
        )


def provenance(ctx: PluginContext, **detail: str) -> dict[str, str]:
    """Where attributes come from, for the agent: the method, its assurance, and ``detail``
    (issuer, credential)."""
    method = ctx.method
    return {
        "method": method.tag,
        "method_name": method.name,
        "assurance": getattr(method, "assurance", "low"),
        **detail,
    }


def check_keys(ctx: PluginContext, name: str) -> None:
    if ctx.issuer is None or ctx.encrypt_to is None:
        raise ConfigError(f"auth plugin {name!r}: needs a signing key and an encryption key")


async def deliver(ctx: PluginContext, result: AuthResult, pending: StartAuthRequest) -> str:
    """Hand ``result`` to ``attr_url`` directly when this process serves it; else sign and
    encrypt it and post it to ``attr_url`` when there is one, or put it on the continuation.
    Returns where the browser goes next."""
    if ctx.issuer is None or ctx.encrypt_to is None:  # pragma: no cover - checked at start
        raise ConfigError("auth plugin: needs a signing key and an encryption key")
    if (
        pending.attr_url is not None
        and ctx.local is not None
        and await ctx.local.hand_over(pending.attr_url, ctx.issuer.hand_over(result))
    ):
        return pending.continuation
    token = ctx.issuer.issue(result, ctx.encrypt_to)
    if pending.attr_url is None:
        return append_result(pending.continuation, token)
    try:
        response = await ctx.http.post(
            pending.attr_url,
            content=token,
            headers={"Content-Type": "application/jwt"},
            timeout=ctx.settings.plugin_timeout,
        )
    except httpx.HTTPError:
        log.warning("attr_url unreachable")
        return pending.continuation
    if response.status_code >= 300:
        log.warning("attr_url refused the token", extra={"plugin_status": response.status_code})
    return pending.continuation
