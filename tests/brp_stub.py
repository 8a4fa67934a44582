"""A BRP stub that answers like Haal Centraal BRP Personen Bevragen (v2): ``POST /personen``
with ``{"type": "RaadpleegMetBurgerservicenummer", "burgerservicenummer": [...], "fields":
[...]}``, and only the asked fields in the answer. Run over HTTPS with a client certificate
required (mutual TLS) by the tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CANARY_NAME = "Brpcanary Q7Z Jansen"


def person(bsn: str, name: str = CANARY_NAME) -> dict[str, Any]:
    return {
        "burgerservicenummer": bsn,
        "naam": {"voornamen": name.split(" ")[0], "volledigeNaam": name},
        "geboorte": {"datum": {"type": "Datum", "datum": "1980-05-17"}},
        "leeftijd": 46,
        "adressering": {"postcode": "6811AA", "woonplaats": "Arnhem"},
        "gemeenteVanInschrijving": {"code": "0202", "omschrijving": "Arnhem"},
    }


def _only(data: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """The parts of ``data`` that ``fields`` name (dot paths), as the real API answers."""
    out: dict[str, Any] = {}
    for path in fields:
        src: Any = data
        dst = out
        parts = path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(src, dict) or part not in src:
                break
            if i == len(parts) - 1:
                dst[part] = src[part]
            else:
                dst = dst.setdefault(part, {})
                src = src[part]
    return out


@dataclass
class BrpStub:
    persons: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    api_key: str | None = None

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/personen", self.personen, methods=["POST"])])

    async def personen(self, request: Request) -> Response:
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return JSONResponse({"title": "Niet geautoriseerd"}, status_code=401)
        body = await request.json()
        self.requests.append(body)
        if body.get("type") != "RaadpleegMetBurgerservicenummer" or not body.get("fields"):
            return JSONResponse({"title": "Bad request"}, status_code=400)
        found = [
            _only(self.persons[b], body["fields"])
            for b in body.get("burgerservicenummer", [])
            if b in self.persons
        ]
        return JSONResponse({"type": "RaadpleegMetBurgerservicenummer", "personen": found})
