"""Registering a contact in the municipality's Klantinteracties API (version 0.9.0, Open Klant).

Only on an explicit agent action, never automatically (:meth:`Registrations.request`): a
``klantcontact`` with its ``betrokkene`` (the resident, ``rol`` klant, initiator), linked to
the ``partij`` (persoon) identified by the disclosed BSN where the purpose asks for the BSN,
with a note how the resident identified and, on request, an ``internetaak`` to call back.
Nothing else the resident disclosed is sent.

The contact, its betrokkene and an ``onderwerpobject`` that carries our reference (a hash of
the conversation id) are made in one call, ``POST /maak-klantcontact``, so the API never holds
a contact without its resident, and a retry after a lost answer finds the contact by that
reference instead of making a second one. Every other step looks before it creates, and the
UUIDs made so far are stored: a retry continues where the last attempt failed.

Nothing is lost on failure: the request is stored, what it sends sealed under a data key of
its own (so it outlives the conversation's data), and retried by the sweeper
(:meth:`Registrations.run`) until done or ``retry_hours`` have passed; the agent sees the
state (:meth:`Registrations.status`). The same client hands transcripts over
(:class:`KlantinteractiesHandOver`, ``[transcripts] plugin = "klantinteracties"``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import ValidationError
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from idcontact.conversations import Conversation, Conversations, new_id
from idcontact.domain.lifecycle import HOLDS_ATTRIBUTES, InvalidTransitionError
from idcontact.errors import BadRequestError, ConfigError
from idcontact.settings import Klantinteracties
from idcontact.storage.audit import audit
from idcontact.storage.db import registrations as table
from idcontact.storage.vault import ChatMessage
from idcontact.transcripts import HandOverFailed, Transcript

log = logging.getLogger(__name__)

ZONE = ZoneInfo("Europe/Amsterdam")
ASSURANCE_NL = {"low": "laag", "substantial": "substantieel", "high": "hoog"}
SENDERS_NL = {"resident": "Inwoner", "agent": "Medewerker"}
REGISTER = "idcontact"
"""``codeRegister`` of the onderwerpobject that carries our reference."""
INHOUD_MAX, REACTIE_MAX, TOELICHTING_MAX = 1000, 4000, 1000
MORE = " [vervolg in reactie]"
LEASE_SECONDS = 300
"""An attempt claims its registration this long (or longer than its six requests may take),
so two sweepers never send it twice."""

State = Literal["pending", "done", "failed"]

STEPS_NL = {
    "partij": "het zoeken of aanmaken van de partij (BSN)",
    "klantcontact": "het aanmaken van het klantcontact",
    "internetaak": "het aanmaken van de terugbeltaak",
}
KINDS_NL = {
    "auth": "Klantinteracties weigerde de toegang (token ongeldig of zonder rechten)",
    "timeout": "Klantinteracties antwoordde niet op tijd",
    "network": "Klantinteracties is niet bereikbaar",
    "server": "Klantinteracties gaf een serverfout",
    "rejected": "Klantinteracties weigerde het verzoek als ongeldig",
    "status": "Klantinteracties gaf een onverwachte status",
    "response": "Klantinteracties gaf een onverwacht antwoord",
    "too_long": "de gesprekstekst is te lang voor Klantinteracties",
    "sealed": "de bewaarde gegevens zijn niet meer beschikbaar",
}


def reference(conversation_id: str) -> str:
    """Our reference in the API: names the conversation to us only (its id is random)."""
    return hashlib.sha256(b"idcontact-conversation:" + conversation_id.encode()).hexdigest()[:32]


def _local(at: float, fmt: str = "%d-%m-%Y %H:%M") -> str:
    return datetime.fromtimestamp(at, UTC).astimezone(ZONE).strftime(fmt)


def note(provenance: dict[str, object] | None, identified_at: float | None) -> str:
    """ "Geïdentificeerd via <method>, betrouwbaarheid <level>, om <time>": how, never what."""
    if not provenance and identified_at is None:
        return "Niet geïdentificeerd."
    given = provenance or {}
    method = str(given.get("method_name") or given.get("method") or "onbekende methode")
    level = str(given.get("assurance") or "")
    level = ASSURANCE_NL.get(level, level or "onbekend")
    at = _local(identified_at) if identified_at is not None else "onbekend tijdstip"
    return f"Geïdentificeerd via {method}, betrouwbaarheid {level}, om {at}."


def transcript_text(messages: tuple[ChatMessage, ...]) -> str:
    """The messages as the contact's text: ``Inwoner 10:02: …`` per line."""
    return "\n".join(
        f"{SENDERS_NL.get(m.sender, 'Systeem')} {_local(m.at, '%H:%M')}: {m.text}" for m in messages
    )


