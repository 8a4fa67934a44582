"""One-time marks (SAML artifacts and assertion ids) on each database, and in memory."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from idcontact.storage.db import used_tokens
from idcontact.storage.once import DatabaseOneTime, MemoryOneTime
from tests.conftest import Instance

pytestmark = pytest.mark.anyio


async def test_a_mark_works_once_and_keeps_only_a_hash(instance: Instance) -> None:
    db = instance.services.db
    assert db is not None
    once = DatabaseOneTime(db)
    later = time.time() + 600
    assert await once.use("saml-artifact", "AAQAAsecret-artifact", later)
    assert not await once.use("saml-artifact", "AAQAAsecret-artifact", later)
    assert await once.use("saml-assertion", "AAQAAsecret-artifact", later)  # another kind
    rows = await db.run(
        lambda c: [
            tuple(r) for r in c.execute(select(used_tokens.c.replay_key, used_tokens.c.expires_at))
        ]
    )
    assert len(rows) == 2 and not any("secret" in key for key, _ in rows)
    assert {expires for _, expires in rows} == {later}  # the sweeper removes them after this


async def test_memory_marks_expire() -> None:
    now = [1000.0]
    once = MemoryOneTime(lambda: now[0])
    assert await once.use("k", "v", 1010.0)
    assert not await once.use("k", "v", 1010.0)
    now[0] = 1011.0
    assert await once.use("k", "v", 1100.0)
