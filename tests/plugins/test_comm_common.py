"""The channel's auth-only start (identify during a conversation), against the real core, and
the hand-over of results to slots of this process."""

from __future__ import annotations

import logging

import httpx
import pytest
from joserfc.jwk import ECKey
from sqlalchemy import func, select

from idcontact.conversations import Conversations
from idcontact.errors import PluginError
from idcontact.plugins.base import INPROC_BASE
from idcontact.plugins.comm.common import AuthOnlyStarter, LocalSlots
from idcontact.storage.db import used_tokens
from idcontact.tokens import AuthResult, TokenIssuer
from tests.conftest import PUBLIC, Instance, path_of
from tests.flows.test_core_flows import assert_delivered, consent

pytestmark = pytest.mark.anyio


def starter(
    instance: Instance, key: ECKey | None = None, kid: str | None = None
) -> AuthOnlyStarter:
    keys = instance.services.keys
    return AuthOnlyStarter(
        instance.services.http,
        f"{INPROC_BASE}/start",
        key or keys.requestor,
        kid or keys.requestor_kid,
    )


async def waiting_slot(instance: Instance) -> tuple[Conversations, str, str]:
    """A new demo conversation with an attr_url slot: the store, its id, the slot."""
    conversations = instance.services.conversations
    assert conversations is not None
    purpose = instance.settings.purpose("report_move")
    assert purpose is not None
    conversation_id, slot = await conversations.create(purpose, "demo", with_slot=True)
    assert slot is not None
    return conversations, conversation_id, slot


async def test_a_start_the_core_refuses_is_a_plugin_error(instance: Instance) -> None:
    refused = [
        starter(instance, key=ECKey.generate_key("P-256")),  # not the trusted key
        starter(instance, kid="someone-else"),  # unknown kid
    ]
    for s in refused:
        with pytest.raises(PluginError) as caught:
            await s.start(purpose="report_move", auth_method="demo", comm_url=PUBLIC, attr_url=None)
        assert "400" in str(caught.value)
    with pytest.raises(PluginError):  # the core refuses a purpose it does not know
        await starter(instance).start(
            purpose="nope", auth_method="demo", comm_url=PUBLIC, attr_url=None
        )


async def test_signed_start_reaches_the_auth_plugin_which_hands_the_result_over(
    instance: Instance,
) -> None:
    """With no authonly_request_keys configured, the core trusts this instance's own channels.
    The demo auth plugin delivers to the in-process slot directly: no HTTP request to the
    attr_url, no token marked used, and the vault records the issuing key as a token would."""
    conversations, conversation_id, slot = await waiting_slot(instance)
    sent: list[str] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request.url.path)

    instance.services.http.event_hooks["request"].append(record)
    comm_url = f"{PUBLIC}/comm/demo/c/{conversation_id}"
    client_url = await starter(instance).start(
        purpose="report_move",
        auth_method="demo",
        comm_url=comm_url,
        attr_url=f"{INPROC_BASE}/comm/demo/attr/{slot}",
    )
    assert path_of(client_url).startswith("/auth/demo/")
    redirect = await consent(instance.client, client_url)
    assert redirect.headers["location"] == comm_url
    await assert_delivered(instance.client, comm_url)
    # Through httpx: the plugin's start (the core posts to its in-process auth plugin
    # directly, app.local_post), and no POST to /attr/….
    assert sent == ["/start"]
    stored = await conversations.attributes(conversation_id, actor="test")
    assert stored is not None and stored["kid"] == instance.services.keys.signing_kid
    assert instance.services.db is not None
    used = await instance.services.db.run(
        lambda c: c.execute(select(func.count()).select_from(used_tokens)).scalar()
    )
    assert used == 0


async def test_local_slots_take_only_their_own_urls_and_swallow_a_refusal(
    instance: Instance, caplog: pytest.LogCaptureFixture
) -> None:
    conversations, conversation_id, slot = await waiting_slot(instance)
    local = LocalSlots()
    local.add(f"{INPROC_BASE}/comm/demo", conversations)
    issuer = TokenIssuer(instance.services.keys.signing, kid="k1")
    result = AuthResult(status="success", attributes={"fullname": "A", "bsn": "1"})
    for foreign in (
        f"https://elsewhere.example/comm/demo/attr/{slot}",
        f"{INPROC_BASE}/comm/phone/attr/{slot}",
        f"{INPROC_BASE}/comm/demo/attr/{slot}/more",
        f"{INPROC_BASE}/comm/demo/attr/",
    ):
        assert not await local.hand_over(foreign, issuer.hand_over(result)), foreign
    assert (await conversations.get(conversation_id)).state == "created"

    assert await local.hand_over(f"{INPROC_BASE}/comm/demo/attr/{slot}", issuer.hand_over(result))
    assert (await conversations.get(conversation_id)).state == "authenticated"
    # A second result for the used slot is refused like a posted token (409), and logged only.
    with caplog.at_level(logging.WARNING, logger="idcontact.plugins.comm.common"):
        assert await local.hand_over(
            f"{INPROC_BASE}/comm/demo/attr/{slot}", issuer.hand_over(result)
        )
    assert [r.plugin_status for r in caplog.records] == [409]  # type: ignore[attr-defined]
    assert (await conversations.attributes(conversation_id, actor="test") or {})["kid"] == "k1"
