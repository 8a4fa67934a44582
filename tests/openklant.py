"""A stub Klantinteracties API (version 0.9.0, Open Klant) built from its OpenAPI description.

Every request is validated against the spec (path, method, query parameters, security header,
request body with required fields, enums and formats) by ``openapi-core``, and so is every
answer the stub gives; a mismatch is recorded in ``errors`` (the tests require it empty) and
answered with 400 (request) or 500 (answer). Behind that, a small in-memory store does what the
connector uses: partijen with identificatoren, maak-klantcontact, klantcontacten, internetaken.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openapi_core import OpenAPI
from openapi_core.contrib.starlette.requests import StarletteOpenAPIRequest
from openapi_core.contrib.starlette.responses import StarletteOpenAPIResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.live import serve
from tests.services import _unavailable

# Kept in the repository (tests/testdata/openklant/README.md says where it comes from), so a
# fresh clone anywhere has it.
SPEC = Path(__file__).resolve().parent / "testdata/openklant/klantinteracties-openapi.yaml"
PREFIX = "/klantinteracties/api/v1"

_spec_cache: dict[str, OpenAPI] = {}


def spec() -> OpenAPI:
    """The parsed spec (once per test session: parsing takes a few seconds)."""
    if "api" not in _spec_cache:
        if not SPEC.exists():
            _unavailable(f"the Klantinteracties spec is missing: {SPEC}")
        _spec_cache["api"] = OpenAPI.from_file_path(str(SPEC))
    return _spec_cache["api"]


@dataclass
class Failure:
    """Answer ``status`` to the next ``times`` requests matching ``method path`` (a prefix);
    with ``after``, first do the work, then answer the failure (a lost answer)."""

    method: str
    path: str
    status: int
    times: int = 1
    after: bool = False


@dataclass
class Stub:
    token: str
    url: str = ""
    errors: list[str] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    """(method, path, query, JSON body) of every request, in order."""
    headers: list[dict[str, str]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    partijen: dict[str, dict[str, Any]] = field(default_factory=dict)
    klantcontacten: dict[str, dict[str, Any]] = field(default_factory=dict)
    betrokkenen: dict[str, dict[str, Any]] = field(default_factory=dict)
    onderwerpobjecten: dict[str, dict[str, Any]] = field(default_factory=dict)
    internetaken: dict[str, dict[str, Any]] = field(default_factory=dict)
    _count: int = 0

    def posts(self, path: str) -> list[Any]:
        return [body for m, p, _, body in self.requests if m == "POST" and p == path]

    # -- the store ------------------------------------------------------------------------

    def _url(self, kind: str, id_: str) -> str:
        return f"{self.url}/{kind}/{id_}"

    def _fk(self, kind: str, id_: str) -> dict[str, str]:
        return {"uuid": id_, "url": self._url(kind, id_)}

    def _page(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return {"count": len(results), "next": None, "previous": None, "results": results}

    def _partij(self, body: dict[str, Any]) -> dict[str, Any]:
        pid = str(uuid.uuid4())
        identificatoren = []
        for given in body.get("partijIdentificatoren") or []:
            iid = str(uuid.uuid4())
            identificatoren.append(
                {
                    "uuid": iid,
                    "url": self._url("partij-identificatoren", iid),
                    "identificeerdePartij": self._fk("partijen", pid),
                    "partijIdentificator": dict(given["partijIdentificator"]),
                }
            )
        partij = {
            "uuid": pid,
            "url": self._url("partijen", pid),
            "interneNotitie": "",
            "betrokkenen": [],
            "categorieRelaties": [],
            "digitaleAdressen": [],
            "vertegenwoordigden": [],
            "rekeningnummers": [],
            "partijIdentificatoren": identificatoren,
            "soortPartij": body["soortPartij"],
            "indicatieActief": body["indicatieActief"],
            "partijIdentificatie": {"volledigeNaam": ""},
        }
        self.partijen[pid] = partij
        return partij

    def _klantcontact(self, body: dict[str, Any]) -> dict[str, Any]:
        kid = str(uuid.uuid4())
        self._count += 1
        contact = {
            **body,
            "uuid": kid,
            "url": self._url("klantcontacten", kid),
            "nummer": f"{self._count:010d}",
            "gingOverOnderwerpobjecten": [],
            "hadBetrokkenActoren": [],
            "hadBetrokkenen": [],
            "leiddeTotInterneTaken": [],
            "omvatteBijlagen": [],
        }
        self.klantcontacten[kid] = contact
        return contact

    def _maak(self, body: dict[str, Any]) -> dict[str, Any]:
        contact = self._klantcontact(body["klantcontact"])
        answer: dict[str, Any] = {"klantcontact": contact}
        if "betrokkene" in body:
            bid = str(uuid.uuid4())
            betrokkene = {
                **body["betrokkene"],
                "uuid": bid,
                "url": self._url("betrokkenen", bid),
                "hadKlantcontact": self._fk("klantcontacten", contact["uuid"]),
                "digitaleAdressen": [],
                "volledigeNaam": "",
            }
            if betrokkene.get("wasPartij"):
                betrokkene["wasPartij"] = self._fk("partijen", betrokkene["wasPartij"]["uuid"])
            self.betrokkenen[bid] = betrokkene
            contact["hadBetrokkenen"].append(self._fk("betrokkenen", bid))
            answer["betrokkene"] = betrokkene
        if "onderwerpobject" in body:
            oid = str(uuid.uuid4())
            onderwerp = {
                **body["onderwerpobject"],
                "uuid": oid,
                "url": self._url("onderwerpobjecten", oid),
                "klantcontact": self._fk("klantcontacten", contact["uuid"]),
            }
            self.onderwerpobjecten[oid] = onderwerp
            contact["gingOverOnderwerpobjecten"].append(self._fk("onderwerpobjecten", oid))
            answer["onderwerpobject"] = onderwerp
        return answer

    def _internetaak(self, body: dict[str, Any]) -> dict[str, Any]:
        tid = str(uuid.uuid4())
        kc = body["aanleidinggevendKlantcontact"]["uuid"]
        taak = {
            **body,
            "uuid": tid,
            "url": self._url("internetaken", tid),
            "aanleidinggevendKlantcontact": self._fk("klantcontacten", kc),
            "toegewezenOp": datetime.now(UTC).isoformat(),
            "toegewezenAanActoren": [
                self._fk("actoren", a["uuid"]) for a in body.get("toegewezenAanActoren", [])
            ],
        }
        self.internetaken[tid] = taak
        if kc in self.klantcontacten:
            self.klantcontacten[kc]["leiddeTotInterneTaken"].append(self._fk("internetaken", tid))
        return taak

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/partijen":
            keys = {k.split("__", 1)[1]: v for k, v in query.items() if "__" in k}
            found = [
                p
                for p in self.partijen.values()
                if p["soortPartij"] == query.get("soortPartij", p["soortPartij"])
                and any(
                    all(i["partijIdentificator"].get(k) == v for k, v in keys.items())
                    for i in p["partijIdentificatoren"]
                )
            ]
            return 200, self._page(found)
        if method == "POST" and path == "/partijen":
            return 201, self._partij(body)
        if method == "POST" and path == "/maak-klantcontact":
            return 201, self._maak(body)
        if method == "GET" and path == "/klantcontacten":
            ref = query.get("onderwerpobject__onderwerpobjectidentificatorObjectId")
            register = query.get("onderwerpobject__onderwerpobjectidentificatorCodeRegister")
            found = [
                self.klantcontacten[o["klantcontact"]["uuid"]]
                for o in self.onderwerpobjecten.values()
                if (o.get("onderwerpobjectidentificator") or {}).get("objectId") == ref
                and (o.get("onderwerpobjectidentificator") or {}).get("codeRegister") == register
            ]
            return 200, self._page(found)
        if method == "PATCH" and path.startswith("/klantcontacten/"):
            contact = self.klantcontacten.get(path.rsplit("/", 1)[1])
            if contact is None:
                return 404, {"detail": "Niet gevonden."}
            contact.update(body)
            return 200, contact
        if method == "GET" and path == "/internetaken":
            kc = query.get("aanleidinggevendKlantcontact__uuid")
            found = [
                t
                for t in self.internetaken.values()
                if t["aanleidinggevendKlantcontact"]["uuid"] == kc
            ]
            return 200, self._page(found)
        if method == "POST" and path == "/internetaken":
            return 201, self._internetaak(body)
        return 404, {"detail": "Niet gevonden."}

    def failure(self, method: str, path: str) -> Failure | None:
        for f in self.failures:
            if f.times > 0 and f.method == method and path.startswith(f.path):
                f.times -= 1
                return f
        return None


def app(stub: Stub) -> Starlette:
    api = spec()

    async def endpoint(request: Request) -> Response:
        raw = await request.body()
        path = request.url.path.removeprefix(PREFIX)
        body = json.loads(raw) if raw else None
        query = dict(request.query_params)
        stub.requests.append((request.method, path, query, body))
        stub.headers.append(dict(request.headers))
        checked = StarletteOpenAPIRequest(request, body=raw)
        result = api.unmarshal_request(checked)
        if result.errors:
            stub.errors.append(f"{request.method} {path}: {_describe(result.errors)}")
            return JSONResponse({"detail": "ongeldig verzoek"}, status_code=400)
        undeclared = set(query) - set(result.parameters.query)
        if undeclared:  # the spec allows them, the API would ignore them: a silent no-filter
            stub.errors.append(f"{request.method} {path}: undeclared query {sorted(undeclared)}")
            return JSONResponse({"detail": "onbekende parameter"}, status_code=400)
        if request.headers.get("authorization") != f"Token {stub.token}":
            return JSONResponse({"detail": "Ongeldige token."}, status_code=401)
        failure = stub.failure(request.method, path)
        if failure is not None and not failure.after:
            return JSONResponse({"detail": "storing"}, status_code=failure.status)
        status, answer = stub.handle(request.method, path, query, body)
        response = JSONResponse(answer, status_code=status)
        if status < 300:
            checked_answer = api.unmarshal_response(checked, StarletteOpenAPIResponse(response))
            if checked_answer.errors:
                stub.errors.append(
                    f"answer {request.method} {path}: {_describe(checked_answer.errors)}"
                )
                return JSONResponse({"detail": "stub answer invalid"}, status_code=500)
        if failure is not None:  # the work is done, the answer is lost
            return JSONResponse({"detail": "storing"}, status_code=failure.status)
        return response

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route(PREFIX + "/{rest:path}", endpoint, methods=methods)])


def _describe(errors: Iterable[Exception]) -> str:
    out = []
    for error in errors:
        out.append(repr(error))
        for inner in getattr(error, "schema_errors", ()) or ():
            out.append(f"  {inner.message} at {list(inner.absolute_path)}")
        cause = error.__cause__
        if cause is not None:
            out.append(f"  cause: {cause!r}")
            for inner in getattr(cause, "schema_errors", ()) or ():
                out.append(f"    {inner.message} at {list(inner.absolute_path)}")
    return "\n".join(out)


@contextmanager
def open_klant(token: str) -> Iterator[Stub]:
    """The stub behind uvicorn on 127.0.0.1; ``stub.url`` is the API root."""
    stub = Stub(token=token)
    with serve(lambda base: app(stub)) as base:
        stub.url = base + PREFIX
        yield stub
