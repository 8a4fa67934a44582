"""One place that turns errors into ``application/problem+json`` (RFC 9457).

The handler is registered on the root of the error tree, so every subclass is covered, and a
generic one catches the rest as a 500 without ever echoing ``str(exc)``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from idcontact.errors import IdContactError
from idcontact.logs import correlation_id

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://idcontact.nl/problems/"
MEDIA_TYPE = "application/problem+json"


def problem(status: int, slug: str, title: str, detail: str | None = None) -> JSONResponse:
    body: dict[str, object] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "instance": f"urn:idcontact:request:{correlation_id.get()}",
    }
    if detail and detail != title:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    404: ("not-found", "Not found"),
    405: ("http-method-not-allowed", "HTTP method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("payload-too-large", "The request body is too large"),
    415: ("unsupported-media-type", "Unsupported content type"),
}


def install(app: FastAPI) -> None:
    async def on_other(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=(type(exc), exc, exc.__traceback__))
        return problem(500, "internal-error", "Internal error")

    async def on_ours(_request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, IdContactError):  # pragma: no cover - registered for this class
            return await on_other(_request, exc)
        if exc.status >= 500:
            log.warning("request failed", extra={"error": exc.slug})
        return problem(exc.status, exc.slug, exc.title, exc.detail)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):  # pragma: no cover
            return await on_other(_request, exc)
        # Name the fields that are wrong, never the values that were sent.
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return problem(
            400, "invalid-request", "The request is not valid", "Check: " + ", ".join(fields)
        )

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
            return await on_other(_request, exc)
        slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "Request failed"))
        response = problem(exc.status_code, slug, title)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    app.add_exception_handler(IdContactError, on_ours)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_other)
