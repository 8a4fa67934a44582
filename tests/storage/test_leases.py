"""Leases on a real database: one holder at a time, renewal, take-over after expiry, release;
and the sweeper's pass, which runs only on the instance that holds its lease."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from idcontact import app as app_module
from idcontact.app import sweep_once
from idcontact.conversations import Conversations
from idcontact.storage.db import Database, audit_events, conversations
from idcontact.storage.leases import Lease
from tests.conftest import AppFactory, Instance
from tests.storage.test_vault import start_conversation

pytestmark = pytest.mark.anyio


def db_of(instance: Instance) -> Database:
    assert instance.services.db is not None
    return instance.services.db


async def test_one_holder_at_a_time_until_it_expires_or_is_released(instance: Instance) -> None:
    now = [1_000.0]
    a = Lease(db_of(instance), "job", 45, holder="a", clock=lambda: now[0])
    b = Lease(db_of(instance), "job", 45, holder="b", clock=lambda: now[0])
    assert await a.take()
    assert not await b.take()
    now[0] += 30
    assert await a.take()  # renewed: counts 45 s from now
    now[0] += 30
    assert not await b.take()  # 60 s after the first take, but only 30 after the renewal
    now[0] += 16
    assert await b.take()  # a stopped renewing (killed): b takes over
    assert not await a.take()
    await b.release()
    assert not await b.take()  # released for good (the instance is going away)
    assert await a.take()  # and the other need not wait for the expiry
    other = Lease(db_of(instance), "another job", 45, holder="b", clock=lambda: now[0])
    assert await other.take()  # leases are per name


@pytest.mark.postgres
async def test_many_instances_racing_for_a_new_lease_one_wins(make_app: AppFactory) -> None:
    instance = await make_app(database="postgres")
    contenders = [Lease(db_of(instance), "race", 45, holder=f"i{n}") for n in range(12)]
    won = await asyncio.gather(*(c.take() for c in contenders))
    assert won.count(True) == 1


@pytest.fixture
async def quiet(make_app: AppFactory, database: str, monkeypatch: pytest.MonkeyPatch) -> Instance:
    """The demo instance without its own background sweeper, so the tests' sweepers are the
    only ones (the app's would purge the same conversations at a moment of its choosing)."""

    async def no_sweeper(*_args: object, **_kwargs: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(app_module, "_sweep", no_sweeper)
    instance: Instance = await make_app(database=database)
    return instance


async def purged_events(instance: Instance) -> int:
    query = select(func.count()).where(audit_events.c.action == "conversation.purged")
    return int(await db_of(instance).run(lambda conn: conn.execute(query).scalar_one()))


async def ended(instance: Instance, count: int) -> tuple[Conversations, list[str]]:
    """``count`` conversations, ended: due for the sweeper."""
    store = instance.services.conversations
    assert isinstance(store, Conversations)
    ids = [await start_conversation(instance) for _ in range(count)]
    for conversation_id in ids:
        await store.end(conversation_id, actor="test")
    return store, ids


async def test_only_the_lease_holder_sweeps_and_in_batches(quiet: Instance) -> None:
    instance = quiet
    store, ids = await ended(instance, 5)
    # Two instances' sweepers, each with its own holder name.
    first = Lease(db_of(instance), "test-sweeper", 45, holder="first")
    second = Lease(db_of(instance), "test-sweeper", 45, holder="second")
    assert await first.take() and not await second.take()

    async def sweep(lease: Lease) -> int:
        return await sweep_once(lease, [store], None) if await lease.take() else 0

    done = await asyncio.gather(sweep(first), sweep(second))
    assert sorted(done) == [0, 5]  # one pass did all the work, the other none

    query = select(conversations.c.state).where(conversations.c.id.in_(ids))
    assert set(await db_of(instance).run(lambda c: list(c.execute(query).scalars()))) == {"purged"}
    assert await purged_events(instance) == 5  # each audited once
    for conversation_id in ids:
        assert await store.vault.keys.get(conversation_id) is None


async def test_a_batch_limit_leaves_the_rest_for_the_next_call(quiet: Instance) -> None:
    store, _ = await ended(quiet, 5)
    assert [await store.purge_expired(limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert await purged_events(quiet) == 5
