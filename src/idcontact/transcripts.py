"""Handing a conversation's transcript to the municipality's customer-contact system.

Per tenant (``[transcripts]``), the messages of a conversation (chat, the chat beside a video
call, a contact form's question and answer) are either destroyed with it, or first handed over
with its attributes, because archiving rules may require that. A hand-over plugin does the
delivery (entry point group ``idcontact.handover``; ``webhook`` is built in, the Klantinteracties
connector is another). Nothing is lost on failure: an ended conversation waiting for its
hand-over keeps its data sealed (agents can no longer read it) and is retried on every sweep,
at least once delivered (the conversation id is the idempotency key), until ``retry_hours``
have passed; then it is destroyed anyway and an alarm logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from sqlalchemy import Connection, select, update

from idcontact.conversations import Conversations
from idcontact.errors import ConfigError
from idcontact.storage.audit import audit
from idcontact.storage.db import conversations as table
from idcontact.storage.vault import ChatMessage, Sealed

log = logging.getLogger(__name__)

GROUP = "idcontact.handover"


@dataclass(frozen=True, repr=False)
class Transcript:
    """One ended conversation, as handed over; ``repr`` shows no content."""

    tenant: str
    conversation_id: str
    purpose: str
    channel: str | None
    comm_method: str
    created_at: float
    ended_at: float | None
    attributes: dict[str, object] = field(default_factory=dict)
    """Only the purpose's verified attributes; empty when the resident did not identify."""
    provenance: dict[str, object] = field(default_factory=dict)
    messages: tuple[ChatMessage, ...] = ()
    purpose_label: str | None = None
    """The purpose's name (in Dutch), as residents saw it."""
    identified_at: float | None = None
    """When the attributes arrived, if the resident identified."""

    def __repr__(self) -> str:
        return f"Transcript({self.conversation_id!r}, messages={len(self.messages)})"

    def as_json(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "conversation": self.conversation_id,
            "purpose": self.purpose,
            "channel": self.channel,
            "comm_method": self.comm_method,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
            "identified": bool(self.attributes),
            "attributes": self.attributes,
            "provenance": self.provenance,
            "messages": [
                {"seq": m.seq, "from": m.sender, "text": m.text, "at": m.at} for m in self.messages
            ],
        }


class HandOver(Protocol):
    """Delivers a transcript; raises on failure (it is then tried again later)."""

    def __init__(self, http: httpx.AsyncClient, config: dict[str, Any]) -> None: ...

    async def hand_over(self, transcript: Transcript) -> None: ...


class HandOverFailed(Exception):
    """The receiving system did not take the transcript (status or network), no content."""


class _WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str
    token: SecretStr | None = None
    token_file: Path | None = None
    timeout: float = 10.0


