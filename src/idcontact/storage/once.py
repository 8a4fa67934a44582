"""One-time marks: "this value was used once, refuse it again until it expires".

The DigiD plugin marks SAML artifacts and assertion ids here. With a database the marks go
into the ``used_tokens`` table that attribute tokens already use against replay (so every
instance sees them, and the sweeper removes them after they expire); an instance without a
database (an auth-only role) keeps them in memory.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError

from idcontact.storage.db import Database, used_tokens

MAX_MEMORY_MARKS = 100_000


def mark_key(kind: str, value: str) -> str:
    """The stored key: a hash of ``value``, never the value itself."""
    return f"{kind}:" + hashlib.sha256(value.encode()).hexdigest()[:64]


class OneTime(Protocol):
    async def use(self, kind: str, value: str, expires_at: float) -> bool:
        """Mark ``value`` used; False when it already was (a replay)."""
        ...


class DatabaseOneTime:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def use(self, kind: str, value: str, expires_at: float) -> bool:
        key = mark_key(kind, value)

        def mark(conn: Connection) -> None:
            conn.execute(insert(used_tokens).values(replay_key=key, expires_at=expires_at))

        try:
            await self._db.run(mark, write=True)
        except IntegrityError:
            return False
        return True


class MemoryOneTime:
    """Marks in this process only; bounded, oldest expiry dropped first when full."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._marks: dict[str, float] = {}
        self._clock = clock

    async def use(self, kind: str, value: str, expires_at: float) -> bool:
        now = self._clock()
        if len(self._marks) >= MAX_MEMORY_MARKS:
            self._marks = {k: e for k, e in self._marks.items() if e > now}
            while len(self._marks) >= MAX_MEMORY_MARKS:
                del self._marks[min(self._marks, key=self._marks.__getitem__)]
        key = mark_key(kind, value)
        if self._marks.get(key, 0.0) > now:
            return False
        self._marks[key] = expires_at
        return True
