"""The contact form end to end through the core, with the demo auth plugin: the resident asks
and leaves, an agent answers in the console, the resident identifies again through the
one-time link and reads the answer; the link works once; at the retention everything is gone."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import CANARY_BSN, CANARY_NAME, Instance, path_of
from tests.flows.test_console import Agent, enrol, state, tick
from tests.flows.test_core_flows import JSON, consent

pytestmark = pytest.mark.anyio

QUESTION = "Canary-Question-7Hd2: mag ik mijn verhuizing later doorgeven?"
ANSWER = "Canary-Answer-Q9x4: ja, tot vier weken na de verhuizing."


async def ask(instance: Instance, question: str = QUESTION) -> tuple[str, str]:
    """A resident identified with the demo method through the core, question sent; returns
    the conversation id and the one-time link shown."""
    body = {"purpose": "report_move", "auth_method": "demo", "comm_method": "form"}
    started = await instance.client.post("/start", json=body, headers=JSON)
    assert started.status_code == 200, started.text
    landed = await consent(instance.client, started.json()["client_url"])
    page = path_of(landed.headers["location"])
    opened = await instance.client.get(page)
    assert opened.status_code == 200 and 'id="form-ask"' in opened.text
    conversation_id = page.rsplit("/", 1)[1]
    # Opening the page does not join the queue: only a question does.
    assert await state(instance, conversation_id) == "authenticated"
    sent = await instance.client.post(f"{page}/ask", data={"question": question})
    assert sent.status_code == 200, sent.text
    assert sent.headers["cache-control"] == "no-store"
    assert "Bewaar deze link goed" in sent.text
    assert question not in sent.text  # the confirmation shows the link, not the question
    return conversation_id, read_link(sent.text)


def read_link(html: str) -> str:
    found = re.search(r'id="read-link" href="([^"]+)"', html)
    assert found, "no one-time link on the page"
    return path_of(found.group(1))


async def answered_by(instance: Instance, conversation_id: str, answer: str = ANSWER) -> Agent:
    agent = await enrol(instance, "fenna")
    assert (await agent.login()).status_code == 303
    assert (await agent.post("/agent/default/presence", presence="available")).status_code == 303
    await tick(instance)
    assert await state(instance, conversation_id) == "offered"
    accepted = await agent.post(f"/agent/default/c/{conversation_id}/accept")
    assert accepted.status_code == 303
    panel = await agent.client.get(f"/agent/default/c/{conversation_id}")
    assert QUESTION in panel.text and 'id="form-answer"' in panel.text
    assert CANARY_NAME in panel.text  # the disclosed attributes, beside the question
    console = await agent.client.get("/agent/default/")
    assert f"/c/{conversation_id}" in console.text  # my work now
    done = await agent.post(f"/agent/default/c/{conversation_id}/answer", text=answer)
    assert done.status_code == 303, done.text
    return agent


async def read(client: httpx.AsyncClient, link: str, action: str = "share") -> httpx.Response:
    """Open the link, identify again with the demo method, come back: the final page."""
    page = await client.get(link)
    assert page.status_code == 200 and 'name="auth_method" value="demo"' in page.text
    started = await client.post(link, data={"auth_method": "demo"})
    assert started.status_code == 303, started.text
    cookie = started.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Path=/comm/form" in cookie
    back = await consent(client, started.headers["location"], action)
    return await client.get(path_of(back.headers["location"]))


async def test_ask_leave_answer_read_again_once(instance: Instance) -> None:
    conversation_id, link = await ask(instance)
    assert await state(instance, conversation_id) == "waiting"
    agent = await answered_by(instance, conversation_id)
    assert await state(instance, conversation_id) == "answered"
    # Done for the agent: off their list, and the panel shows no data any more.
    console = await agent.client.get("/agent/default/")
    assert f"/c/{conversation_id}" not in console.text
    after = await agent.client.get(f"/agent/default/c/{conversation_id}")
    assert QUESTION not in after.text and CANARY_NAME not in after.text
    assert "Beantwoord" in after.text

    # The resident's own page says it is answered, without showing it (the page URL is no
    # proof of who is reading).
    page = await instance.client.get(f"/comm/form/c/{conversation_id}")
    assert "beantwoord" in page.text and ANSWER not in page.text

    shown = await read(instance.client, link)
    assert shown.status_code == 200, shown.text
    assert QUESTION in shown.text and ANSWER in shown.text
    assert shown.headers["referrer-policy"] == "no-referrer"
    fresh = read_link(shown.text)
    assert fresh != link

    used = await instance.client.get(link)
    assert used.status_code == 410 and ANSWER not in used.text
    again = await instance.client.get(shown.url)
    assert again.status_code == 403 and ANSWER not in again.text  # shown once
    # The fresh link reads it again.
    second = await read(instance.client, fresh)
    assert ANSWER in second.text

    assert instance.services.db is not None
    actions = await instance.services.db.run(
        lambda conn: [
            (r.action, r.detail)
            for r in conn.execute(
                text("SELECT action, detail FROM audit_events WHERE conversation_id = :c"),
                {"c": conversation_id},
            )
        ]
    )
    names = [a for a, _ in actions]
    assert names.count("form.read") == 2 and "conversation.answered" in names
    verdicts = [d for a, d in actions if a == "form.reidentified"]
    assert len(verdicts) == 2 and all("match" in d for d in verdicts)
    assert all(CANARY_BSN not in d and QUESTION not in d for _, d in actions)


async def test_everything_is_gone_at_the_retention(
    instance: Instance, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conversation_id, link = await ask(instance)
    await answered_by(instance, conversation_id)
    conversations = instance.services.conversations
    assert conversations is not None and instance.services.db is not None

    # Not before: answered but within the retention, the sweeper leaves it alone.
    assert await conversations.purge_expired() == 0
    await instance.services.db.run(
        lambda conn: conn.execute(
            text("UPDATE conversations SET purge_at = 0 WHERE id = :c"), {"c": conversation_id}
        ),
        write=True,
    )
    assert await conversations.purge_expired() == 1
    assert await state(instance, conversation_id) == "purged"
    for table in ("chat_messages", "vault_entries"):

        def left(conn: Any, table: str = table) -> Any:
            return conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE conversation_id = :c"),  # noqa: S608
                {"c": conversation_id},
            ).scalar()

        assert await instance.services.db.run(left) == 0
    expired = await instance.client.get(link)
    assert expired.status_code == 410 and "bewaartermijn" in expired.text
    if instance.settings.resolved_database_url.startswith("sqlite"):
        from tests.storage.test_vault import raw_bytes

        raw = raw_bytes(instance.settings.data_dir)
        for canary in (QUESTION, ANSWER, CANARY_NAME):
            assert canary.encode() not in raw
    else:  # PostgreSQL: no row of any table holds them (the keys were in an UNLOGGED table)
        dump = await instance.services.db.run(
            lambda conn: repr(
                [
                    conn.execute(text(f"SELECT * FROM {t}")).all()  # noqa: S608
                    for t in ("conversations", "chat_messages", "vault_entries", "audit_events")
                ]
            )
        )
        for canary in (QUESTION, ANSWER, CANARY_NAME, CANARY_BSN):
            assert canary not in dump
    logged = "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)
    assert "request" in logged  # the access log was captured
    for canary in (QUESTION, ANSWER, CANARY_NAME, CANARY_BSN, link.rsplit("/", 1)[1]):
        assert canary not in logged
