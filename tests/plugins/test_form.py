"""The ``form`` channel in process: bad input changes nothing, another person or a failed
identification sees nothing, a link works for one browser and at most three failures, a sent
question outlives the idle limit, and the e-mail notice goes through a real SMTP server."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult as SmtpAuthResult, Envelope, LoginPassword, Session
from sqlalchemy import text

from idcontact.forms import MAX_FAILURES, forms_for
from tests import certs
from tests.conftest import CANARY_BSN, CANARY_NAME, PUBLIC, AppFactory, Instance, demo_settings
from tests.flows.test_bad_input import assert_problem
from tests.flows.test_console import enrol, state, tick, waiting_conversation
from tests.flows.test_core_flows import JSON, consent, issue
from tests.flows.test_form import ANSWER, QUESTION, answered_by, ask, read, read_link

pytestmark = pytest.mark.anyio

CANARY_MAIL = "canary-mail-5Tq8@example.org"
JWT = {"Content-Type": "application/jwt"}


async def count(instance: Instance, table: str) -> int:
    assert instance.services.db is not None

    def work(conn: Any) -> int:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar())  # noqa: S608

    return await instance.services.db.run(work)


async def identified(instance: Instance) -> str:
    """A resident identified for the form, on their page, no question yet."""
    body = {"purpose": "report_move", "auth_method": "demo", "comm_method": "form"}
    started = await instance.client.post("/start", json=body, headers=JSON)
    landed = await consent(instance.client, started.json()["client_url"])
    return str(landed.headers["location"]).rsplit("/", 1)[1]


async def test_bad_questions_change_nothing(instance: Instance) -> None:
    conversation_id = await identified(instance)
    page = f"/comm/form/c/{conversation_id}"
    for question, status in (("", 400), ("   \n ", 400), ("x" * 4001, 400)):
        refused = await instance.client.post(f"{page}/ask", data={"question": question})
        assert_problem(refused, status)
        assert await state(instance, conversation_id) == "authenticated"
    assert await count(instance, "chat_messages") == 0
    assert await count(instance, "form_questions") == 0
    assert_problem(
        await instance.client.post("/comm/form/c/nope/ask", data={"question": "Hallo"}), 404
    )
    sent = await instance.client.post(f"{page}/ask", data={"question": "x" * 4000})
    assert sent.status_code == 200
    twice = await instance.client.post(f"{page}/ask", data={"question": "nog een"})
    assert twice.status_code == 409 and "al verstuurd" in twice.text  # a page: a reload, say
    assert 'id="read-link"' not in twice.text  # the link is shown once
    await instance.client.post(f"/comm/form/c/{conversation_id}/end")  # withdrawn
    gone = await instance.client.post(f"{page}/ask", data={"question": "nog een"})
    assert_problem(gone, 409, "invalid-transition")
    assert await count(instance, "chat_messages") == 0  # withdrawn: deleted at once


async def test_a_form_needs_identification(instance: Instance) -> None:
    # waste_collection allows talking without identifying; the form cannot serve that.
    body = {"purpose": "report_move", "unidentified": True}
    refused = await instance.client.post("/comm/form/start_communication", json=body)
    assert_problem(refused, 400, "method-not-allowed")
    assert await count(instance, "conversations") == 0


async def test_another_person_sees_nothing_and_a_token_counts_once(instance: Instance) -> None:
    conversation_id, link = await ask(instance)
    await answered_by(instance, conversation_id)
    conversations = instance.services.conversations
    queues = instance.services.tenants["default"].queues
    assert conversations is not None
    forms = forms_for(PUBLIC, "form", conversations, queues)
    secret = link.rsplit("/", 1)[1]

    attempt, _ = await forms.begin(secret)
    other = issue(instance, {"fullname": CANARY_NAME, "bsn": "999990020"})
    judged = await instance.client.post(
        f"/comm/form/reid/{attempt.slot}", content=other, headers=JWT
    )
    assert judged.status_code == 200 and judged.json() == {"state": "mismatch"}
    again = await instance.client.post(
        f"/comm/form/reid/{attempt.slot}", content=other, headers=JWT
    )
    assert_problem(again, 404)  # the slot was single use
    async with browser(instance, attempt.browser) as b:
        page = await b.get(f"/comm/form/r/{attempt.ret}")
    assert page.status_code == 403 and "niet dezelfde persoon" in page.text
    assert ANSWER not in page.text and QUESTION not in page.text

    # The same token at a new attempt: a replay, refused.
    second, _ = await forms.begin(secret)
    replay = await instance.client.post(
        f"/comm/form/reid/{second.slot}", content=other, headers=JWT
    )
    assert_problem(replay, 400, "token-replayed")
    # The right person, but from another browser: nothing; from the one that began: the answer.
    same = issue(instance, {"fullname": CANARY_NAME, "bsn": CANARY_BSN})
    judged = await instance.client.post(f"/comm/form/reid/{second.slot}", content=same, headers=JWT)
    assert judged.json() == {"state": "match"}
    async with browser(instance, "someone-else") as b:
        stranger = await b.get(f"/comm/form/r/{second.ret}")
    assert stranger.status_code == 403 and ANSWER not in stranger.text
    async with browser(instance, second.browser) as b:
        shown = await b.get(f"/comm/form/r/{second.ret}")
    assert shown.status_code == 200 and ANSWER in shown.text

    assert instance.services.db is not None
    verdicts = await instance.services.db.run(
        lambda conn: [
            r.detail
            for r in conn.execute(
                text("SELECT detail FROM audit_events WHERE action = 'form.reidentified'")
            )
        ]
    )
    assert len(verdicts) == 2 and "mismatch" in verdicts[0] and "999990020" not in verdicts[0]


async def test_three_failed_identifications_use_the_link_up(instance: Instance) -> None:
    conversation_id, link = await ask(instance)
    for _ in range(MAX_FAILURES):
        page = await read(instance.client, link, action="cancel")
        assert page.status_code == 403 and "geannuleerd of mislukt" in page.text
        assert QUESTION not in page.text
    dead = await instance.client.get(link)
    assert dead.status_code == 410
    begun = await instance.client.post(link, data={"auth_method": "demo"})
    assert begun.status_code == 410
    assert await state(instance, conversation_id) == "waiting"  # the question itself stays


async def test_bad_reading_requests(instance: Instance) -> None:
    _, link = await ask(instance)
    assert (await instance.client.get("/comm/form/a/unknown-link")).status_code == 410
    wrong = await instance.client.post(link, data={"auth_method": "nope"})
    assert_problem(wrong, 400, "method-not-allowed")
    nobody = await instance.client.get("/comm/form/r/unknown")
    assert nobody.status_code == 403
    assert_problem(
        await instance.client.post("/comm/form/reid/unknown", content="x", headers=JWT), 404
    )
    assert_problem(await instance.client.post("/comm/form/reid/unknown", content="x"), 415)


async def test_bad_answers_change_nothing(instance: Instance) -> None:
    conversation_id, _ = await ask(instance)
    agent = await enrol(instance, "gijs")
    assert (await agent.login()).status_code == 303
    # Not mine (not even offered yet): 404, as for any conversation one does not hold.
    not_mine = await agent.post(f"/agent/default/c/{conversation_id}/answer", text="Hallo")
    assert_problem(not_mine, 404)
    await agent.post("/agent/default/presence", presence="available")
    await tick(instance)
    await agent.post(f"/agent/default/c/{conversation_id}/accept")
    empty = await agent.post(f"/agent/default/c/{conversation_id}/answer", text="  ")
    assert_problem(empty, 400)
    assert await state(instance, conversation_id) == "connected"
    done = await agent.post(f"/agent/default/c/{conversation_id}/answer", text=ANSWER)
    assert done.status_code == 303
    twice = await agent.post(f"/agent/default/c/{conversation_id}/answer", text="nog iets")
    assert_problem(twice, 409)
    assert await count(instance, "chat_messages") == 2


async def test_a_sent_question_is_not_purged_as_idle(instance: Instance) -> None:
    sent, _ = await ask(instance)
    unsent = await identified(instance)
    assert instance.services.db is not None and instance.services.conversations is not None
    await instance.services.db.run(
        # Quiet for longer than the idle limit (15 minutes), well within the retention (2 h).
        lambda conn: conn.execute(
            text("UPDATE conversations SET last_activity = last_activity - 1000")
        ),
        write=True,
    )
    assert await instance.services.conversations.purge_expired() == 1
    assert await state(instance, unsent) == "purged"  # the usual idle rule before sending
    assert await state(instance, sent) == "waiting"  # the resident need not stay


# -- e-mail ------------------------------------------------------------------------------------


@dataclass
class Inbox:
    messages: list[Envelope] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Relay:
    inbox: Inbox
    port: int
    ca_file: Path


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` and its key, as the relay's (and the client's CA)."""
    return certs.self_signed(directory, "localhost", "relay.pem", "relay.key")


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[Relay]:
    """A real SMTP server on loopback that wants STARTTLS and then a login."""
    inbox = Inbox()
    cert_file, key_file = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)

    def authenticate(
        server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> SmtpAuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"idcontact",
            b"relay-secret",
        )
        return SmtpAuthResult(success=ok)

    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        server_hostname="localhost",
        tls_context=tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
    )
    controller.start()
    try:
        yield Relay(inbox, port, cert_file)
    finally:
        controller.stop()


