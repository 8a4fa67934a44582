"""The agent console end to end: enrolment, login, queue offers, the attribute panel, wrap-up,
deletion, and the walls between tenants and between agents."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pyotp
import pytest
from sqlalchemy import text

from idcontact.agents.directory import Membership
from idcontact.errors import ConfigError
from tests.conftest import CANARY_BSN, CANARY_NAME, PUBLIC, AppFactory, Instance, demo_settings
from tests.flows.test_core_flows import JSON, issue
from tests.flows.test_tenants import NIJMEGEN_CANARY, flow, two_tenants

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery staple"


def field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no field {name}"
    return found.group(1)


class Agent:
    """An agent's browser: its own cookie jar on the instance."""

    def __init__(self, instance: Instance, username: str, secret: str) -> None:
        self.instance = instance
        self.username = username
        self.secret = secret
        self.client = httpx.AsyncClient(
            transport=instance.client._transport, base_url=PUBLIC, follow_redirects=False
        )

    async def login(self, code: str | None = None) -> httpx.Response:
        page = await self.client.get("/agent/login")
        assert page.status_code == 200
        return await self.client.post(
            "/agent/login",
            data={
                "username": self.username,
                "password": PASSWORD,
                "code": code or pyotp.TOTP(self.secret).now(),
                "csrf": field(page.text, "csrf"),
            },
        )

    async def csrf(self, slug: str = "default") -> str:
        page = await self.client.get(f"/agent/{slug}/")
        assert page.status_code == 200, page.text
        return field(page.text, "csrf")

    async def post(self, path: str, slug: str = "default", **data: str) -> httpx.Response:
        return await self.client.post(path, data={"csrf": await self.csrf(slug), **data})


async def enrol(
    instance: Instance, username: str, memberships: list[Membership] | None = None
) -> Agent:
    directory = instance.services.agents
    assert directory is not None
    code = await directory.add(
        username, username.title(), memberships or [Membership("default", "agent", ("*",))]
    )
    anon = Agent(instance, username, "")
    page = await anon.client.get(f"/agent/enrol/{code}")
    assert page.status_code == 200
    assert "<svg" in page.text  # the QR code, rendered here, no third party
    secret = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', page.text)
    assert secret
    anon.secret = secret.group(1).replace(" ", "")
    done = await anon.client.post(
        f"/agent/enrol/{code}",
        data={
            "password": PASSWORD,
            "password_again": PASSWORD,
            "totp": pyotp.TOTP(anon.secret).now(),
            "sealed": field(page.text, "sealed"),
            "csrf": field(page.text, "csrf"),
        },
    )
    assert done.status_code == 303, done.text
    again = await anon.client.get(f"/agent/enrol/{code}")
    assert again.status_code == 400  # the code is spent
    return anon


async def waiting_conversation(instance: Instance, bsn: str = CANARY_BSN) -> str:
    token = issue(instance, {"fullname": CANARY_NAME, "bsn": bsn})
    body = {"purpose": "report_move", "auth_result": token, "comm_method": "demo"}
    response = await instance.client.post("/start", json=body, headers=JSON)
    assert response.status_code == 200, response.text
    conversation_id = str(response.json()["client_url"].rsplit("/", 1)[1])
    queues = instance.services.tenants["default"].queues
    assert queues is not None
    await queues.enqueue(conversation_id, actor="test")
    return conversation_id


async def tick(instance: Instance, slug: str = "default") -> None:
    """Run the dispatcher now (as its loop does on every change and each second)."""
    queues = instance.services.tenants[slug].queues
    assert queues is not None
    await queues.tick()


async def state(instance: Instance, conversation_id: str) -> str:
    conversations = instance.services.conversations
    assert conversations is not None
    return (await conversations.get(conversation_id)).state