@dataclass(frozen=True, repr=False)
class Contact:
    """What one registration sends; sealed at rest, ``repr`` shows nothing personal."""

    reference: str
    kanaal: str
    onderwerp: str
    note: str
    started_at: float
    bsn: str | None = None
    callback: bool = False
    toelichting: str = ""
    transcript: str | None = None

    def __repr__(self) -> str:
        return f"Contact({self.reference!r}, identified={self.bsn is not None})"

    def as_json(self) -> dict[str, object]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Contact:
        return cls(**data)

    def texts(self) -> tuple[str, str | None]:
        """``inhoud`` (≤ 1000 characters) and, for a long transcript, ``reactie`` (≤ 4000)
        with the rest; never cut short: longer fails as ``too_long``."""
        if self.transcript is None:
            return self.note[:INHOUD_MAX], None
        full = f"{self.note}\n\nGesprek:\n{self.transcript}"
        if len(full) <= INHOUD_MAX:
            return full, None
        cut = INHOUD_MAX - len(MORE)
        rest = full[cut:]
        if len(rest) > REACTIE_MAX:
            raise _StepFailed("too_long", "klantcontact")
        return full[:cut] + MORE, rest


@dataclass(frozen=True)
class Registration:
    """What the API made for one contact (UUIDs), so far or in full."""

    partij: str | None = None
    klantcontact: str | None = None
    betrokkene: str | None = None
    internetaak: str | None = None
    nummer: str | None = None


class _StepFailed(Exception):
    def __init__(self, kind: str, step: str, status: int | None = None) -> None:
        super().__init__(kind)
        self.kind, self.step, self.status = kind, step, status


class RegistrationFailed(Exception):
    """An attempt failed at ``step`` for a reason of ``kind``; ``progress`` holds what was
    made before. The text names neither the token nor any value sent."""

    def __init__(self, kind: str, step: str, progress: Registration, status: int | None) -> None:
        super().__init__(f"{kind} at {step}" + (f" (status {status})" if status else ""))
        self.kind, self.step, self.progress, self.status = kind, step, progress, status


def reason_nl(kind: str | None, step: str | None) -> str:
    """Why, in Dutch, for the agent: the kind of failure and the step, nothing sent."""
    text = KINDS_NL.get(kind or "", "onbekende fout")
    return f"{text} bij {STEPS_NL[step]}" if step in STEPS_NL else text


