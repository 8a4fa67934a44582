"""Leases: a job that several instances could run, run by one of them at a time.

The sweeper is such a job. Every instance could purge (each purge is a conditional update, so
doing it twice is safe), but two sweepers on one database would do every pass twice and race
for the same rows. So each pass first takes the lease: a row in ``leases`` that names its
holder until a time. The holder renews it while it works; an instance that dies (kill -9)
simply stops renewing, and another takes over when the time has passed. One row, one
conditional UPDATE: the same on SQLite and PostgreSQL, no advisory lock tied to a connection.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from sqlalchemy import Connection, insert, or_, update
from sqlalchemy.exc import IntegrityError

from idcontact.storage.db import Database, leases


class Lease:
    """One named lease, as one instance (``holder``) sees it."""

    def __init__(
        self,
        db: Database,
        name: str,
        seconds: float,
        *,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.name = name
        self.seconds = seconds
        self.holder = holder or secrets.token_hex(8)
        self._clock = clock
        self._released = False

    async def take(self) -> bool:
        """Take or renew the lease for ``seconds`` from now; ``False`` while another holds it,
        and for good after :meth:`release`."""
        if self._released:
            return False
        now = self._clock()

        def work(conn: Connection) -> bool:
            renewed = conn.execute(
                update(leases)
                .where(
                    leases.c.name == self.name,
                    or_(leases.c.holder == self.holder, leases.c.until <= now),
                )
                .values(holder=self.holder, until=now + self.seconds)
            )
            if renewed.rowcount == 1:
                return True
            try:
                with conn.begin_nested():  # the first ever, unless another instance was first
                    conn.execute(
                        insert(leases).values(
                            name=self.name, holder=self.holder, until=now + self.seconds
                        )
                    )
            except IntegrityError:
                return False  # it exists and someone else holds it
            return True

        return await self._db.run(work, write=True)

    async def release(self) -> None:
        """Give the lease up for good (shutdown, drain), so another instance need not wait
        for it to run out."""
        self._released = True

        def work(conn: Connection) -> None:
            conn.execute(
                update(leases)
                .where(leases.c.name == self.name, leases.c.holder == self.holder)
                .values(until=0.0)
            )

        await self._db.run(work, write=True)
