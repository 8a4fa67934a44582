"""The attribute panel embedded in another site's agent desktop (``/agent/embed/…``): framing
only by the tenant's origins, a login that reaches the frame through a one-time code, a
partitioned cookie that opens nothing but the panel, and a panel that follows the agent."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from idcontact.errors import ConfigError
from tests.conftest import CANARY_BSN, CANARY_NAME, PUBLIC, AppFactory, Instance, demo_settings
from tests.flows.test_console import Agent, enrol, field, tick, waiting_conversation

pytestmark = pytest.mark.anyio

DESK = "https://kiss.gemeente.example"
EMBED = "/agent/embed/default"


def hand_off_code(page: httpx.Response) -> str:
    found = re.search(r'id="hand-off" data-code="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


class Frame:
    """The panel in the desk's iframe: a browser partition with only the embed cookie.

    httpx keeps ``Secure`` cookies away from ``http://testserver``, so the cookie is carried
    by hand, as the browser's partition would."""

    def __init__(self, instance: Instance) -> None:
        self.client = httpx.AsyncClient(
            transport=instance.client._transport, base_url=PUBLIC, follow_redirects=False
        )
        self.cookie = ""

    def headers(self) -> dict[str, str]:
        return {"Cookie": f"idc_embed={self.cookie}"} if self.cookie else {}

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=self.headers())

    async def post(self, path: str, **data: str) -> httpx.Response:
        headers = {"Origin": PUBLIC, **self.headers()}
        return await self.client.post(path, data=data, headers=headers)

    async def redeem(self, code: str) -> httpx.Response:
        answer = await self.post(f"{EMBED}/session", code=code)
        if answer.status_code == 204:
            found = re.match(r"idc_embed=([^;]+);", answer.headers["set-cookie"])
            assert found
            self.cookie = found.group(1)
        return answer


async def logged_in_frame(instance: Instance, agent: Agent) -> Frame:
    frame = Frame(instance)
    code = hand_off_code(await agent.client.get(f"{EMBED}/login"))
    assert (await frame.redeem(code)).status_code == 204
    return frame


async def test_the_frame_logs_in_through_a_one_time_code_and_gets_a_partitioned_cookie(
    make_app: AppFactory, tmp_path: Any
) -> None:
    instance: Instance = await make_app(demo_settings(tmp_path, embed_origins=[DESK]))
    agent = await enrol(instance, "anna")
    frame = Frame(instance)

    # Not logged in inside the frame: a login button, framable only by the desk (and us).
    login = await frame.get(f"{EMBED}/")
    assert login.status_code == 401 and 'id="embed-login"' in login.text
    assert f"frame-ancestors 'self' {DESK}" in login.headers["content-security-policy"]
    assert "x-frame-options" not in login.headers
    # The console itself still refuses every frame.
    console = await frame.get("/agent/login")
    assert console.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in console.headers["content-security-policy"]

    # The pop-up is first-party: it logs in with the console's login and comes back.
    popup = await agent.client.get(f"{EMBED}/login")
    assert popup.status_code == 200 and field(popup.text, "then") == f"{EMBED}/login"
    back = await agent.login()  # the form posts `then` along
    page = await agent.client.get("/agent/login?then=/agent/embed/default/login")
    assert field(page.text, "then") == f"{EMBED}/login"
    assert back.status_code == 303
    popup = await agent.client.get(f"{EMBED}/login")
    code = hand_off_code(popup)
    assert "login-popup.js" in popup.text

    # Redeemed by the frame: its own session, in a cookie for /agent/embed only.
    wrong_origin = await frame.client.post(
        f"{EMBED}/session", data={"code": code}, headers={"Origin": DESK}
    )
    assert wrong_origin.status_code == 403
    redeemed = await frame.redeem(code)
    assert redeemed.status_code == 204
    cookie = redeemed.headers["set-cookie"]
    for part in ("Path=/agent/embed", "Secure", "HttpOnly", "SameSite=None", "Partitioned"):
        assert part in cookie
    again = await Frame(instance).redeem(code)
    assert again.status_code == 400
    assert again.headers["content-type"] == "application/problem+json"
    assert code not in again.text
    tampered = await Frame(instance).redeem(code[:-4] + "AAAA")
    assert tampered.status_code == 400

    panel = await frame.get(f"{EMBED}/")
    assert panel.status_code == 200 and "Geen gesprek" in panel.text
    # That cookie opens the panel, nothing else (a browser would not even send it there).
    assert (await frame.get("/agent/default/")).status_code == 303
    # Another tenant's code, or a code for a session that was revoked, opens nothing.
    assert (await frame.get("/agent/embed/nijmegen/")).status_code == 404

    # Logging out of the frame ends the frame's session, not the console's.
    out = await frame.post(f"{EMBED}/logout", csrf=field(panel.text, "csrf"))
    assert out.status_code == 401 and "Max-Age=0" in out.headers["set-cookie"]
    assert (await frame.get(f"{EMBED}/")).status_code == 401
    assert (await agent.client.get("/agent/default/")).status_code == 200