class KlantinteractiesClient:
    """The API calls of one tenant, with its token (``Authorization: Token …``)."""

    def __init__(
        self, http: httpx.AsyncClient, config: Klantinteracties, *, where: str = "klantinteracties"
    ) -> None:
        self._http = http
        self._config = config
        self._headers = {
            "Authorization": f"Token {config.read_token(where)}",
            "Accept": "application/json",
        }

    @property
    def config(self) -> Klantinteracties:
        return self._config

    async def register(self, contact: Contact, done: Registration | None = None) -> Registration:
        """Make what is not made yet (``done``): partij, klantcontact with betrokkene, task."""
        progress = done or Registration()
        try:
            if contact.bsn and progress.partij is None:
                progress = replace(progress, partij=await self._partij(contact.bsn))
            if progress.klantcontact is None:
                found = await self._find_klantcontact(contact.reference)
                if found is not None:
                    progress = replace(progress, klantcontact=found[0], nummer=found[1])
                    if contact.transcript is not None:
                        await self._add_transcript(found[0], contact)
                else:
                    kc, betrokkene, nummer = await self._maak(contact, progress.partij)
                    progress = replace(
                        progress, klantcontact=kc, betrokkene=betrokkene, nummer=nummer
                    )
            if contact.callback and progress.internetaak is None and progress.klantcontact:
                taak = await self._internetaak(contact, progress.klantcontact)
                progress = replace(progress, internetaak=taak)
        except _StepFailed as exc:
            raise RegistrationFailed(exc.kind, exc.step, progress, exc.status) from None
        return progress

    async def _call(
        self,
        step: str,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, object] | None = None,
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method,
                self._config.url + path,
                params=params,
                json=body,
                headers=self._headers,
                timeout=self._config.timeout,
            )
        except httpx.TimeoutException:
            raise _StepFailed("timeout", step) from None
        except httpx.HTTPError:
            raise _StepFailed("network", step) from None
        status = response.status_code
        if status in (401, 403):
            raise _StepFailed("auth", step, status)
        if status >= 500:
            raise _StepFailed("server", step, status)
        if status not in (200, 201):
            raise _StepFailed("rejected" if status == 400 else "status", step, status)
        try:
            data = response.json()
        except ValueError:
            raise _StepFailed("response", step, status) from None
        if not isinstance(data, dict):
            raise _StepFailed("response", step, status)
        return data

    @staticmethod
    def _uuid(data: object, step: str) -> str:
        value = data.get("uuid") if isinstance(data, dict) else None
        if not isinstance(value, str) or len(value) != 36:
            raise _StepFailed("response", step)
        return value

    def _first(self, page: dict[str, Any], step: str) -> dict[str, Any] | None:
        results = page.get("results")
        if not isinstance(results, list):
            raise _StepFailed("response", step)
        return results[0] if results and isinstance(results[0], dict) else None

    async def _partij(self, bsn: str) -> str:
        """The persoon with this BSN: found, or made with its partij-identificator in one
        call (the API makes both atomically)."""
        identificator = {
            "codeObjecttype": "natuurlijk_persoon",
            "codeSoortObjectId": "bsn",
            "objectId": bsn,
            "codeRegister": "brp",
        }
        page = await self._call(
            "partij",
            "GET",
            "/partijen",
            params={
                "soortPartij": "persoon",
                **{f"partijIdentificator__{k}": v for k, v in identificator.items()},
            },
        )
        found = self._first(page, "partij")
        if found is not None:
            return self._uuid(found, "partij")
        made = await self._call(
            "partij",
            "POST",
            "/partijen",
            body={
                "soortPartij": "persoon",
                "indicatieActief": True,
                # No name: only the BSN identifies the resident here.
                "partijIdentificatie": {},
                "partijIdentificatoren": [{"partijIdentificator": identificator}],
            },
        )
        return self._uuid(made, "partij")

    @staticmethod
    def _nummer(klantcontact: dict[str, Any]) -> str | None:
        value = klantcontact.get("referentienummer") or klantcontact.get("nummer")
        return str(value)[:32] if value else None

    async def _find_klantcontact(self, ref: str) -> tuple[str, str | None] | None:
        page = await self._call(
            "klantcontact",
            "GET",
            "/klantcontacten",
            params={
                "onderwerpobject__onderwerpobjectidentificatorCodeRegister": REGISTER,
                "onderwerpobject__onderwerpobjectidentificatorObjectId": ref,
            },
        )
        found = self._first(page, "klantcontact")
        if found is None:
            return None
        return self._uuid(found, "klantcontact"), self._nummer(found)

    def _klantcontact(self, contact: Contact) -> dict[str, object]:
        inhoud, reactie = contact.texts()
        body: dict[str, object] = {
            "kanaal": contact.kanaal[:50],
            "onderwerp": contact.onderwerp[:200],
            "inhoud": inhoud,
            "taal": "nld",
            "vertrouwelijk": bool(
                self._config.confidential or contact.bsn or contact.transcript is not None
            ),
            "indicatieContactGelukt": True,
            "plaatsgevondenOp": datetime.fromtimestamp(contact.started_at, UTC).isoformat(),
        }
        if reactie is not None:
            body["reactie"] = reactie
        return body

    async def _maak(self, contact: Contact, partij: str | None) -> tuple[str, str, str | None]:
        betrokkene: dict[str, object] = {"rol": "klant", "initiator": True}
        if partij:
            betrokkene["wasPartij"] = {"uuid": partij}
        made = await self._call(
            "klantcontact",
            "POST",
            "/maak-klantcontact",
            body={
                "klantcontact": self._klantcontact(contact),
                "betrokkene": betrokkene,
                "onderwerpobject": {
                    "onderwerpobjectidentificator": {
                        "codeObjecttype": "gesprek",
                        "codeRegister": REGISTER,
                        "codeSoortObjectId": "referentie",
                        "objectId": contact.reference,
                    },
                },
            },
        )
        klantcontact = made.get("klantcontact")
        kc = self._uuid(klantcontact, "klantcontact")
        linked = self._uuid(made.get("betrokkene"), "klantcontact")
        return (
            kc,
            linked,
            self._nummer(klantcontact) if isinstance(klantcontact, dict) else None,
        )

    async def _add_transcript(self, klantcontact: str, contact: Contact) -> None:
        """A contact made earlier (by the agent) gets the transcript as its text."""
        inhoud, reactie = contact.texts()
        body: dict[str, object] = {"inhoud": inhoud, "vertrouwelijk": True}
        if reactie is not None:
            body["reactie"] = reactie
        await self._call("klantcontact", "PATCH", f"/klantcontacten/{klantcontact}", body=body)

    async def _internetaak(self, contact: Contact, klantcontact: str) -> str:
        page = await self._call(
            "internetaak",
            "GET",
            "/internetaken",
            params={"aanleidinggevendKlantcontact__uuid": klantcontact},
        )
        found = self._first(page, "internetaak")
        if found is not None:
            return self._uuid(found, "internetaak")
        body: dict[str, object] = {
            "aanleidinggevendKlantcontact": {"uuid": klantcontact},
            "gevraagdeHandeling": self._config.callback_action,
            "status": "te_verwerken",
        }
        if contact.toelichting:
            body["toelichting"] = contact.toelichting[:TOELICHTING_MAX]
        if self._config.callback_actor:
            body["toegewezenAanActoren"] = [{"uuid": self._config.callback_actor}]
        made = await self._call("internetaak", "POST", "/internetaken", body=body)
        return self._uuid(made, "internetaak")