async def test_enrol_login_offer_accept_reveal_wrap_up_and_delete(instance: Instance) -> None:
    agent = await enrol(instance, "anna")
    before = await agent.client.get("/agent/default/")
    assert before.status_code == 303 and before.headers["location"] == "/agent/login"
    logged_in = await agent.login()
    assert logged_in.status_code == 303, logged_in.text
    cookie = logged_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")

    # Through the demo auth plugin, so the attributes carry their provenance.
    conversation_id = (await flow(instance, "", "report_move")).rsplit("/", 1)[1]
    queues = instance.services.tenants["default"].queues
    assert queues is not None
    await queues.enqueue(conversation_id, actor="test")
    await tick(instance)
    assert await state(instance, conversation_id) == "waiting"  # nobody is available yet
    assert (await agent.post("/agent/default/presence", presence="available")).status_code == 303
    await tick(instance)  # the service's own loop may have been first: either way, offered
    assert await state(instance, conversation_id) == "offered"

    console = await agent.client.get("/agent/default/")
    assert f"/c/{conversation_id}/accept" in console.text
    assert CANARY_NAME not in console.text  # the list holds no attributes

    accepted = await agent.post(f"/agent/default/c/{conversation_id}/accept")
    assert accepted.status_code == 303
    panel = await agent.client.get(accepted.headers["location"])
    assert panel.status_code == 200
    assert CANARY_NAME in panel.text
    assert CANARY_BSN not in panel.text  # sensitive: masked until "show"
    assert "Alleen deze gegevens zijn aangetoond" in panel.text
    assert "<dd>Demo-identificatie</dd>" in panel.text  # the method that proved them
    assert "<dd>substantieel</dd>" in panel.text  # and its assurance

    revealed = await agent.post(f"/agent/default/c/{conversation_id}/reveal", attribute="bsn")
    assert revealed.status_code == 200 and CANARY_BSN in revealed.text

    finished = await agent.post(f"/agent/default/c/{conversation_id}/finish")
    assert finished.status_code == 303
    assert await state(instance, conversation_id) == "wrap_up"
    wrap = await agent.client.get(f"/agent/default/c/{conversation_id}")
    assert CANARY_NAME in wrap.text and "gewist" in wrap.text  # still there during wrap-up

    closed = await agent.post(f"/agent/default/c/{conversation_id}/close")
    assert closed.status_code == 303
    assert await state(instance, conversation_id) == "ended"
    gone = await agent.client.get(f"/agent/default/c/{conversation_id}")
    assert CANARY_NAME not in gone.text

    assert instance.services.db is not None
    actions = await instance.services.db.run(
        lambda conn: [
            (r.actor, r.action, r.detail)
            for r in conn.execute(
                text("SELECT actor, action, detail FROM audit_events WHERE conversation_id = :c"),
                {"c": conversation_id},
            )
        ]
    )
    names = [a for _, a, _ in actions]
    for expected in (
        "conversation.offered",
        "conversation.connected",
        "attributes.view",
        "attributes.reveal",
        "conversation.wrap_up",
        "conversation.ended",
    ):
        assert expected in names
    assert all(CANARY_BSN not in d and CANARY_NAME not in d for _, _, d in actions)


async def test_offer_not_accepted_returns_to_the_head_and_pauses_the_agent(
    make_app: AppFactory, tmp_path: Any
) -> None:
    # One chat at a time, so the second resident has to wait for the first.
    instance: Instance = await make_app(
        demo_settings(tmp_path, queues=[{"tag": "general", "max_chats": 1}])
    )
    agent = await enrol(instance, "bert")
    assert (await agent.login()).status_code == 303
    first = await waiting_conversation(instance)
    second = await waiting_conversation(instance, "123456782")
    await agent.post("/agent/default/presence", presence="available")
    await tick(instance)
    assert await state(instance, first) == "offered"  # longest waiting first
    assert await state(instance, second) == "waiting"

    declined = await agent.post(f"/agent/default/c/{first}/decline")
    assert declined.status_code == 303
    assert await state(instance, first) == "waiting"
    queues = instance.services.tenants["default"].queues
    assert queues is not None
    places = await queues.places()
    assert places[first].position == 1 and places[second].position == 2  # back at the head
    await tick(instance)
    assert await state(instance, first) == "waiting"  # the agent is paused now


async def test_an_agent_sees_only_their_own_conversations(instance: Instance) -> None:
    anna = await enrol(instance, "anna")
    bert = await enrol(instance, "bert")
    assert (await anna.login()).status_code == 303
    assert (await bert.login()).status_code == 303
    conversation_id = await waiting_conversation(instance)
    await anna.post("/agent/default/presence", presence="available")
    await tick(instance)
    for path in (f"/agent/default/c/{conversation_id}",):
        assert (await bert.client.get(path)).status_code == 404
    for action in ("accept", "finish", "close", "reveal"):
        response = await bert.post(f"/agent/default/c/{conversation_id}/{action}", attribute="bsn")
        assert response.status_code == 404, action
    assert await state(instance, conversation_id) == "offered"