def mail_settings(tmp_path: Path, port: int, ca_file: Path | None = None) -> Any:
    demo = demo_settings(tmp_path)
    purposes = [p.model_dump() for p in demo.purposes] + [
        {
            "tag": "personal_question",
            "label": {"nl": "Persoonlijke vraag", "en": "Personal question"},
            "attributes": ["fullname", "bsn", "email"],
            "allowed_auth": ["demo"],
            "allowed_comm": ["form"],
            "subject_attribute": "bsn",
        }
    ]
    return demo_settings(
        tmp_path,
        purposes=purposes,
        plugins={
            "auth": {
                "demo": {
                    "attributes": {"fullname": CANARY_NAME, "bsn": CANARY_BSN, "email": CANARY_MAIL}
                }
            },
            "comm": {
                "form": {
                    "smtp": {
                        "host": "localhost",
                        "port": port,
                        "security": "starttls",
                        "ca_file": str(ca_file) if ca_file else None,
                        "from_address": "noreply@gemeente.example",
                        "username": "idcontact",
                        "password": "relay-secret",
                    }
                }
            },
        },
    )


async def ask_personal(instance: Instance) -> tuple[str, str]:
    body = {"purpose": "personal_question", "auth_method": "demo", "comm_method": "form"}
    started = await instance.client.post("/start", json=body, headers=JSON)
    landed = await consent(instance.client, started.json()["client_url"])
    page = str(landed.headers["location"]).removeprefix(PUBLIC)
    sent = await instance.client.post(f"{page}/ask", data={"question": QUESTION})
    assert sent.status_code == 200 and "e-mail" in sent.text
    return page.rsplit("/", 1)[1], read_link(sent.text)