@dataclass(frozen=True)
class RegistrationStatus:
    """What the agent console shows for a conversation's registration."""

    state: State
    attempts: int
    nummer: str | None = None
    klantcontact: str | None = None
    reason: str | None = None
    """Why the last attempt failed (pending) or why it was given up (failed), in Dutch."""

    @property
    def text(self) -> str:
        if self.state == "done":
            number = f" {self.nummer}" if self.nummer else ""
            return f"Geregistreerd in Klantinteracties als klantcontact{number}."
        if self.state == "failed":
            return f"Niet geregistreerd in Klantinteracties: {self.reason}."
        if self.reason:
            return (
                f"Nog niet geregistreerd (poging {self.attempts}): {self.reason}; "
                "wordt opnieuw geprobeerd."
            )
        return "Wordt geregistreerd in Klantinteracties…"

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "attempts": self.attempts,
            "nummer": self.nummer,
            "klantcontact": self.klantcontact,
            "reason": self.reason,
            "text": self.text,
        }


def _status(row: Any) -> RegistrationStatus:
    reason = reason_nl(row.last_error, row.last_step) if row.last_error else None
    if row.state == "failed":
        reason = f"opgegeven na herhaalde pogingen; {reason or 'onbekende fout'}"
    return RegistrationStatus(
        state=row.state,
        attempts=int(row.attempts),
        nummer=row.nummer,
        klantcontact=row.klantcontact_uuid,
        reason=reason,
    )