async def test_tenant_walls(make_app: AppFactory, tmp_path: Any) -> None:
    inst: Instance = await make_app(two_tenants(tmp_path))
    agent = await enrol(inst, "anna")  # a member of the default tenant only
    assert (await agent.login()).status_code == 303
    landing = await flow(inst, "/t/nijmegen", "parking_permit")
    nijmegen_id = landing.rsplit("/", 1)[1]
    nijmegen_queues = inst.services.tenants["nijmegen"].queues
    assert nijmegen_queues is not None
    await nijmegen_queues.enqueue(nijmegen_id, actor="test")

    for path in (
        "/agent/nijmegen/",
        "/agent/nijmegen/board",
        "/agent/nijmegen/events",
        "/agent/nijmegen/stats",
        f"/agent/nijmegen/c/{nijmegen_id}",
        f"/agent/default/c/{nijmegen_id}",
    ):
        assert (await agent.client.get(path)).status_code == 404, path
    csrf = await agent.csrf()
    for action in ("accept", "finish", "close", "reveal"):
        for slug in ("nijmegen", "default"):
            r = await agent.client.post(
                f"/agent/{slug}/c/{nijmegen_id}/{action}", data={"csrf": csrf}
            )
            assert r.status_code in (403, 404), (slug, action)
    board = await agent.client.get("/agent/default/board")
    assert nijmegen_id not in board.text and "Wachtrij (0)" in board.text  # not even counted
    await agent.post("/agent/default/presence", presence="available")
    await tick(inst, "default")
    await tick(inst, "nijmegen")
    conversations = inst.services.tenants["nijmegen"].conversations
    assert conversations is not None
    assert (await conversations.get(nijmegen_id)).state == "waiting"  # never offered to anna
    assert NIJMEGEN_CANARY not in board.text


