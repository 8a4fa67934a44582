"""The attribute vault: verified attributes, encrypted under a data key per conversation.

The ciphertext lives in the database (and so in its backups); the data key lives in a
:class:`~idcontact.storage.keystore.KeyStore` that backups never see. Destroying the key is
what deletes the attributes, everywhere at once. Reading is explicit and audited.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from idcontact.errors import VaultError
from idcontact.storage.db import audit_events, vault_entries
from idcontact.storage.keystore import KeyStore

Clock = Callable[[], float]


@dataclass(frozen=True, repr=False)
class Sealed:
    """Encrypted attributes of one conversation, ready to be inserted."""

    conversation_id: str
    nonce: bytes
    ciphertext: bytes


class Vault:
    def __init__(self, engine: AsyncEngine, keys: KeyStore, clock: Clock = time.time) -> None:
        self._engine = engine
        self._keys = keys
        self._clock = clock

    @property
    def keys(self) -> KeyStore:
        return self._keys

    async def seal(
        self, conversation_id: str, payload: Mapping[str, object], ttl_seconds: int
    ) -> Sealed:
        """Encrypt ``payload`` under a fresh data key and put the key in the key store.

        The caller inserts the result within its transaction (:meth:`insert`) and calls
        :meth:`forget` if that transaction fails, so no key is left over.
        """
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        plaintext = json.dumps(payload, separators=(",", ":")).encode()
        ciphertext = AESGCM(key).encrypt(nonce, plaintext, conversation_id.encode())
        await self._keys.put(conversation_id, key, ttl_seconds)
        return Sealed(conversation_id, nonce, ciphertext)

    async def insert(self, conn: AsyncConnection, sealed: Sealed) -> None:
        await conn.execute(
            insert(vault_entries).values(
                conversation_id=sealed.conversation_id,
                nonce=sealed.nonce,
                ciphertext=sealed.ciphertext,
                created_at=self._clock(),
            )
        )

    async def forget(self, conversation_id: str) -> None:
        await self._keys.delete(conversation_id)

    async def read(
        self, conn: AsyncConnection, conversation_id: str, *, actor: str, at: float
    ) -> dict[str, object] | None:
        """Open a conversation's attributes in the caller's transaction; ``None`` once they
        were destroyed. The read is audited in the same transaction."""
        row = (
            await conn.execute(
                select(vault_entries.c.nonce, vault_entries.c.ciphertext).where(
                    vault_entries.c.conversation_id == conversation_id
                )
            )
        ).first()
        key = await self._keys.get(conversation_id) if row else None
        if row is None or key is None:
            return None
        try:
            plaintext = AESGCM(key).decrypt(row.nonce, row.ciphertext, conversation_id.encode())
        except InvalidTag:
            raise VaultError() from None
        await audit(conn, at, actor, "attributes.view", conversation_id)
        data: dict[str, object] = json.loads(plaintext)
        return data

    async def destroy(self, conversation_id: str) -> None:
        """Delete the key first (that is the deletion), then the ciphertext."""
        await self._keys.delete(conversation_id)
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(vault_entries).where(vault_entries.c.conversation_id == conversation_id)
            )


async def audit(
    conn: AsyncConnection,
    at: float,
    actor: str,
    action: str,
    conversation_id: str | None,
    detail: Mapping[str, object] | None = None,
) -> None:
    """Append an audit event. ``detail`` holds names and numbers, never attribute values."""
    await conn.execute(
        insert(audit_events).values(
            at=at,
            actor=actor,
            action=action,
            conversation_id=conversation_id,
            detail=json.dumps(dict(detail or {}), separators=(",", ":")),
        )
    )