def _key_id(registration_id: str) -> str:
    return f"kis:{registration_id}"


class Registrations:
    """One tenant's registrations: asked for by agents, retried by the sweeper."""

    def __init__(self, store: Conversations, client: KlantinteractiesClient) -> None:
        self._store = store
        self._client = client
        self._config = client.config

    @property
    def _tenant(self) -> str:
        return self._store.tenant.slug

    async def request(
        self,
        conversation_id: str,
        *,
        actor: str,
        callback: bool = False,
        toelichting: str = "",
        attempt_now: bool = True,
    ) -> RegistrationStatus:
        """The agent registers the conversation's contact (once per conversation: a pending
        or done registration is returned as it is; a failed one starts again where it
        stopped). The attributes are read (audited as ``actor``) while the conversation is
        open or in wrap-up; what is sent is sealed and stored before the first attempt."""
        toelichting = toelichting.strip()
        if len(toelichting) > TOELICHTING_MAX:
            raise BadRequestError(f"De toelichting is langer dan {TOELICHTING_MAX} tekens")
        store = self._store
        existing = await self._row(conversation_id)
        if existing is not None and existing.state != "failed":
            return _status(existing)
        conversation, data = await store.view(conversation_id, actor=actor)
        if conversation.state not in HOLDS_ATTRIBUTES:
            raise InvalidTransitionError(
                "A contact is registered during the conversation or its wrap-up only"
            )
        contact = self._contact(conversation, data, callback, toelichting)
        registration_id = existing.id if existing is not None else new_id()
        now = store.clock()
        window = self._config.retry_hours * 3600
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        sealed = AESGCM(key).encrypt(
            nonce, json.dumps(contact.as_json()).encode(), _key_id(registration_id).encode()
        )
        await store.vault.keys.delete(_key_id(registration_id))
        if not await store.vault.keys.put(_key_id(registration_id), key, window + 3600):
            raise InvalidTransitionError("The registration changed meanwhile")
        values = {
            "state": "pending",
            "requested_by": actor[:100],
            "updated_at": now,
            "next_attempt_at": now,
            "give_up_at": now + window,
            "nonce": nonce,
            "ciphertext": sealed,
        }

        def save(conn: Connection) -> bool:
            if existing is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(table).values(
                                id=registration_id,
                                tenant=self._tenant,
                                conversation_id=conversation_id,
                                created_at=now,
                                attempts=0,
                                **values,
                            )
                        )
                except IntegrityError:
                    return False  # another agent (or instance) asked at the same moment
            else:
                changed = conn.execute(
                    update(table)
                    .where(table.c.id == registration_id, table.c.state == "failed")
                    .values(**values)
                )
                if changed.rowcount != 1:
                    raise InvalidTransitionError("The registration changed meanwhile")
            audit(
                conn,
                now,
                actor,
                "klantinteracties.requested",
                conversation_id,
                {"identified": contact.bsn is not None, "callback": callback},
                tenant=self._tenant,
            )
            return True

        try:
            stored = await store.db.run(save, write=True)
        except BaseException:
            if existing is None:
                await store.vault.keys.delete(_key_id(registration_id))
            raise
        if not stored:
            await store.vault.keys.delete(_key_id(registration_id))
        elif attempt_now and await self._claim(registration_id, now):
            await self._attempt(registration_id)
        status = await self.status(conversation_id)
        assert status is not None  # noqa: S101 - just stored
        return status

    def _contact(
        self,
        conversation: Conversation,
        data: dict[str, object] | None,
        callback: bool,
        toelichting: str,
    ) -> Contact:
        """What is sent for this conversation: the BSN only where its purpose asks for it,
        how the resident identified, never any other value."""
        purpose = self._store.tenant.purpose(conversation.purpose)
        given = data.get("attributes") if data else None
        attributes = given if isinstance(given, dict) else {}
        bsn = attributes.get(self._config.bsn_attribute)
        asks_bsn = purpose is not None and self._config.bsn_attribute in purpose.attributes
        provenance = data.get("provenance") if data and attributes else None
        received = data.get("received_at") if data and attributes else None
        return Contact(
            reference=reference(conversation.id),
            kanaal=self._config.kanaal(conversation.channel),
            onderwerp=(purpose.label.nl if purpose and purpose.label else conversation.purpose),
            note=note(
                provenance if isinstance(provenance, dict) else None,
                float(received) if isinstance(received, int | float) else None,
            ),
            started_at=conversation.connected_at or conversation.created_at,
            bsn=str(bsn) if asks_bsn and isinstance(bsn, str) and bsn else None,
            callback=callback,
            toelichting=toelichting,
        )

    async def status(self, conversation_id: str) -> RegistrationStatus | None:
        """The conversation's registration for the agent: ``None`` when none was asked."""
        row = await self._row(conversation_id)
        return _status(row) if row is not None else None

    async def run(self) -> int:
        """One pass of the sweeper: every due registration tried once, those past their
        window given up; returns how many were registered."""
        now = self._store.clock()

        def due(conn: Connection) -> list[Any]:
            return list(
                conn.execute(
                    select(table.c.id, table.c.give_up_at).where(
                        table.c.tenant == self._tenant,
                        table.c.state == "pending",
                        table.c.next_attempt_at <= now,
                    )
                )
            )

        done = 0
        for row in await self._store.db.run(due):
            try:
                if row.give_up_at <= now:
                    await self._give_up(row.id)
                elif await self._claim(row.id, now) and await self._attempt(row.id):
                    done += 1
            except Exception as exc:  # one broken registration does not stop the others
                log.warning(
                    "klantinteracties registration attempt broke; retried later",
                    extra={"registration": row.id, "reason": type(exc).__name__},
                )
        return done

    async def _row(self, conversation_id: str) -> Any:
        def read(conn: Connection) -> Any:
            return conn.execute(
                select(table).where(
                    table.c.tenant == self._tenant, table.c.conversation_id == conversation_id
                )
            ).first()

        return await self._store.db.run(read)

    async def _change(
        self,
        registration_id: str,
        values: dict[str, object],
        *,
        where: Any = None,
        event: tuple[str, str, dict[str, object]] | None = None,
    ) -> bool:
        """Change a pending registration (and audit ``event`` with it): ``False`` when it is
        no longer pending or ``where`` no longer holds (another instance was first)."""
        now = self._store.clock()

        def work(conn: Connection) -> bool:
            guard = [table.c.id == registration_id, table.c.state == "pending"]
            changed = conn.execute(
                update(table).where(*guard, *([where] if where is not None else [])).values(values)
            )
            if changed.rowcount != 1:
                return False
            if event is not None:
                action, conversation_id, detail = event
                audit(conn, now, "system", action, conversation_id, detail, tenant=self._tenant)
            return True

        return await self._store.db.run(work, write=True)

    async def _claim(self, registration_id: str, now: float) -> bool:
        """Take the attempt (another instance's sweeper may be at it): ``False`` if taken."""
        return await self._change(
            registration_id,
            {"next_attempt_at": now + max(LEASE_SECONDS, 6 * self._config.timeout + 60)},
            where=table.c.next_attempt_at <= now,
        )

    async def _by_id(self, registration_id: str) -> Any:
        def read(conn: Connection) -> Any:
            return conn.execute(select(table).where(table.c.id == registration_id)).one()

        return await self._store.db.run(read)

    async def _attempt(self, registration_id: str) -> bool:
        row = await self._by_id(registration_id)
        done = Registration(
            partij=row.partij_uuid,
            klantcontact=row.klantcontact_uuid,
            betrokkene=row.betrokkene_uuid,
            internetaak=row.internetaak_uuid,
            nummer=row.nummer,
        )
        contact = await self._open(row)
        if contact is None:
            await self._failed(row, "sealed", "gegevens", done)
            return False
        try:
            made = await self._client.register(contact, done)
        except RegistrationFailed as exc:
            await self._failed(row, exc.kind, exc.step, exc.progress)
            return False
        await self._finish(row, "done", made, "klantinteracties.registered")
        return True

    async def _open(self, row: Any) -> Contact | None:
        key = await self._store.vault.keys.get(_key_id(row.id))
        if key is None or row.ciphertext is None:
            return None
        try:
            plain = AESGCM(key).decrypt(row.nonce, row.ciphertext, _key_id(row.id).encode())
        except InvalidTag:
            return None
        return Contact.from_json(json.loads(plain))

    async def _failed(self, row: Any, kind: str, step: str, progress: Registration) -> None:
        now = self._store.clock()
        attempts = int(row.attempts) + 1
        log.warning(
            "klantinteracties registration failed; retried later",
            extra={"registration": row.id, "reason": kind, "step": step, "attempt": attempts},
        )
        values = {
            "attempts": attempts,
            "last_error": kind,
            "last_step": step,
            "updated_at": now,
            "next_attempt_at": now + min(30 * 2 ** (attempts - 1), 900),
            **_uuids(progress),
        }
        await self._change(row.id, values)
        if kind == "sealed":  # nothing left to send: retrying cannot help
            await self._give_up(row.id)

    async def _give_up(self, registration_id: str) -> None:
        row = await self._by_id(registration_id)
        if row.state != "pending":
            return
        log.error(
            "klantinteracties registration given up; its data is destroyed",
            extra={"registration": row.id, "reason": row.last_error or "none"},
        )
        await self._finish(row, "failed", None, "klantinteracties.given_up")

    async def _finish(self, row: Any, state: State, made: Registration | None, action: str) -> None:
        """Done or given up: the sealed data and its key are destroyed, the outcome audited."""
        attempts = int(row.attempts) + (made is not None)
        values: dict[str, object] = {
            "state": state,
            "attempts": attempts,
            "updated_at": self._store.clock(),
            "nonce": None,
            "ciphertext": None,
        }
        detail: dict[str, object] = {"attempts": attempts}
        if made is not None:
            values.update(_uuids(made), last_error=None, last_step=None)
            detail["klantcontact"] = made.klantcontact
        await self._store.vault.keys.delete(_key_id(row.id))
        await self._change(row.id, values, event=(action, row.conversation_id, detail))