class WebhookHandOver:
    """POSTs the transcript as JSON to ``url`` with ``Authorization: Bearer <token>`` and
    ``Idempotency-Key: <conversation id>``; any 2xx answer means handed over."""

    def __init__(self, http: httpx.AsyncClient, config: dict[str, Any]) -> None:
        try:
            c = _WebhookConfig.model_validate(config)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
            raise ConfigError(f"transcripts.settings: invalid or missing {fields}") from None
        if not c.url.startswith(("https://", "http://")):
            raise ConfigError("transcripts.settings.url: must be an http(s) URL")
        token = c.token.get_secret_value() if c.token else None
        if c.token_file is not None:
            try:
                token = c.token_file.read_text().strip()
            except OSError:
                raise ConfigError("transcripts.settings.token_file: cannot be read") from None
        self._http = http
        self._url = c.url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = c.timeout

    async def hand_over(self, transcript: Transcript) -> None:
        try:
            response = await self._http.post(
                self._url,
                json=transcript.as_json(),
                headers={**self._headers, "Idempotency-Key": transcript.conversation_id},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise HandOverFailed(type(exc).__name__) from None
        if not 200 <= response.status_code < 300:
            raise HandOverFailed(f"status {response.status_code}")


def load_hand_over(name: str, http: httpx.AsyncClient, config: dict[str, Any]) -> HandOver:
    """The named hand-over plugin; nothing else is imported."""
    matches = entry_points(group=GROUP, name=name)
    if not matches:
        raise ConfigError(f"transcripts.plugin: no hand-over plugin named {name!r} is installed")
    cls: Callable[[httpx.AsyncClient, dict[str, Any]], HandOver] = next(iter(matches)).load()
    return cls(http, config)


class TranscriptKeeper:
    """Hands over the tenant's ended conversations that wait for it; run by the sweeper."""

    def __init__(self, store: Conversations, plugin: HandOver) -> None:
        self._store = store
        self._plugin = plugin

    async def run(self) -> int:
        """One pass: every waiting transcript tried once; returns how many were handed over."""
        tenant = self._store.tenant.slug

        def waiting(conn: Connection) -> list[str]:
            rows = conn.execute(
                select(table.c.id).where(
                    table.c.tenant == tenant,
                    table.c.state == "ended",
                    table.c.hand_over_until.is_not(None),
                )
            )
            return [str(r.id) for r in rows]

        done = 0
        for conversation_id in await self._store.db.run(waiting):
            transcript = await self.transcript(conversation_id)
            if transcript is None:
                continue  # handed over by another instance meanwhile
            try:
                await self._plugin.hand_over(transcript)
            except Exception as exc:
                log.warning(
                    "transcript hand-over failed; retried later",
                    extra={"conversation": conversation_id, "reason": _reason(exc)},
                )
                continue
            await self._handed_over(conversation_id)
            done += 1
        return done

    async def transcript(self, conversation_id: str) -> Transcript | None:
        """What is handed over: the conversation, its attributes (the read is audited) and
        every message; ``None`` when it no longer waits for a hand-over."""
        store = self._store
        now = store.clock()

        def read(conn: Connection) -> tuple[Any, Sealed | None]:
            row = conn.execute(
                select(table).where(
                    table.c.id == conversation_id,
                    table.c.tenant == store.tenant.slug,
                    table.c.hand_over_until.is_not(None),
                )
            ).first()
            if row is None:
                return None, None
            sealed = store.vault.fetch(
                conn, conversation_id, actor="sweeper:hand_over", at=now, tenant=store.tenant.slug
            )
            return row, sealed

        row, sealed = await store.db.run(read, write=True)
        if row is None:
            return None
        data = await store.vault.open(sealed) if sealed is not None else None
        messages: list[ChatMessage] = []
        while batch := await store.vault.chat_since(
            conversation_id, messages[-1].seq if messages else 0
        ):
            messages.extend(batch)
        attributes = data.get("attributes") if data else None
        provenance = data.get("provenance") if data else None
        received = data.get("received_at") if data else None
        purpose = store.tenant.purpose(row.purpose)
        return Transcript(
            tenant=store.tenant.slug,
            conversation_id=conversation_id,
            purpose=row.purpose,
            channel=row.channel,
            comm_method=row.comm_method,
            created_at=row.created_at,
            ended_at=row.last_activity,
            attributes=dict(attributes) if isinstance(attributes, dict) else {},
            provenance=dict(provenance) if isinstance(provenance, dict) else {},
            messages=tuple(messages),
            purpose_label=purpose.label.nl if purpose and purpose.label else None,
            identified_at=float(received) if isinstance(received, int | float) else None,
        )

    async def _handed_over(self, conversation_id: str) -> None:
        store = self._store
        now = store.clock()

        def mark(conn: Connection) -> None:
            changed = conn.execute(
                update(table)
                .where(
                    table.c.id == conversation_id,
                    table.c.tenant == store.tenant.slug,
                    table.c.hand_over_until.is_not(None),
                )
                .values(hand_over_until=None)
            )
            if changed.rowcount == 1:
                audit(
                    conn,
                    now,
                    "sweeper",
                    "transcript.handed_over",
                    conversation_id,
                    tenant=store.tenant.slug,
                )

        await store.db.run(mark, write=True)
        await store.vault.destroy(conversation_id)


def _reason(exc: Exception) -> str:
    """Why, without content: our own failure's text (a status), or only the error's class."""
    return str(exc) if isinstance(exc, HandOverFailed) else type(exc).__name__