async def test_the_answer_notice_is_mailed_without_the_answer(
    make_app: AppFactory,
    tmp_path: Path,
    smtp: Relay,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    inbox = smtp.inbox
    instance: Instance = await make_app(mail_settings(tmp_path, smtp.port, smtp.ca_file))
    conversation_id, link = await ask_personal(instance)
    await answered_by(instance, conversation_id)
    assert len(inbox.messages) == 1
    envelope = inbox.messages[0]
    assert envelope.rcpt_tos == [CANARY_MAIL]
    body = envelope.original_content or b""
    assert ANSWER.encode() not in body and QUESTION.encode() not in body
    assert CANARY_BSN.encode() not in body
    mailed = read_link(
        next(
            f'id="read-link" href="{line.decode().strip()}"'
            for line in body.splitlines()
            if line.startswith(PUBLIC.encode())
        )
    )
    # The mailed link replaces the first; it reads the answer after identifying again.
    assert (await instance.client.get(link)).status_code == 410
    shown = await read(instance.client, mailed)
    assert ANSWER in shown.text
    logged = our_logs(caplog)
    assert "request" in logged  # the access log was captured
    for canary in (CANARY_MAIL, QUESTION, ANSWER, CANARY_BSN, CANARY_NAME):
        assert canary not in logged


async def test_a_failed_mail_leaves_the_answer_and_names_no_address(
    make_app: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    instance: Instance = await make_app(mail_settings(tmp_path, free_port()))  # nobody listens
    conversation_id, link = await ask_personal(instance)
    await answered_by(instance, conversation_id)
    assert await state(instance, conversation_id) == "answered"
    assert (await instance.client.get(link)).status_code == 200  # the first link still works
    assert instance.services.db is not None
    failed = await instance.services.db.run(
        lambda conn: conn.execute(
            text("SELECT count(*) FROM audit_events WHERE action = 'form.mail_failed'")
        ).scalar()
    )
    assert failed == 1
    assert CANARY_MAIL not in our_logs(caplog)


def our_logs(caplog: pytest.LogCaptureFixture) -> str:
    """Every record of ours, with its extra fields (the test relay's own log is not ours)."""
    return "\n".join(
        f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records if not r.name.startswith("mail")
    )


def browser(instance: Instance, cookie: str) -> httpx.AsyncClient:
    """Another browser on the instance, with the given reading cookie."""
    return httpx.AsyncClient(
        transport=instance.client._transport,
        base_url=PUBLIC,
        cookies={"idc_form": cookie},
    )


async def test_a_question_in_hand_does_not_block_a_chat(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """One chat at a time (``max_chats = 1``), yet a taken form question leaves room for it."""
    instance: Instance = await make_app(
        demo_settings(tmp_path, queues=[{"tag": "general", "max_chats": 1}])
    )
    question, _ = await ask(instance)
    agent = await enrol(instance, "hanna")
    assert (await agent.login()).status_code == 303
    await agent.post("/agent/default/presence", presence="available")
    await tick(instance)
    assert (await agent.post(f"/agent/default/c/{question}/accept")).status_code == 303
    assert await state(instance, question) == "connected"
    chat = await waiting_conversation(instance)  # the demo channel counts as a chat
    await tick(instance)
    assert await state(instance, chat) == "offered"
    assert (await agent.post(f"/agent/default/c/{chat}/accept")).status_code == 303
    # Holding that chat, a second chat is not offered; the question still can be answered.
    other = await waiting_conversation(instance, bsn="999990020")
    await tick(instance)
    assert await state(instance, other) == "waiting"
    done = await agent.post(f"/agent/default/c/{question}/answer", text=ANSWER)
    assert done.status_code == 303 and await state(instance, question) == "answered"