async def test_csrf_origin_and_session_rules(instance: Instance) -> None:
    agent = await enrol(instance, "anna")
    assert (await agent.login()).status_code == 303
    no_token = await agent.client.post("/agent/default/presence", data={"presence": "available"})
    assert no_token.status_code == 400  # a missing field is a bad request
    wrong = await agent.client.post(
        "/agent/default/presence", data={"presence": "available", "csrf": "x" * 43}
    )
    assert wrong.status_code == 403 and wrong.json()["type"].endswith("/csrf")
    foreign = await agent.client.post(
        "/agent/default/presence",
        data={"presence": "available", "csrf": await agent.csrf()},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    cross_site = await agent.client.post(
        "/agent/default/presence",
        data={"presence": "available", "csrf": await agent.csrf()},
        headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    )
    assert cross_site.status_code == 403
    old_cookie = agent.client.cookies.get("idc_agent")
    csrf = await agent.csrf()
    out = await agent.client.post("/agent/logout", data={"csrf": csrf})
    assert out.status_code == 303
    replay = httpx.AsyncClient(transport=instance.client._transport, base_url=PUBLIC)
    replay.cookies.set("idc_agent", old_cookie or "", path="/agent")
    assert (await replay.get("/agent/default/")).status_code == 303  # the session is gone


async def test_login_is_throttled_and_codes_are_single_use(instance: Instance) -> None:
    agent = await enrol(instance, "anna")
    code = pyotp.TOTP(agent.secret).now()
    assert (await agent.login(code)).status_code == 303
    second = Agent(instance, "anna", agent.secret)
    reused = await second.login(code)
    assert reused.status_code == 401  # a code opens one session only
    for _ in range(4):
        assert (await second.login("000000")).status_code == 401
    blocked = await second.login(pyotp.TOTP(agent.secret).now())
    assert blocked.status_code == 429 and "Too many" in blocked.text
    assert PASSWORD not in blocked.text


async def test_supervisor_statistics_and_admin_export(instance: Instance) -> None:
    agent = await enrol(instance, "anna")
    sup = await enrol(instance, "sam", [Membership("default", "supervisor", ("*",))])
    admin = await enrol(instance, "ada", [Membership("default", "admin", ("*",))])
    for a in (agent, sup, admin):
        assert (await a.login()).status_code == 303
    await waiting_conversation(instance)
    assert (await agent.client.get("/agent/default/stats")).status_code == 403
    stats = await sup.client.get("/agent/default/stats?format=json")
    assert stats.status_code == 200
    general = stats.json()["queues"][0]
    assert general["queue"] == "general" and general["waiting"] == 1
    assert CANARY_NAME not in stats.text and CANARY_BSN not in stats.text
    assert (await sup.client.get("/agent/default/audit.csv")).status_code == 403
    export = await admin.client.get("/agent/default/audit.csv")
    assert export.status_code == 200 and export.text.startswith("id,time_utc,actor")
    assert CANARY_BSN not in export.text and CANARY_NAME not in export.text


async def test_record_links_and_acting_for_someone_else(
    make_app: AppFactory, tmp_path: Any
) -> None:
    """The panel links to the resident's record elsewhere through an audited redirect (the
    masked BSN never sits in the page), and the agent can note that the resident acts for
    someone else: the panel then says whose identity is proven."""
    links = [{"label": "Open in KISS", "url": "https://kiss.example/personen?bsn={bsn}#p"}]
    instance: Instance = await make_app(demo_settings(tmp_path, record_links=links))
    agent = await enrol(instance, "anna")
    await agent.login()
    conversation_id = await waiting_conversation(instance)
    await agent.post("/agent/default/presence", presence="available")
    await tick(instance)
    await agent.post(f"/agent/default/c/{conversation_id}/accept")
    panel = await agent.client.get(f"/agent/default/c/{conversation_id}")
    assert "Open in KISS" in panel.text and CANARY_BSN not in panel.text
    opened = await agent.client.get(f"/agent/default/c/{conversation_id}/record/0")
    assert opened.status_code == 303
    assert opened.headers["location"] == f"https://kiss.example/personen?bsn={CANARY_BSN}#p"
    assert opened.headers["referrer-policy"] == "no-referrer"
    assert (
        await agent.client.get(f"/agent/default/c/{conversation_id}/record/1")
    ).status_code == 404
    other = await enrol(instance, "bert")
    await other.login()
    assert (
        await other.client.get(f"/agent/default/c/{conversation_id}/record/0")
    ).status_code == 404

    assert "Namens een ander." not in panel.text
    marked = await agent.post(f"/agent/default/c/{conversation_id}/represent", attribute="on")
    assert marked.status_code == 303
    panel = await agent.client.get(f"/agent/default/c/{conversation_id}")
    assert "Namens een ander." in panel.text and "Toch niet namens een ander" in panel.text
    await agent.post(f"/agent/default/c/{conversation_id}/represent", attribute="off")
    assert (
        "Namens een ander."
        not in (await agent.client.get(f"/agent/default/c/{conversation_id}")).text
    )
    db = instance.services.db
    assert db is not None
    actions = await db.run(
        lambda conn: [
            r[0]
            for r in conn.execute(
                text("SELECT action FROM audit_events WHERE conversation_id = :c"),
                {"c": conversation_id},
            )
        ]
    )
    assert actions.count("conversation.acting_for") == 2
    assert actions.count("attributes.view") >= 2  # the panel and the record link


def test_record_link_templates_are_checked(tmp_path: Any) -> None:
    for url, problem in (
        ("http://kiss.example/{bsn}", "https URL"),
        ("https://kiss.example/personen", "placeholders"),
        ("https://kiss.example/{bsn!r}", "placeholders"),
        ("https://kiss.example/{shoe_size}", "no purpose's attribute"),
    ):
        with pytest.raises(ConfigError, match=problem):
            demo_settings(tmp_path, record_links=[{"label": "KISS", "url": url}])


async def audit_of(instance: Instance, conversation_id: str) -> list[tuple[str, str, str]]:
    db = instance.services.db
    assert db is not None
    return await db.run(
        lambda conn: [
            (r[0], r[1], r[2])
            for r in conn.execute(
                text(
                    "SELECT actor, action, detail FROM audit_events WHERE conversation_id = :c "
                    "ORDER BY id"
                ),
                {"c": conversation_id},
            )
        ]
    )


async def test_warm_and_cold_transfers_move_the_data_with_the_conversation(
    make_app: AppFactory, tmp_path: Any
) -> None:
    queues = [{"tag": "general"}, {"tag": "taxes", "name": {"nl": "Belastingen", "en": "Taxes"}}]
    instance: Instance = await make_app(demo_settings(tmp_path, queues=queues))
    anna, bert = await enrol(instance, "anna"), await enrol(instance, "bert")
    carl = await enrol(instance, "carl", [Membership("default", "agent", ("taxes",))])
    for agent in (anna, bert, carl):
        await agent.login()
    conversation_id = await waiting_conversation(instance)
    await anna.post("/agent/default/presence", presence="available")
    await tick(instance)
    await anna.post(f"/agent/default/c/{conversation_id}/accept")
    panel = await anna.client.get(f"/agent/default/c/{conversation_id}")
    assert "Doorverbinden" in panel.text
    assert ">Bert (pauze)<" in panel.text and "Carl" not in panel.text  # only its queue's agents
    ids = {a.username: await agent_id_of(instance, a.username) for a in (anna, bert, carl)}

    # Warm: offered to Bert; Anna keeps it (and the data) until he takes it.
    refused = await anna.post(f"/agent/default/c/{conversation_id}/offer", target=ids["carl"])
    assert refused.status_code == 400  # Carl does not serve this queue
    offered = await anna.post(f"/agent/default/c/{conversation_id}/offer", target=ids["bert"])
    assert offered.status_code == 303
    assert CANARY_NAME in (await anna.client.get(f"/agent/default/c/{conversation_id}")).text
    board = await bert.client.get("/agent/default/board")
    assert "Overdracht van een collega" in board.text and CANARY_NAME not in board.text
    assert (await bert.client.get(f"/agent/default/c/{conversation_id}")).status_code == 404
    taken = await bert.post(f"/agent/default/c/{conversation_id}/take")
    assert taken.status_code == 303
    assert CANARY_NAME in (await bert.client.get(f"/agent/default/c/{conversation_id}")).text
    assert (await anna.client.get(f"/agent/default/c/{conversation_id}")).status_code == 404
    assert (await anna.post(f"/agent/default/c/{conversation_id}/take")).status_code == 404

    # Cold: Bert sends it to the taxes queue; Carl gets it from the line, with the data.
    await anna.post("/agent/default/presence", presence="paused")
    assert (
        await bert.post(f"/agent/default/c/{conversation_id}/transfer", target="nope")
    ).status_code == 400
    sent = await bert.post(f"/agent/default/c/{conversation_id}/transfer", target="taxes")
    assert sent.status_code == 303
    assert await state(instance, conversation_id) == "waiting"
    assert (await bert.client.get(f"/agent/default/c/{conversation_id}")).status_code == 404
    await carl.post("/agent/default/presence", presence="available")
    await tick(instance)
    assert await state(instance, conversation_id) == "offered"
    await carl.post(f"/agent/default/c/{conversation_id}/accept")
    assert CANARY_NAME in (await carl.client.get(f"/agent/default/c/{conversation_id}")).text

    trail = await audit_of(instance, conversation_id)
    actions = [a for _, a, _ in trail]
    assert "conversation.transfer_offered" in actions and "conversation.transferred" in actions
    moved = next(d for _, a, d in trail if a == "conversation.waiting" and "taxes" in d)
    assert "to_queue" in moved
    viewers = {actor for actor, a, _ in trail if a == "attributes.view"}
    assert viewers == {f"agent:{ids[n]}" for n in ("anna", "bert", "carl")}
    assert CANARY_NAME not in str(trail)


async def test_a_warm_transfer_can_be_declined_cancelled_and_expires(
    make_app: AppFactory, tmp_path: Any
) -> None:
    clock = Clock()
    instance: Instance = await make_app(demo_settings(tmp_path), clock=clock)
    anna, bert = await enrol(instance, "anna"), await enrol(instance, "bert")
    for agent in (anna, bert):
        await agent.login()
    conversation_id = await waiting_conversation(instance)
    await anna.post("/agent/default/presence", presence="available")
    await tick(instance)
    await anna.post(f"/agent/default/c/{conversation_id}/accept")
    bert_id = await agent_id_of(instance, "bert")
    await anna.post(f"/agent/default/c/{conversation_id}/offer", target=bert_id)
    assert (await bert.post(f"/agent/default/c/{conversation_id}/refuse")).status_code == 303
    assert "Overdracht" not in (await bert.client.get("/agent/default/board")).text
    await anna.post(f"/agent/default/c/{conversation_id}/offer", target=bert_id)
    assert (await anna.post(f"/agent/default/c/{conversation_id}/refuse")).status_code == 303
    assert (await bert.post(f"/agent/default/c/{conversation_id}/take")).status_code == 404
    await anna.post(f"/agent/default/c/{conversation_id}/offer", target=bert_id)
    clock.now += 30 * 4 + 1  # the offer lapses; Anna still has the conversation
    assert (await bert.post(f"/agent/default/c/{conversation_id}/take")).status_code == 409
    assert CANARY_NAME in (await anna.client.get(f"/agent/default/c/{conversation_id}")).text


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def agent_id_of(instance: Instance, username: str) -> str:
    db = instance.services.db
    assert db is not None
    return str(
        await db.run(
            lambda conn: conn.execute(
                text("SELECT id FROM agents WHERE username = :u"), {"u": username}
            ).scalar_one()
        )
    )