async def test_the_panel_shows_the_agents_conversation_and_follows_it(
    make_app: AppFactory, tmp_path: Any
) -> None:
    instance: Instance = await make_app(demo_settings(tmp_path, embed_origins=[DESK]))
    agent = await enrol(instance, "anna")
    await agent.login()
    frame = await logged_in_frame(instance, agent)
    idle = await frame.get(f"{EMBED}/")
    idle_now = (await frame.get(f"{EMBED}/now")).json()["now"]
    assert 'data-now=""' in idle.text and idle_now == ""

    conversation_id = await waiting_conversation(instance)
    await agent.post("/agent/default/presence", presence="available")
    await tick(instance)
    offered = (await frame.get(f"{EMBED}/now")).json()["now"]
    assert offered == ""  # offered is not yet mine: nothing to show
    await agent.post(f"/agent/default/c/{conversation_id}/accept")

    now = (await frame.get(f"{EMBED}/now")).json()["now"]
    assert now.startswith(f"{conversation_id}:connected")  # embed.js would reload now
    panel = await frame.get(f"{EMBED}/")
    assert panel.status_code == 200
    assert CANARY_NAME in panel.text and CANARY_BSN not in panel.text  # masked
    assert f'data-now="{now}"' in panel.text
    revealed = await frame.post(
        f"{EMBED}/c/{conversation_id}/reveal", csrf=field(panel.text, "csrf"), attribute="bsn"
    )
    assert revealed.status_code == 200 and CANARY_BSN in revealed.text
    bad = await frame.post(f"{EMBED}/c/{conversation_id}/reveal", csrf="forged", attribute="bsn")
    assert bad.status_code == 403 and CANARY_BSN not in bad.text

    # Another agent, in their own frame, sees nothing of it.
    bert = await enrol(instance, "bert")
    await bert.login()
    other = await logged_in_frame(instance, bert)
    gone = await other.get(f"{EMBED}/c/{conversation_id}")
    assert gone.status_code == 404 and CANARY_NAME not in gone.text
    assert (await other.get(f"{EMBED}/now?c={conversation_id}")).status_code == 404

    # The end of the conversation changes what /now says, then the data is gone.
    await agent.post(f"/agent/default/c/{conversation_id}/finish")
    wrap = (await frame.get(f"{EMBED}/now")).json()["now"]
    assert wrap.startswith(f"{conversation_id}:wrap_up")
    await agent.post(f"/agent/default/c/{conversation_id}/close")
    assert (await frame.get(f"{EMBED}/now")).json()["now"] == ""
    after = await frame.get(f"{EMBED}/")
    assert CANARY_NAME not in after.text and "Geen gesprek" in after.text

    db = instance.services.db
    assert db is not None
    rows = await db.run(
        lambda conn: [
            (r.actor, r.action, r.detail)
            for r in conn.execute(text("SELECT actor, action, detail FROM audit_events"))
        ]
    )
    actions = [a for _, a, _ in rows]
    assert "attributes.reveal" in actions and actions.count("attributes.view") >= 2
    assert any(a == "agent.login" and '"embed"' in d for _, a, d in rows)
    assert all(CANARY_BSN not in d and CANARY_NAME not in d for _, _, d in rows)


async def test_an_unused_code_expires(make_app: AppFactory, tmp_path: Any) -> None:
    instance: Instance = await make_app(demo_settings(tmp_path))
    agent = await enrol(instance, "anna")
    await agent.login()
    code = hand_off_code(await agent.client.get(f"{EMBED}/login"))
    db = instance.services.db
    assert db is not None
    # As if the hand-off had been made more than a minute ago.
    await db.run(
        lambda conn: conn.execute(
            text(
                "UPDATE agent_sessions SET created_at = created_at - 120, "
                "expires_at = expires_at - 120 WHERE expires_at - created_at <= 60"
            )
        ),
        write=True,
    )
    assert (await Frame(instance).redeem(code)).status_code == 400


def test_embed_origins_are_checked(tmp_path: Any) -> None:
    ok = demo_settings(
        tmp_path, embed_origins=["https://KISS.example:8443", "http://localhost:3000"]
    )
    assert ok.embed_origins == ("https://kiss.example:8443", "http://localhost:3000")
    for bad in (
        "http://kiss.example",
        "https://kiss.example/path",
        "https://kiss.example?x=1",
        "https://kiss.example; script-src *",
        "*",
        "https://user@kiss.example",
    ):
        with pytest.raises(ConfigError, match="embed_origins"):
            demo_settings(tmp_path, embed_origins=[bad])
