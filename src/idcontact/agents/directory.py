"""Agent accounts: enrolment, login with password and TOTP, sessions, memberships.

Agents belong to the deployment and are members of tenants (with a role and queues), so one
agent may serve several municipalities. Only hashes of enrolment codes and session ids are
stored; the TOTP secret is sealed with the instance's internal secret. Failed logins are
counted in the database, per account and per client, so throttling holds across instances.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio.to_thread
from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from idcontact.agents.credentials import (
    Passwords,
    Throttle,
    check_policy,
    new_session_id,
    session_key,
    verify_totp,
)
from idcontact.conversations import new_id
from idcontact.errors import BadRequestError, IdContactError, NotFoundError
from idcontact.sealing import Sealer
from idcontact.storage.audit import audit
from idcontact.storage.db import (
    Database,
    agent_memberships,
    agent_sessions,
    agents,
    login_failures,
)

Role = Literal["agent", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("agent", "supervisor", "admin")
ENROL_SECONDS = 72 * 3600
TOTP_SEAL = "agent-totp"
SSO_PREFIX = "sso:"
"""User names of agents who log in through an identity provider (``sso:<key>``); an
administrator cannot create or reset such names, so the two kinds of account never mix."""
TEN_YEARS = 10 * 365 * 24 * 3600
PHONE_ENDPOINT = re.compile(r"(PJSIP|SIP|IAX2|Local)/[A-Za-z0-9_.@+-]{1,80}")
T = TypeVar("T")


class LoginFailedError(IdContactError):
    status = 401
    slug = "login-failed"
    title = "The user name, password or code is not right"


class LoginThrottledError(IdContactError):
    status = 429
    slug = "login-throttled"
    title = "Too many failed logins; wait a while and try again"


class AccessRefusedError(IdContactError):
    status = 403
    slug = "access-refused"
    title = "Your account has no access to the agent console; ask an administrator"


class EnrolmentError(BadRequestError):
    slug = "enrolment-invalid"
    title = "This enrolment link is not valid (any more); ask an administrator for a new one"


@dataclass(frozen=True)
class Membership:
    tenant: str
    role: Role
    queues: tuple[str, ...]

    def at_least(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class AgentSession:
    """A logged-in agent, as a request sees it."""

    agent_id: str
    username: str
    display_name: str
    presence: str
    memberships: tuple[Membership, ...]

    def membership(self, tenant: str) -> Membership | None:
        return next((m for m in self.memberships if m.tenant == tenant), None)


def _agent_id(conn: Connection, username: str) -> str:
    found = conn.execute(select(agents.c.id).where(agents.c.username == username)).scalar()
    if found is None:
        raise NotFoundError("No such agent")
    return str(found)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class AgentDirectory:
    def __init__(
        self,
        db: Database,
        sealer: Sealer,
        passwords: Passwords | None = None,
        throttle: Throttle | None = None,
        clock: Callable[[], float] = time.time,
        *,
        session_seconds: float = 9 * 3600,
        idle_seconds: float = 30 * 60,
    ) -> None:
        self._db = db
        self._sealer = sealer
        self._passwords = passwords or Passwords()
        self._throttle = throttle or Throttle()
        self._clock = clock
        self._session_seconds = session_seconds
        self._idle_seconds = idle_seconds

    # -- administration (CLI) --------------------------------------------------------------

    async def add(self, username: str, display_name: str, memberships: Sequence[Membership]) -> str:
        """Create an agent who still has to enrol; returns the one-time enrolment code."""
        if not username or len(username) > 100 or not username.isprintable():
            raise BadRequestError("A user name is 1 to 100 printable characters")
        if username.startswith(SSO_PREFIX):
            raise BadRequestError(f"User names starting with {SSO_PREFIX!r} are for SSO accounts")
        for m in memberships:
            if m.role not in ROLES:
                raise BadRequestError(f"Unknown role; use one of {', '.join(ROLES)}")
        code = new_session_id()
        now = self._clock()
        agent_id = new_id(12)

        def work(conn: Connection) -> None:
            try:
                conn.execute(
                    insert(agents).values(
                        id=agent_id,
                        username=username,
                        display_name=display_name or username,
                        enrol_hash=_hash(code),
                        enrol_expires=now + ENROL_SECONDS,
                        disabled=0,
                        created_at=now,
                        presence="paused",
                        presence_since=now,
                    )
                )
            except IntegrityError:
                raise BadRequestError("That user name is taken") from None
            for m in memberships:
                conn.execute(
                    insert(agent_memberships).values(
                        agent_id=agent_id, tenant=m.tenant, role=m.role, queues=json.dumps(m.queues)
                    )
                )
                audit(conn, now, "admin", "agent.added", None, {"agent": agent_id}, tenant=m.tenant)

        await self._db.run(work, write=True)
        return code

    async def reset(self, username: str) -> str:
        """A new enrolment code; password, second factor and sessions are revoked."""
        code = new_session_id()
        now = self._clock()

        if username.startswith(SSO_PREFIX):
            raise BadRequestError("SSO accounts have no password: manage them at the provider")

        def work(conn: Connection) -> None:
            agent_id = _agent_id(conn, username)
            conn.execute(
                update(agents)
                .where(agents.c.id == agent_id)
                .values(
                    password_hash=None,
                    totp_secret=None,
                    totp_last_step=None,
                    enrol_hash=_hash(code),
                    enrol_expires=now + ENROL_SECONDS,
                    presence="paused",
                )
            )
            conn.execute(delete(agent_sessions).where(agent_sessions.c.agent_id == agent_id))

        await self._db.run(work, write=True)
        return code

    async def set_disabled(self, username: str, disabled: bool) -> None:
        def work(conn: Connection) -> None:
            agent_id = _agent_id(conn, username)
            conn.execute(
                update(agents)
                .where(agents.c.id == agent_id)
                .values(disabled=int(disabled), presence="paused")
            )
            if disabled:
                conn.execute(delete(agent_sessions).where(agent_sessions.c.agent_id == agent_id))

        await self._db.run(work, write=True)

    async def set_phone(self, username: str, endpoint: str | None) -> None:
        """The agent's desk phone for the phone channel (``PJSIP/agent1``), or none."""
        if endpoint is not None and not PHONE_ENDPOINT.fullmatch(endpoint):
            raise BadRequestError("A phone endpoint looks like PJSIP/agent1")

        def work(conn: Connection) -> None:
            agent_id = _agent_id(conn, username)
            conn.execute(
                update(agents).where(agents.c.id == agent_id).values(phone_endpoint=endpoint)
            )

        await self._db.run(work, write=True)

    async def phone_endpoint(self, agent_id: str) -> str | None:
        def work(conn: Connection) -> str | None:
            row = conn.execute(
                select(agents.c.phone_endpoint).where(agents.c.id == agent_id)
            ).first()
            return None if row is None else row.phone_endpoint

        return await self._db.run(work)

    async def all(self) -> list[dict[str, object]]:
        def work(conn: Connection) -> list[dict[str, object]]:
            out = []
            for a in conn.execute(select(agents).order_by(agents.c.username)):
                ms = conn.execute(
                    select(agent_memberships).where(agent_memberships.c.agent_id == a.id)
                ).all()
                out.append(
                    {
                        "username": a.username,
                        "name": a.display_name,
                        "enrolled": a.password_hash is not None,
                        "disabled": bool(a.disabled),
                        "phone": a.phone_endpoint,
                        "memberships": [
                            f"{m.tenant}:{m.role}:{','.join(json.loads(m.queues))}" for m in ms
                        ],
                    }
                )
            return out

        return await self._db.run(work)

    # -- enrolment -------------------------------------------------------------------------

    async def enrolling(self, code: str) -> str:
        """The user name an enrolment code belongs to (for the page), or EnrolmentError."""
        row = await self._db.run(lambda conn: self._enrol_row(conn, code))
        return str(row.username)

    def _enrol_row(self, conn: Connection, code: str) -> Any:
        if not code or len(code) > 100:
            raise EnrolmentError()
        row = conn.execute(select(agents).where(agents.c.enrol_hash == _hash(code))).first()
        if row is None or row.disabled or (row.enrol_expires or 0) < self._clock():
            raise EnrolmentError()
        return row

    def seal_totp_secret(self, secret: str) -> str:
        return self._sealer.seal(TOTP_SEAL, {"s": secret}, TEN_YEARS)

    def _open_totp_secret(self, sealed: str) -> str:
        return str(self._sealer.unseal(TOTP_SEAL, sealed)["s"])

    async def enrol(self, code: str, password: str, sealed_secret: str, totp: str) -> str:
        """Set the password and the second factor; the code is then spent. Returns the name."""
        check_policy(password)
        secret = self._open_totp_secret(sealed_secret)
        now = self._clock()
        step = verify_totp(secret, totp, at=now, last_step=None)
        if step is None:
            raise BadRequestError("The code from the authenticator app is not right; try again")
        hashed = await _in_thread(self._passwords.hash, password)

        def work(conn: Connection) -> str:
            row = self._enrol_row(conn, code)
            conn.execute(
                update(agents)
                .where(agents.c.id == row.id)
                .values(
                    password_hash=hashed,
                    totp_secret=sealed_secret,
                    # Not this step: the agent may log in with the same code right after.
                    totp_last_step=None,
                    enrol_hash=None,
                    enrol_expires=None,
                )
            )
            return str(row.username)

        return await self._db.run(work, write=True)

    # -- login and sessions ----------------------------------------------------------------

    async def login(self, username: str, password: str, totp: str, *, client: str) -> str:
        """Check password and TOTP code; returns a new session id (never reused)."""
        now = self._clock()
        keys = ("account:" + _hash(username.casefold()), "client:" + _hash(client))

        def recent(conn: Connection) -> tuple[Any, list[list[float]]]:
            row = conn.execute(select(agents).where(agents.c.username == username)).first()
            return row, [self._failures(conn, key, now) for key in keys]

        row, histories = await self._db.run(recent)
        if any(self._throttle.blocked_until(h, now) is not None for h in histories):
            raise LoginThrottledError()
        ok = False
        if row is None or row.password_hash is None or row.disabled:
            await _in_thread(self._passwords.dummy_verify)
        else:
            ok = await _in_thread(
                self._passwords.verify,
                row.password_hash,
                password,
            )
        step = None
        if ok:
            secret = self._open_totp_secret(row.totp_secret)
            step = verify_totp(
                secret,
                totp,
                at=now,
                last_step=row.totp_last_step,
            )
        if step is None:

            def fail(conn: Connection) -> None:
                for key in keys:
                    conn.execute(insert(login_failures).values(key=key, at=now))

            await self._db.run(fail, write=True)
            raise LoginFailedError()
        agent_id = str(row.id)

        def start(conn: Connection) -> str:
            # The step is taken under a guard, so one code opens one session only.
            taken = conn.execute(
                update(agents)
                .where(
                    agents.c.id == agent_id,
                    func.coalesce(agents.c.totp_last_step, -1) < step,
                )
                .values(totp_last_step=step)
            )
            if taken.rowcount != 1:
                raise LoginFailedError()
            conn.execute(delete(login_failures).where(login_failures.c.key == keys[0]))
            return self._start_session(conn, agent_id, now, "password")

        return await self._db.run(start, write=True)

    async def sso_login(
        self, key: str, name: str, memberships: Mapping[str, Membership | None], tenant: str
    ) -> str:
        """Log in the agent an identity provider vouched for (``key``: issuer + subject) to
        ``tenant``; created on their first login. Their memberships of the tenants in
        ``memberships`` are replaced (``None``: removed) at every login, also a refused one,
        so a group taken away at the provider revokes access at the next login. Returns a new
        session id, or raises AccessRefusedError (no membership of ``tenant``, disabled);
        a refused newcomer leaves nothing behind."""
        username = SSO_PREFIX + key
        refused = memberships.get(tenant) is None
        now = self._clock()

        def work(conn: Connection) -> str | None:
            row = conn.execute(select(agents).where(agents.c.username == username)).first()
            if row is not None and row.disabled:
                raise AccessRefusedError()
            if row is None and refused:
                return None
            if row is None:
                agent_id = new_id(12)
                conn.execute(
                    insert(agents).values(
                        id=agent_id,
                        username=username,
                        display_name=name or "Medewerker",
                        disabled=0,
                        created_at=now,
                        presence="paused",
                        presence_since=now,
                    )
                )
            else:
                agent_id = str(row.id)
                if name and name != row.display_name:
                    conn.execute(
                        update(agents).where(agents.c.id == agent_id).values(display_name=name)
                    )
            for slug, member in memberships.items():
                self._replace_membership(conn, agent_id, slug, member, now)
            return None if refused else self._start_session(conn, agent_id, now, "sso")

        session_id = await self._db.run(work, write=True)
        if session_id is None:
            raise AccessRefusedError()
        return session_id

    def _replace_membership(
        self, conn: Connection, agent_id: str, tenant: str, member: Membership | None, now: float
    ) -> None:
        """Set one tenant's membership as the provider's groups say; audited when it changes."""
        where = (agent_memberships.c.agent_id == agent_id, agent_memberships.c.tenant == tenant)
        before = conn.execute(select(agent_memberships).where(*where)).first()
        old = (before.role, tuple(json.loads(before.queues))) if before else None
        new = (member.role, member.queues) if member else None
        if old == new:
            return
        conn.execute(delete(agent_memberships).where(*where))
        if member is not None:
            conn.execute(
                insert(agent_memberships).values(
                    agent_id=agent_id,
                    tenant=tenant,
                    role=member.role,
                    queues=json.dumps(member.queues),
                )
            )
        detail = {"agent": agent_id, "via": "sso", "role": member.role if member else None}
        audit(conn, now, "sso", "agent.membership", None, detail, tenant=tenant)

    def _start_session(self, conn: Connection, agent_id: str, now: float, via: str) -> str:
        """The one way a login ends: a fresh session id (only its hash is stored) and an
        ``agent.login`` event in each tenant the agent belongs to."""
        session_id = new_session_id()
        conn.execute(
            insert(agent_sessions).values(
                key=session_key(session_id),
                agent_id=agent_id,
                created_at=now,
                last_seen=now,
                expires_at=now + self._session_seconds,
            )
        )
        for m in conn.execute(
            select(agent_memberships.c.tenant).where(agent_memberships.c.agent_id == agent_id)
        ):
            audit(
                conn, now, f"agent:{agent_id}", "agent.login", None, {"via": via}, tenant=m.tenant
            )
        return session_id

    def _failures(self, conn: Connection, key: str, now: float) -> list[float]:
        horizon = now - self._throttle.window_seconds - self._throttle.lockout_seconds
        return [
            r.at
            for r in conn.execute(
                select(login_failures.c.at).where(
                    login_failures.c.key == key, login_failures.c.at > horizon
                )
            )
        ]

    async def session(self, session_id: str) -> AgentSession | None:
        """The agent behind a session cookie, or ``None`` (expired, idle, revoked, unknown)."""
        if not session_id or len(session_id) > 100:
            return None
        now = self._clock()
        key = session_key(session_id)

        def work(conn: Connection) -> AgentSession | None:
            row = conn.execute(
                select(agent_sessions, agents)
                .join(agents, agents.c.id == agent_sessions.c.agent_id)
                .where(agent_sessions.c.key == key)
            ).first()
            if row is None:
                return None
            if row.disabled or row.expires_at <= now or row.last_seen + self._idle_seconds <= now:
                conn.execute(delete(agent_sessions).where(agent_sessions.c.key == key))
                return None
            if now - row.last_seen > 30:  # keep writes rare: a minute's precision is plenty
                conn.execute(
                    update(agent_sessions).where(agent_sessions.c.key == key).values(last_seen=now)
                )
            memberships = tuple(
                Membership(m.tenant, m.role, tuple(json.loads(m.queues)))
                for m in conn.execute(
                    select(agent_memberships).where(agent_memberships.c.agent_id == row.agent_id)
                )
            )
            return AgentSession(
                row.agent_id, row.username, row.display_name, row.presence, memberships
            )

        return await self._db.run(work, write=True)

    async def hand_off(self, session_id: str, *, seconds: int) -> str | None:
        """A second session for the agent behind ``session_id``, pending for ``seconds`` until
        :meth:`take_hand_off` makes it a full one: how a login in a first-party pop-up reaches
        a panel in another site's frame, whose cookies live in a partition of their own."""
        agent = await self.session(session_id)
        if agent is None:
            return None
        now = self._clock()

        def work(conn: Connection) -> str:
            new = self._start_session(conn, agent.agent_id, now, "embed")
            conn.execute(
                update(agent_sessions)
                .where(agent_sessions.c.key == session_key(new))
                .values(expires_at=now + seconds)
            )
            return new

        return await self._db.run(work, write=True)

    async def take_hand_off(self, session_id: str, *, seconds: int) -> bool:
        """Make a pending hand-off session a full one; once only (a second try finds it
        full, an old one finds it expired)."""
        if not session_id or len(session_id) > 100:
            return False
        now = self._clock()
        key = session_key(session_id)

        def work(conn: Connection) -> bool:
            done = conn.execute(
                update(agent_sessions)
                .where(
                    agent_sessions.c.key == key,
                    agent_sessions.c.expires_at > now,
                    agent_sessions.c.expires_at <= agent_sessions.c.created_at + seconds,
                )
                .values(expires_at=now + self._session_seconds, last_seen=now)
            )
            return bool(done.rowcount)

        return await self._db.run(work, write=True)

    async def logout(self, session_id: str) -> None:
        key = session_key(session_id)
        await self._db.run(
            lambda conn: conn.execute(delete(agent_sessions).where(agent_sessions.c.key == key)),
            write=True,
        )

    async def purge(self) -> None:
        """Forget expired sessions and old login failures (the sweeper calls this)."""
        now = self._clock()
        horizon = now - self._throttle.window_seconds - self._throttle.lockout_seconds

        def work(conn: Connection) -> None:
            conn.execute(delete(agent_sessions).where(agent_sessions.c.expires_at <= now))
            conn.execute(delete(login_failures).where(login_failures.c.at <= horizon))

        await self._db.run(work, write=True)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """argon2 takes tens of milliseconds of CPU: keep it off the event loop."""
    return await anyio.to_thread.run_sync(fn, *args)
