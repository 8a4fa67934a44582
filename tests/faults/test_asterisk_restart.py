"""Asterisk restarts under the app: `/readyz` reports it while it is away, the ARI adapter
reconnects by itself (with backoff), and a new call links again. Lost: the calls that were up
when the PBX went down (the PBX itself ended them); their conversations stay, and the resident
can call again with the same code until it expires."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import AppFactory, until
from tests.faults._asterisk import PrivateAsterisk
from tests.flows.test_phone import _linked, call, phone_app, phone_conversation

pytestmark = [pytest.mark.anyio, pytest.mark.telephony]


@pytest.fixture
async def private_asterisk() -> AsyncIterator[PrivateAsterisk]:
    server = PrivateAsterisk.create()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.remove)


async def test_asterisk_restart_the_adapter_reconnects_and_calls_link_again(
    make_app: AppFactory, tmp_path: Path, private_asterisk: PrivateAsterisk
) -> None:
    pbx = private_asterisk.pbx
    instance = await phone_app(make_app, tmp_path, pbx)
    calls = instance.services.calls
    assert calls is not None
    ready = await instance.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["asterisk"] == "ok"
    first, code, _ = await phone_conversation(instance)
    (tmp_path / "1").mkdir()
    caller = await call(pbx, tmp_path / "1", code)
    try:
        await until(lambda: _linked(instance, first), "the first call to link")
    finally:
        caller.stop()

    await asyncio.to_thread(private_asterisk.stop)
    await until(lambda: _cleared(calls), "the adapter to notice the PBX is gone")
    down = await instance.client.get("/readyz")
    assert down.status_code == 503 and down.json()["checks"]["asterisk"] == "fail"

    await asyncio.to_thread(private_asterisk.start)
    await asyncio.wait_for(calls.ready.wait(), 30)  # reconnected by itself
    assert (await instance.client.get("/readyz")).status_code == 200
    second, code, _ = await phone_conversation(instance, "Second-Caller-R3", "999990020")
    (tmp_path / "2").mkdir()
    caller = await call(pbx, tmp_path / "2", code)
    try:
        linked = await until(lambda: _linked(instance, second), "a new call to link again")
        assert linked.state == "waiting"
    finally:
        caller.stop()
    # The first conversation is still there (its call ended with the PBX).
    conversations = instance.services.conversations
    assert conversations is not None
    assert (await conversations.get(first)).state != "purged"


async def _cleared(calls: object) -> bool:
    return not calls.ready.is_set()  # type: ignore[attr-defined]
