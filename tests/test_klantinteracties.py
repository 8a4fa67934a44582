"""The Klantinteracties connector against a stub built from the Klantinteracties 0.9.0 spec: every
request it sends and every answer it gets validate against the spec (tests/openklant.py).
Identified (partij made, then found), unidentified, with a callback task, with the transcript;
a failure mid-way continues without duplicates; a wrong token is recorded and retried, never
shown; attribute values exist only sealed; given up after the window."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from idcontact.app import create_app
from idcontact.domain.lifecycle import InvalidTransitionError
from idcontact.errors import BadRequestError, ConfigError, NotFoundError
from idcontact.klantinteracties import (
    LEASE_SECONDS,
    Contact,
    KlantinteractiesClient,
    KlantinteractiesHandOver,
    RegistrationFailed,
    Registrations,
    reference,
)
from idcontact.settings import Klantinteracties, load_settings
from idcontact.storage.db import registrations as table
from tests.conftest import (
    CANARY_BSN,
    CANARY_NAME,
    PUBLIC,
    _reset_postgres,
    demo_settings,
)
from tests.flows.test_tenants import two_tenants
from tests.openklant import Failure, Stub, open_klant, spec
from tests.plugins.test_chat import TestClient, resident_in_line, services
from tests.plugins.test_chat_identify import unidentified_chat
from tests.services import postgres_url
from tests.test_transcripts import CANARY, Clock, data_files, ended_chat

TOKEN = "open-klant-token-which-must-stay-secret-7Yq"
ACTOR = "8b7c3a52-4f1e-4c8e-9a51-0c3f6b1d2e77"
NOTE = re.compile(
    r"^Geïdentificeerd via Demo-identificatie, betrouwbaarheid (laag|substantieel|hoog), "
    r"om \d\d-\d\d-\d{4} \d\d:\d\d\.$"
)


@pytest.fixture
def stub() -> Iterator[Stub]:
    with open_klant(TOKEN) as s:
        yield s


@pytest.fixture(autouse=True)
def _spec_loaded() -> None:
    spec()  # parsed once, before any timing matters


def settings_for(tmp_path: Path, stub: Stub, token: str = TOKEN, **extra: Any) -> Any:
    overrides: dict[str, Any] = {}
    for name in ("transcripts", "database_url"):
        if name in extra:
            overrides[name] = extra.pop(name)
    return demo_settings(
        tmp_path,
        klantinteracties={"url": stub.url, "token": token, "callback_actor": ACTOR, **extra},
        **overrides,
    )


def registrations(client: TestClient) -> Registrations:
    found: Registrations = services(client).registrations["default"]
    return found


def call(client: TestClient, fn: Any, *args: Any, **kwargs: Any) -> Any:
    return client.portal.call(lambda: fn(*args, **kwargs))  # type: ignore[union-attr]


def request(client: TestClient, conversation_id: str, **kwargs: Any) -> Any:
    return call(
        client, registrations(client).request, conversation_id, actor="agent:chris", **kwargs
    )


def row(client: TestClient, conversation_id: str) -> Any:
    db = services(client).conversations.db
    return call(
        client,
        db.run,
        lambda conn: conn.execute(
            select(table).where(table.c.conversation_id == conversation_id)
        ).first(),
    )


def unidentified(client: TestClient) -> str:
    """A resident chatting about waste collection without identifying: its conversation id."""
    return unidentified_chat(client).split("?", 1)[0].rsplit("/", 1)[1]


def in_line(client: TestClient) -> str:
    return resident_in_line(client).rsplit("/", 1)[1]


def everything_sent(stub: Stub) -> str:
    return repr(stub.requests) + repr(stub.headers[-1:])


def test_identified_contact_makes_the_partij_once_then_finds_it(
    tmp_path: Path, stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings_for(tmp_path, stub)), base_url=PUBLIC) as client:
        first, second = in_line(client), in_line(client)
        status = request(client, first)
        assert status.state == "done", status
        assert status.nummer and status.text == (
            f"Geregistreerd in Klantinteracties als klantcontact {status.nummer}."
        )
        assert request(client, second).state == "done"

    assert stub.errors == []
    # The first made the persoon with its BSN identificator; the second found it.
    made = stub.posts("/partijen")
    assert len(made) == 1
    assert made[0]["soortPartij"] == "persoon"
    assert made[0]["partijIdentificatoren"] == [
        {
            "partijIdentificator": {
                "codeObjecttype": "natuurlijk_persoon",
                "codeSoortObjectId": "bsn",
                "objectId": CANARY_BSN,
                "codeRegister": "brp",
            }
        }
    ]
    (partij,) = stub.partijen
    contacts = stub.posts("/maak-klantcontact")
    assert len(contacts) == 2 and len(stub.klantcontacten) == 2
    body = contacts[0]
    kc = body["klantcontact"]
    assert kc["kanaal"] == "chat" and kc["onderwerp"] == "Verhuizing doorgeven"
    assert NOTE.match(kc["inhoud"]), kc["inhoud"]
    assert kc["vertrouwelijk"] is True and kc["taal"] == "nld"
    assert body["betrokkene"] == {"rol": "klant", "initiator": True, "wasPartij": {"uuid": partij}}
    ref = body["onderwerpobject"]["onderwerpobjectidentificator"]
    assert ref["codeRegister"] == "idcontact" and ref["objectId"] == reference(first)
    assert first not in everything_sent(stub)  # the conversation id itself is not sent
    # Never any other attribute value, and the token only in its header.
    assert CANARY_NAME not in everything_sent(stub)
    assert {h["authorization"] for h in stub.headers} == {f"Token {TOKEN}"}
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert CANARY_BSN not in logs and CANARY_NAME not in logs and TOKEN not in logs


def test_an_unidentified_contact_has_no_partij(tmp_path: Path, stub: Stub) -> None:
    with TestClient(create_app(settings_for(tmp_path, stub)), base_url=PUBLIC) as client:
        conversation_id = unidentified(client)
        assert request(client, conversation_id).state == "done"
    assert stub.errors == []
    assert not [r for r in stub.requests if r[1] == "/partijen"]
    (body,) = stub.posts("/maak-klantcontact")
    assert body["betrokkene"] == {"rol": "klant", "initiator": True}
    assert body["klantcontact"]["inhoud"] == "Niet geïdentificeerd."
    assert body["klantcontact"]["onderwerp"] == "Vraag over afvalinzameling"
    assert body["klantcontact"]["vertrouwelijk"] is False


def test_a_callback_request_becomes_an_internetaak(tmp_path: Path, stub: Stub) -> None:
    with TestClient(create_app(settings_for(tmp_path, stub)), base_url=PUBLIC) as client:
        conversation_id = in_line(client)
        status = request(client, conversation_id, callback=True, toelichting=" Na 14:00 bellen ")
        assert status.state == "done"
        assert row(client, conversation_id).internetaak_uuid in stub.internetaken
        # Asked again: the registration is returned as it is, nothing is sent again.
        sent = len(stub.requests)
        assert request(client, conversation_id, callback=True).state == "done"
        assert len(stub.requests) == sent
    assert stub.errors == []
    (taak,) = stub.posts("/internetaken")
    (kc,) = stub.klantcontacten
    assert taak == {
        "aanleidinggevendKlantcontact": {"uuid": kc},
        "gevraagdeHandeling": "Terugbellen",
        "status": "te_verwerken",
        "toelichting": "Na 14:00 bellen",
        "toegewezenAanActoren": [{"uuid": ACTOR}],
    }


def test_two_agents_at_once_make_one_registration(tmp_path: Path, stub: Stub) -> None:
    with TestClient(create_app(settings_for(tmp_path, stub)), base_url=PUBLIC) as client:
        conversation_id = in_line(client)
        service = registrations(client)

        async def both() -> list[Any]:
            return list(
                await asyncio.gather(
                    service.request(conversation_id, actor="agent:a"),
                    service.request(conversation_id, actor="agent:b"),
                )
            )

        statuses = call(client, both)
        assert {s.state for s in statuses} <= {"pending", "done"}
        assert call(client, service.status, conversation_id).state == "done"
    assert stub.errors == [] and len(stub.klantcontacten) == 1


def test_a_lost_answer_mid_way_continues_without_a_duplicate(
    tmp_path: Path, stub: Stub, database: str
) -> None:
    clock = Clock()
    extra: dict[str, Any] = {}
    if database == "postgres":
        extra["database_url"] = postgres_url()
        asyncio.run(_reset_postgres(extra["database_url"]))
    # The contact is made but its answer is lost (502), then the task fails (503) once.
    stub.failures += [
        Failure("POST", "/maak-klantcontact", 502, after=True),
        Failure("POST", "/internetaken", 503),
    ]
    app = create_app(settings_for(tmp_path, stub, **extra), clock=clock)
    with TestClient(app, base_url=PUBLIC) as client:
        conversation_id = in_line(client)
        status = request(client, conversation_id, callback=True)
        assert status.state == "pending" and status.attempts == 1
        assert status.reason == (
            "Klantinteracties gaf een serverfout bij het aanmaken van het klantcontact"
        )
        assert "wordt opnieuw geprobeerd" in status.text
        stored = row(client, conversation_id)
        assert stored.partij_uuid in stub.partijen and stored.klantcontact_uuid is None

        assert call(client, registrations(client).run) == 0  # not due yet (back-off)
        clock.now += 31
        assert call(client, registrations(client).run) == 0  # found the contact; task 503
        stored = row(client, conversation_id)
        assert stored.klantcontact_uuid in stub.klantcontacten and stored.attempts == 2
        assert "terugbeltaak" in call(client, registrations(client).status, conversation_id).text

        clock.now += 61
        assert call(client, registrations(client).run) == 1
        assert call(client, registrations(client).status, conversation_id).state == "done"
    assert stub.errors == []
    assert len(stub.klantcontacten) == 1 and len(stub.posts("/maak-klantcontact")) == 1
    assert len(stub.posts("/partijen")) == 1 and len(stub.internetaken) == 1


def test_a_wrong_token_is_recorded_retried_and_never_shown(
    tmp_path: Path, stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-that-must-not-leak-4Hd"
    clock = Clock()
    app = create_app(settings_for(tmp_path, stub, token=wrong), clock=clock)
    with TestClient(app, base_url=PUBLIC) as client:
        conversation_id = in_line(client)
        status = request(client, conversation_id)
        assert status.state == "pending" and status.attempts == 1
        assert status.reason == (
            "Klantinteracties weigerde de toegang (token ongeldig of zonder rechten) bij het "
            "zoeken of aanmaken van de partij (BSN)"
        )
        clock.now += 31
        call(client, registrations(client).run)
        assert call(client, registrations(client).status, conversation_id).attempts == 2
        shown = repr(call(client, registrations(client).status, conversation_id).as_json())
    assert stub.errors == [] and not stub.partijen
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "klantinteracties registration failed" in logs
    for secret in (wrong, TOKEN):
        assert secret not in logs and secret not in shown
        assert secret.encode() not in data_files(tmp_path)


def test_values_exist_only_sealed_and_outlive_the_conversation(
    tmp_path: Path, stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    """The API is down; the conversation ends and its data is destroyed; the registration
    keeps what it needs sealed and succeeds later, then keeps nothing."""
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    stub.failures.append(Failure("GET", "/partijen", 500, times=1))
    app = create_app(settings_for(tmp_path, stub), clock=clock)
    with TestClient(app, base_url=PUBLIC) as client:
        conversation_id = in_line(client)
        toelichting = "Canary-Toelichting-2Wm"
        assert request(client, conversation_id, callback=True, toelichting=toelichting).state == (
            "pending"
        )
        stored = row(client, conversation_id)
        assert stored.ciphertext is not None
        files = data_files(tmp_path)
        for canary in (CANARY_BSN, CANARY_NAME, toelichting):
            assert canary.encode() not in files  # sealed, beside the sealed conversation
        conversations = services(client).conversations
        call(client, conversations.end, conversation_id, actor="agent:chris")
        call(client, conversations.purge_expired)
        assert call(client, conversations.attributes, conversation_id, actor="t") is None
        files = data_files(tmp_path)
        for canary in (CANARY_BSN, CANARY_NAME, toelichting):
            assert canary.encode() not in files

        clock.now += 31
        assert call(client, registrations(client).run) == 1
        stored = row(client, conversation_id)
        assert stored.state == "done" and stored.ciphertext is None and stored.nonce is None
        key = call(client, conversations.vault.keys.get, f"kis:{stored.id}")
        assert key is None
    assert stub.errors == []
    assert stub.posts("/partijen")[0]["partijIdentificatoren"][0]["partijIdentificator"][
        "objectId"
    ] == (CANARY_BSN)
    assert stub.posts("/internetaken")[0]["toelichting"] == toelichting
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for canary in (CANARY_BSN, CANARY_NAME, toelichting):
        assert canary not in logs


def test_given_up_after_the_window(
    tmp_path: Path, stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    stub.failures.append(Failure("GET", "/partijen", 500, times=1000))
    app = create_app(settings_for(tmp_path, stub, retry_hours=2), clock=clock)
    with TestClient(app, base_url=PUBLIC) as client:
        conversation_id = in_line(client)
        assert request(client, conversation_id).state == "pending"
        clock.now += 3600
        call(client, registrations(client).run)
        assert call(client, registrations(client).status, conversation_id).state == "pending"
        clock.now += 3601
        call(client, registrations(client).run)
        status = call(client, registrations(client).status, conversation_id)
        assert status.state == "failed"
        assert status.text == (
            "Niet geregistreerd in Klantinteracties: opgegeven na herhaalde pogingen; "
            "Klantinteracties gaf een serverfout bij het zoeken of aanmaken van de partij (BSN)."
        )
        stored = row(client, conversation_id)
        assert stored.ciphertext is None
        assert call(client, services(client).conversations.vault.keys.get, f"kis:{stored.id}") is (
            None
        )
        # Given up: the sweeper leaves it alone; the agent may ask again, which continues.
        sent = len(stub.requests)
        clock.now += 3600
        call(client, registrations(client).run)
        assert len(stub.requests) == sent
        stub.failures.clear()
        assert request(client, conversation_id).state == "done"
    assert any("given up" in r.getMessage() for r in caplog.records)
    assert stub.errors == [] and len(stub.klantcontacten) == 1


def test_a_transcript_is_handed_over_as_the_contact_text(tmp_path: Path, stub: Stub) -> None:
    settings = settings_for(
        tmp_path, stub, transcripts={"keep": "hand_over", "plugin": "klantinteracties"}
    )
    with TestClient(create_app(settings), base_url=PUBLIC) as client:
        conversation_id = ended_chat(client)
        keeper = services(client).hand_overs["default"]
        assert call(client, keeper.run) == 1
    assert stub.errors == []
    (body,) = stub.posts("/maak-klantcontact")
    inhoud = body["klantcontact"]["inhoud"]
    note, transcript = inhoud.split("\n\nGesprek:\n")
    assert NOTE.match(note)
    assert re.fullmatch(
        rf"Inwoner \d\d:\d\d: {CANARY}\nInwoner \d\d:\d\d: tweede bericht", transcript
    )
    assert body["klantcontact"]["vertrouwelijk"] is True
    assert body["onderwerpobject"]["onderwerpobjectidentificator"]["objectId"] == reference(
        conversation_id
    )
    assert body["betrokkene"]["wasPartij"]["uuid"] in stub.partijen


def test_a_registered_contact_gets_the_transcript_at_the_end(tmp_path: Path, stub: Stub) -> None:
    settings = settings_for(
        tmp_path, stub, transcripts={"keep": "hand_over", "plugin": "klantinteracties"}
    )
    with TestClient(create_app(settings), base_url=PUBLIC) as client:
        page = resident_in_line(client)
        conversation_id = page.rsplit("/", 1)[1]
        client.post(page + "/say", data={"text": CANARY})
        assert request(client, conversation_id).state == "done"
        assert client.post(page + "/end", follow_redirects=False).status_code == 303
        assert call(client, services(client).hand_overs["default"].run) == 1
    assert stub.errors == []
    assert len(stub.posts("/maak-klantcontact")) == 1 and len(stub.klantcontacten) == 1
    (patch,) = [body for m, _, _, body in stub.requests if m == "PATCH"]
    assert CANARY in patch["inhoud"] and patch["vertrouwelijk"] is True
    assert CANARY in next(iter(stub.klantcontacten.values()))["inhoud"]


@pytest.mark.anyio
async def test_a_long_transcript_continues_in_reactie_and_too_long_fails(stub: Stub) -> None:
    async with httpx.AsyncClient() as http:
        client = KlantinteractiesClient(
            http,
            Klantinteracties.model_validate({"url": stub.url, "token": TOKEN}),
        )

        def contact(ref: str, length: int) -> Contact:
            return Contact(
                ref * 32, "chat", "x", "Niet geïdentificeerd.", 0.0, transcript="a" * length
            )

        made = await client.register(contact("r", 3000))
        kc = stub.klantcontacten[made.klantcontact or ""]
        assert len(kc["inhoud"]) == 1000 and kc["inhoud"].endswith(" [vervolg in reactie]")
        whole = kc["inhoud"].removesuffix(" [vervolg in reactie]") + kc["reactie"]
        assert whole == "Niet geïdentificeerd.\n\nGesprek:\n" + "a" * 3000
        with pytest.raises(RegistrationFailed) as failed:
            await client.register(contact("s", 6000))
        assert failed.value.kind == "too_long"
    assert stub.errors == [] and len(stub.klantcontacten) == 1


@pytest.mark.anyio
async def test_the_stub_rejects_what_the_spec_forbids(stub: Stub) -> None:
    """The contract check is real: a body against the spec is refused and recorded."""
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            stub.url + "/maak-klantcontact",
            json={
                "klantcontact": {"onderwerp": "x", "taal": "nld", "vertrouwelijk": True},
                "betrokkene": {"rol": "burger", "initiator": True},
            },
            headers={"Authorization": f"Token {TOKEN}"},
        )
        assert answer.status_code == 400
        assert "kanaal" in stub.errors[0] and "burger" in stub.errors[0]
        stub.errors.clear()
        wrong_date = await http.get(
            stub.url + "/klantcontacten",
            params={"plaatsgevondenOp": "gisteren"},
            headers={"Authorization": f"Token {TOKEN}"},
        )
        assert wrong_date.status_code == 400 and stub.errors
        stub.errors.clear()
        unknown = await http.get(
            stub.url + "/klantcontacten",
            params={"referentie": "x"},
            headers={"Authorization": f"Token {TOKEN}"},
        )
        assert unknown.status_code == 400 and "undeclared query ['referentie']" in stub.errors[0]


def test_requests_outside_the_conversation_or_too_long_change_nothing(
    tmp_path: Path, stub: Stub
) -> None:
    with TestClient(create_app(settings_for(tmp_path, stub)), base_url=PUBLIC) as client:
        conversation_id = in_line(client)
        with pytest.raises(BadRequestError):
            request(client, conversation_id, callback=True, toelichting="x" * 1001)
        call(client, services(client).conversations.end, conversation_id, actor="agent:chris")
        with pytest.raises(InvalidTransitionError):
            request(client, conversation_id)
        assert row(client, conversation_id) is None
        assert call(client, registrations(client).status, conversation_id) is None
    assert stub.requests == []


def test_configuration_errors_name_the_setting(tmp_path: Path, stub: Stub) -> None:
    with pytest.raises(ConfigError, match=r"klantinteracties: token: set exactly one"):
        demo_settings(tmp_path, klantinteracties={"url": stub.url})
    with pytest.raises(ConfigError, match=r"klantinteracties.url: must be an http\(s\) URL"):
        demo_settings(tmp_path, klantinteracties={"url": "ftp://x", "token": TOKEN})
    missing = tmp_path / "no-such-token"
    with pytest.raises(ConfigError, match=r"^klantinteracties.token_file: cannot be read$"):
        create_app(
            demo_settings(tmp_path, klantinteracties={"url": stub.url, "token_file": missing})
        )
    with pytest.raises(ConfigError, match=r"^transcripts.settings: invalid or missing url"):
        KlantinteractiesHandOver(httpx.AsyncClient(), {"token": TOKEN})
    with pytest.raises(ConfigError) as caught:
        KlantinteractiesHandOver(httpx.AsyncClient(), {"url": stub.url, "token": TOKEN, "x": 1})
    assert TOKEN not in str(caught.value)


def test_each_tenant_uses_its_own_api_and_token(tmp_path: Path) -> None:
    other_token = "nijmegen-open-klant-token-9Lx"
    base = two_tenants(tmp_path).model_dump(mode="json", exclude={"tenants"})
    nijmegen = two_tenants(tmp_path).tenants[0].model_dump(mode="json")
    with open_klant(TOKEN) as arnhem_api, open_klant(other_token) as nijmegen_api:
        settings = load_settings(
            None,
            {
                **base,
                "data_dir": str(tmp_path / "data"),
                "klantinteracties": {"url": arnhem_api.url, "token": TOKEN},
                "tenants": [
                    {
                        **nijmegen,
                        "klantinteracties": {"url": nijmegen_api.url, "token": other_token},
                    }
                ],
            },
        )
        with TestClient(create_app(settings), base_url=PUBLIC) as client:
            ours = in_line(client)
            store = services(client).tenants["nijmegen"].conversations
            purpose = store.tenant.purpose("parking_permit")
            theirs, _ = call(
                client, store.create, purpose, "demo", with_slot=False, unidentified=True
            )
            nijmegen_registrations = services(client).registrations["nijmegen"]
            with pytest.raises(NotFoundError):  # another tenant's conversation
                call(client, nijmegen_registrations.request, ours, actor="agent:n")
            assert request(client, ours).state == "done"
            status = call(client, nijmegen_registrations.request, theirs, actor="agent:n")
            assert status.state == "done"
    for api, token in ((arnhem_api, TOKEN), (nijmegen_api, other_token)):
        assert api.errors == [] and len(api.klantcontacten) == 1
        assert {h["authorization"] for h in api.headers} == {f"Token {token}"}
    (kc,) = nijmegen_api.klantcontacten.values()
    assert kc["onderwerp"] == "Parkeervergunning"


def test_one_broken_attempt_does_not_stop_the_others(
    tmp_path: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    app = create_app(settings_for(tmp_path, stub), clock=clock)
    with TestClient(app, base_url=PUBLIC) as client:
        service = registrations(client)
        first, second = in_line(client), in_line(client)
        for conversation_id in (first, second):
            call(client, service.request, conversation_id, actor="agent:a", attempt_now=False)
        client_ = service._client
        real = client_.register
        broken: list[str] = []

        async def register_once_broken(contact: Contact, done: Any = None) -> Any:
            if not broken:
                broken.append(contact.reference)
                raise RuntimeError("unexpected")
            return await real(contact, done)

        monkeypatch.setattr(client_, "register", register_once_broken)
        assert call(client, service.run) == 1
        states = {c: call(client, service.status, c).state for c in (first, second)}
        assert sorted(states.values()) == ["done", "pending"]
        clock.now += LEASE_SECONDS + 1  # the broken one's claim has run out: tried again
        assert call(client, service.run) == 1
        assert {call(client, service.status, c).state for c in (first, second)} == {"done"}
    assert any("attempt broke" in r.getMessage() for r in caplog.records)
    assert stub.errors == [] and len(stub.klantcontacten) == 2


def test_the_agent_registers_from_the_console_never_automatically(
    tmp_path: Path, stub: Stub
) -> None:
    """The button in the conversation panel: nothing is sent until the agent presses it; then
    the panel says what happened, and the button is gone once registered."""
    from tests.flows.test_console import field
    from tests.plugins.test_chat import agent_holding

    with TestClient(create_app(settings_for(tmp_path, stub)), base_url=PUBLIC) as client:
        page = resident_in_line(client)
        conversation_id = agent_holding(client, page)
        panel = client.get(f"/agent/default/c/{conversation_id}")
        assert "Contact registreren" in panel.text
        assert stub.requests == []  # never automatically
        pressed = client.post(
            f"/agent/default/c/{conversation_id}/register",
            data={
                "csrf": field(panel.text, "csrf"),
                "attribute": "callback",
                "note": "Graag morgen terugbellen",
            },
            follow_redirects=False,
        )
        assert pressed.status_code == 303, pressed.text
        after = client.get(f"/agent/default/c/{conversation_id}")
        assert "Geregistreerd in Klantinteracties als klantcontact" in after.text
        assert "Contact registreren" not in after.text
    assert stub.errors == []
    assert len(stub.posts("/maak-klantcontact")) == 1
    (task,) = stub.posts("/internetaken")
    assert task["toelichting"] == "Graag morgen terugbellen"
