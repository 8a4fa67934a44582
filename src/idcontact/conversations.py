"""Conversations on the comm side: creation, receipt of attributes, reading, ending, purging.

Every channel uses this one service. A token is verified once, here, on receipt; from then on
its attributes live only in the vault and are never re-checked against the token's 5-minute
``exp``. Receipt is all-or-nothing: the replay mark, the slot claim and the vault row are one
transaction, so a refused or failed delivery changes nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from idcontact.errors import NotFoundError, SlotUsedError, TokenReplayError
from idcontact.settings import Purpose
from idcontact.storage.db import conversations, used_tokens
from idcontact.storage.vault import Vault, audit
from idcontact.tokens import ReceivedToken, TokenReader

Clock = Callable[[], float]
State = Literal["created", "authenticated", "failed", "ineligible", "ended", "purged"]
LIVE_STATES = ("created", "authenticated")


def new_id(nbytes: int = 16) -> str:
    """A random url-safe identifier (128 bits by default)."""
    return secrets.token_urlsafe(nbytes)


def slot_hash(slot: str) -> str:
    return hashlib.sha256(slot.encode()).hexdigest()


@dataclass(frozen=True)
class Conversation:
    id: str
    purpose: str
    comm_method: str
    state: State
    created_at: float
    delivered_at: float | None


class Conversations:
    def __init__(
        self,
        engine: AsyncEngine,
        vault: Vault,
        reader: TokenReader,
        clock: Clock = time.time,
    ) -> None:
        self._engine = engine
        self._vault = vault
        self._reader = reader
        self._clock = clock

    @property
    def vault(self) -> Vault:
        return self._vault

    async def create(
        self, purpose: Purpose, comm_method: str, *, with_slot: bool, tenant: str = "default"
    ) -> tuple[str, str | None]:
        """Create a conversation; return its id and, if asked, a fresh attr_url slot secret."""
        now = self._clock()
        conversation_id = new_id()
        slot = secrets.token_urlsafe(32) if with_slot else None
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(conversations).values(
                    id=conversation_id,
                    tenant=tenant,
                    purpose=purpose.tag,
                    comm_method=comm_method,
                    state="created",
                    slot_hash=slot_hash(slot) if slot else None,
                    created_at=now,
                    last_activity=now,
                    delivered_at=None,
                    purge_at=now + purpose.retention_minutes * 60,
                    idle_seconds=purpose.idle_minutes * 60,
                )
            )
            await audit(
                conn,
                now,
                "system",
                "conversation.created",
                conversation_id,
                {"purpose": purpose.tag, "comm": comm_method},
            )
        return conversation_id, slot

    async def create_with_token(
        self, purpose: Purpose, comm_method: str, token: str, *, tenant: str = "default"
    ) -> str:
        """Create a conversation whose attributes arrive with it (``auth_result`` at start).

        The token is verified before anything is written, so a bad token changes nothing.
        """
        received = self._reader.read(token)
        conversation_id, _ = await self.create(purpose, comm_method, with_slot=False, tenant=tenant)
        try:
            await self._accept(conversation_id, received, purpose)
        except BaseException:
            async with self._engine.begin() as conn:
                await conn.execute(
                    delete(conversations).where(conversations.c.id == conversation_id)
                )
            raise
        return conversation_id

    async def get(self, conversation_id: str) -> Conversation:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(conversations).where(conversations.c.id == conversation_id)
                )
            ).first()
        if row is None:
            raise NotFoundError("No such conversation")
        return Conversation(
            id=row.id,
            purpose=row.purpose,
            comm_method=row.comm_method,
            state=row.state,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
        )

    async def find_by_slot(self, slot: str) -> str:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(conversations.c.id, conversations.c.delivered_at).where(
                        conversations.c.slot_hash == slot_hash(slot)
                    )
                )
            ).first()
        if row is None:
            raise NotFoundError("No such attribute slot")
        if row.delivered_at is not None:
            raise SlotUsedError()
        return str(row.id)

    async def deliver(self, conversation_id: str, token: str, purpose: Purpose) -> State:
        """Verify ``token`` and store its attributes for the conversation, exactly once."""
        received = self._reader.read(token)
        return await self._accept(conversation_id, received, purpose)

    async def _accept(
        self, conversation_id: str, received: ReceivedToken, purpose: Purpose
    ) -> State:
        now = self._clock()
        result = received.result
        state: State
        payload: dict[str, object] | None = None
        if result.status != "success":
            state = "failed"
        else:
            # Only the purpose's attributes are kept; anything extra is dropped here.
            attrs = {k: v for k, v in (result.attributes or {}).items() if k in purpose.attributes}
            eligible = all(attrs.get(rule.attribute) in rule.one_of for rule in purpose.eligibility)
            state = "authenticated" if eligible else "ineligible"
            if eligible:
                payload = {
                    "attributes": attrs,
                    "session_url": result.session_url,
                    "received_at": now,
                    "issued_at": received.issued_at,
                    "kid": received.kid,
                }
        try:
            async with self._engine.begin() as conn:
                try:
                    await conn.execute(
                        insert(used_tokens).values(
                            replay_key=received.replay_key,
                            # Kept past exp + any configurable leeway (≤ 120 s).
                            expires_at=received.expires_at + 180,
                        )
                    )
                except IntegrityError:
                    raise TokenReplayError() from None
                claimed = await conn.execute(
                    update(conversations)
                    .where(
                        and_(
                            conversations.c.id == conversation_id,
                            conversations.c.delivered_at.is_(None),
                            conversations.c.state == "created",
                        )
                    )
                    .values(state=state, delivered_at=now, last_activity=now)
                )
                if claimed.rowcount != 1:
                    raise SlotUsedError()
                if payload is not None:
                    ttl = int(max(60.0, await self._remaining(conn, conversation_id, now)))
                    await self._vault.store(conn, conversation_id, payload, ttl)
                await audit(
                    conn,
                    now,
                    "system",
                    f"conversation.{state}",
                    conversation_id,
                    {"attribute_names": sorted(purpose.attributes)},
                )
        except BaseException:
            if payload is not None:
                await self._vault.forget(conversation_id)
            raise
        return state

    async def _remaining(self, conn: AsyncConnection, conversation_id: str, now: float) -> float:
        row = (
            await conn.execute(
                select(conversations.c.purge_at).where(conversations.c.id == conversation_id)
            )
        ).first()
        return float(row.purge_at) - now if row else 60.0

    async def attributes(self, conversation_id: str, *, actor: str) -> dict[str, object] | None:
        """The stored attributes and their provenance (audited); ``None`` when gone."""
        await self.touch(conversation_id)
        return await self._vault.read(conversation_id, actor=actor)

    async def touch(self, conversation_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(last_activity=self._clock())
            )

    async def end(self, conversation_id: str, *, actor: str) -> None:
        """End the conversation and destroy its attributes now."""
        await self._vault.destroy(conversation_id)
        async with self._engine.begin() as conn:
            await conn.execute(
                update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(state="ended", last_activity=self._clock())
            )
            await audit(conn, self._clock(), actor, "conversation.ended", conversation_id)

    async def purge_expired(self) -> int:
        """Destroy attributes past retention or idle too long; safe to run on every instance."""
        now = self._clock()
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(conversations.c.id).where(
                        and_(
                            conversations.c.state != "purged",
                            or_(
                                conversations.c.purge_at <= now,
                                conversations.c.last_activity + conversations.c.idle_seconds <= now,
                                conversations.c.state.in_(("ended", "failed", "ineligible")),
                            ),
                        )
                    )
                )
            ).all()
        for (conversation_id,) in rows:
            await self._vault.destroy(conversation_id)
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(conversations)
                    .where(conversations.c.id == conversation_id)
                    .values(state="purged", slot_hash=None)
                )
                await audit(conn, now, "sweeper", "conversation.purged", conversation_id)
        async with self._engine.begin() as conn:
            await conn.execute(delete(used_tokens).where(used_tokens.c.expires_at <= now))
        await self._vault.keys.purge_expired()
        return len(rows)
