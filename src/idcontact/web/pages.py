"""What every server-rendered page shares: the language, the tenant's look, token-safe headers."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from idcontact.settings import Settings, Tenant

LANGUAGES = ("nl", "en")
TOKEN_PAGE_HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
"""For pages and redirects that carry tokens (``?result=``, the tel page, shims)."""


def language(request: Request, settings: Settings) -> str:
    """``?lang=`` when it is one we speak, else the configured default (Dutch)."""
    lang = request.query_params.get("lang", settings.default_language)
    return lang if lang in LANGUAGES else settings.default_language


def render(
    templates: Jinja2Templates,
    request: Request,
    name: str,
    context: Mapping[str, object],
    *,
    tenant: Tenant,
    lang: str,
    carries_token: bool = False,
) -> HTMLResponse:
    """Render ``name`` in the tenant's look (header, theme, links under its prefix)."""
    return templates.TemplateResponse(
        request,
        name,
        {**context, "tenant": tenant, "prefix": tenant.prefix, "lang": lang},
        headers=TOKEN_PAGE_HEADERS if carries_token else None,
    )
