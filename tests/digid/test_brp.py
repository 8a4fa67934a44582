"""The BRP lookup: the fields asked, the paths read, the formats, and refusals."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from idcontact.digid.brp import BrpAttribute, BrpClient
from idcontact.digid.levels import LoginRefusedError
from tests.brp_stub import BrpStub, person

pytestmark = pytest.mark.anyio

MAPPING = {
    "fullname": BrpAttribute(path="naam.volledigeNaam"),
    "birthyear": BrpAttribute(path="geboorte.datum.datum", field="geboorte", format="year"),
    "over18": BrpAttribute(path="leeftijd", format="adult"),
}


def client(stub: BrpStub | None = None, answer: Any = None) -> tuple[BrpClient, list[Any]]:
    asked: list[Any] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(json.loads(request.content))
        if answer is not None:
            return httpx.Response(200, json=answer)
        assert stub is not None
        stub.requests.append(asked[-1])
        persons = [stub.persons[b] for b in asked[-1]["burgerservicenummer"] if b in stub.persons]
        return httpx.Response(
            200, json={"type": "RaadpleegMetBurgerservicenummer", "personen": persons}
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    return BrpClient(http, "https://brp.example/personen", {}), asked


async def test_the_values_in_our_tags_and_only_the_needed_fields_asked() -> None:
    brp, asked = client(BrpStub(persons={"999990019": person("999990019", "Jan Jansen")}))
    values = await brp.lookup("999990019", MAPPING, 5)
    assert values == {"fullname": "Jan Jansen", "birthyear": "1980", "over18": "yes"}
    assert asked == [
        {
            "type": "RaadpleegMetBurgerservicenummer",
            "burgerservicenummer": ["999990019"],
            "fields": ["geboorte", "leeftijd", "naam.volledigeNaam"],
        }
    ]


@pytest.mark.parametrize(
    "answer",
    [
        {"personen": []},
        {"personen": [{"naam": {}}]},
        {"personen": [{}, {}]},
        ["not", "an", "object"],
    ],
    ids=["unknown", "no-value", "two-persons", "wrong-shape"],
)
async def test_no_single_person_with_the_values_is_refused(answer: Any) -> None:
    brp, _ = client(answer=answer)
    with pytest.raises(LoginRefusedError) as refused:
        await brp.lookup("999990019", {"fullname": MAPPING["fullname"]}, 5)
    assert refused.value.reason == "brp"