def _uuids(made: Registration) -> dict[str, object]:
    return {
        "partij_uuid": made.partij,
        "klantcontact_uuid": made.klantcontact,
        "betrokkene_uuid": made.betrokkene,
        "internetaak_uuid": made.internetaak,
        "nummer": made.nummer,
    }


class KlantinteractiesHandOver:
    """The transcript hand-over (``[transcripts] plugin = "klantinteracties"``): the ended
    conversation becomes a klantcontact whose text is the messages (or, when the agent
    registered the contact already, that klantcontact gets them). Idempotent by the
    conversation's reference, so the keeper's retries never make a second one."""

    def __init__(self, http: httpx.AsyncClient, config: dict[str, Any]) -> None:
        try:
            c = Klantinteracties.model_validate(config)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) or "token" for e in exc.errors())
            raise ConfigError(f"transcripts.settings: invalid or missing {fields}") from None
        self._client = KlantinteractiesClient(http, c, where="transcripts.settings")
        self._config = c

    async def hand_over(self, transcript: Transcript) -> None:
        c = self._config
        bsn = transcript.attributes.get(c.bsn_attribute)
        identified = bool(transcript.attributes)
        contact = Contact(
            reference=reference(transcript.conversation_id),
            kanaal=c.kanaal(transcript.channel),
            onderwerp=transcript.purpose_label or transcript.purpose,
            note=note(
                transcript.provenance if identified else None,
                transcript.identified_at if identified else None,
            ),
            started_at=transcript.created_at,
            bsn=str(bsn) if isinstance(bsn, str) and bsn else None,
            transcript=transcript_text(transcript.messages),
        )
        try:
            await self._client.register(contact)
        except RegistrationFailed as exc:
            raise HandOverFailed(str(exc)) from None
