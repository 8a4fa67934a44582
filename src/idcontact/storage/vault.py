"""The attribute vault: verified attributes, encrypted under a data key per conversation.

The ciphertext lives in the database (and so in its backups); the data key lives in a
:class:`~idcontact.storage.keystore.KeyStore` that backups never see. Destroying the key is
what deletes the attributes, everywhere at once. Reading is explicit and audited.

The database parts are plain functions of a ``Connection`` so they join the caller's unit of
work (:class:`~idcontact.storage.db.Database`); the key store is reached outside it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, delete, insert, select

from idcontact.errors import VaultError
from idcontact.storage.audit import audit
from idcontact.storage.db import Database, vault_entries
from idcontact.storage.keystore import KeyStore

Clock = Callable[[], float]


@dataclass(frozen=True, repr=False)
class Sealed:
    """Encrypted attributes of one conversation, as stored."""

    conversation_id: str
    nonce: bytes
    ciphertext: bytes


class Vault:
    def __init__(self, db: Database, keys: KeyStore, clock: Clock = time.time) -> None:
        self._db = db
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

    def insert(self, conn: Connection, sealed: Sealed) -> None:
        conn.execute(
            insert(vault_entries).values(
                conversation_id=sealed.conversation_id,
                nonce=sealed.nonce,
                ciphertext=sealed.ciphertext,
                created_at=self._clock(),
            )
        )

    async def forget(self, conversation_id: str) -> None:
        await self._keys.delete(conversation_id)

    def fetch(
        self, conn: Connection, conversation_id: str, *, actor: str, at: float, tenant: str
    ) -> Sealed | None:
        """The stored ciphertext, in the caller's transaction; the read is audited there."""
        row = conn.execute(
            select(vault_entries.c.nonce, vault_entries.c.ciphertext).where(
                vault_entries.c.conversation_id == conversation_id
            )
        ).first()
        if row is None:
            return None
        audit(conn, at, actor, "attributes.view", conversation_id, tenant=tenant)
        return Sealed(conversation_id, row.nonce, row.ciphertext)

    async def open(self, sealed: Sealed) -> dict[str, object] | None:
        """Decrypt with the conversation's data key; ``None`` once the key is destroyed."""
        key = await self._keys.get(sealed.conversation_id)
        if key is None:
            return None
        try:
            plaintext = AESGCM(key).decrypt(
                sealed.nonce, sealed.ciphertext, sealed.conversation_id.encode()
            )
        except InvalidTag:
            raise VaultError() from None
        data: dict[str, object] = json.loads(plaintext)
        return data

    async def destroy(self, conversation_id: str) -> None:
        """Delete the key first (that is the deletion), then the ciphertext."""
        await self._keys.delete(conversation_id)

        def work(conn: Connection) -> None:
            conn.execute(
                delete(vault_entries).where(vault_entries.c.conversation_id == conversation_id)
            )

        await self._db.run(work, write=True)
