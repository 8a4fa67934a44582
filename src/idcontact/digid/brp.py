"""The rest of a purpose's attributes from the BRP, for a BSN that DigiD proved: Haal Centraal
BRP Personen Bevragen (v2), query ``RaadpleegMetBurgerservicenummer``, asking only the fields
the purpose needs (``fields``), over mutual TLS.

Each of our attribute tags maps to a path in the answer (``naam.volledigeNaam``), optionally a
different field to ask for and a format (``year`` of a date, ``adult`` from ``leeftijd``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from idcontact.digid.levels import LoginRefusedError

QUERY = "RaadpleegMetBurgerservicenummer"
PATH = r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$"


class BrpAttribute(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(pattern=PATH)
    """Where the value is in a ``personen`` item, e.g. ``adressering.postcode``."""
    field: str | None = Field(default=None, pattern=PATH)
    """What to ask for in ``fields`` (default: ``path``)."""
    format: Literal["text", "year", "adult"] = "text"

    @property
    def asked(self) -> str:
        return self.field or self.path


class BrpClient:
    def __init__(self, http: httpx.AsyncClient, url: str, headers: Mapping[str, str]) -> None:
        self._http = http
        self._url = url
        self._headers = dict(headers)

    async def lookup(
        self, bsn: str, attributes: Mapping[str, BrpAttribute], deadline: float
    ) -> dict[str, str]:
        """Our tags' values for ``bsn``; exactly the asked fields, nothing else kept."""
        fields = sorted({a.asked for a in attributes.values()})
        body = {"type": QUERY, "burgerservicenummer": [bsn], "fields": fields}
        try:
            response = await self._http.post(
                self._url, json=body, headers=self._headers, timeout=deadline
            )
        except httpx.HTTPError:
            raise LoginRefusedError("brp", "The BRP could not be reached") from None
        if response.status_code != 200:
            raise LoginRefusedError("brp", "The BRP refused the lookup")
        try:
            answer = response.json()
        except ValueError:
            raise LoginRefusedError("brp", "The BRP answered in an unknown shape") from None
        persons = answer.get("personen") if isinstance(answer, dict) else None
        if not isinstance(persons, list) or len(persons) != 1 or not isinstance(persons[0], dict):
            raise LoginRefusedError("brp", "The BRP does not know this person")
        values: dict[str, str] = {}
        for tag, attribute in attributes.items():
            value = _format(_at(persons[0], attribute.path), attribute.format)
            if value is None:
                raise LoginRefusedError("brp", "The BRP has no value for an attribute")
            values[tag] = value
        return values


def _at(item: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(item, list):
            item = item[0] if item else None
        if not isinstance(item, dict):
            return None
        item = item.get(part)
    return item


def _format(value: Any, how: str) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    if how == "adult":
        try:
            return "yes" if int(value) >= 18 else "no"
        except (TypeError, ValueError):
            return None
    text = str(value)
    if how == "year":
        return text[:4] if len(text) >= 4 and text[:4].isdigit() else None
    return text
