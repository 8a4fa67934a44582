"""Agent console benchmark (issue #3, point 10): many waiting conversations, many live consoles.

5,000 conversations wait at once while 200 agent consoles hold their live event stream
(``GET /agent/<tenant>/events``, Server-Sent Events) open. Reported: the server's memory (RSS)
idle, with the consoles connected and with the conversations waiting, the memory per waiting
conversation, and the **push latency**: for every event every console receives, the time it
arrived at the console minus the ``at`` field the server stamped when it published the change.
Targets: push p99 <= 100 ms, RSS <= 1 GiB.

The run, against one real ``idcontact serve`` process on 127.0.0.1 with a fresh data dir:

1. agents: created and enrolled in this process through ``AgentDirectory`` on the server's
   database before the server starts (with cheap argon2 parameters: a bench shortcut, the
   server verifies with whatever parameters a hash carries), then each logs in over HTTP.
2. consoles: every agent opens its event stream; all are paused, so nothing is offered.
3. push, few waiting: residents arrive on a clock (``POST /start`` with an ``auth_result``
   token, then the landing page, which joins the queue and publishes to every console) with
   some presence changes, first at a light rate (2/s), then at the asked rate (50/s).
4. fill to 5,000 waiting: over HTTP up to ``--http-fill``, the rest directly in this process
   through the server's own services (no HTTP, no events), since over HTTP it takes hours.
5. push again with everything waiting; then offers: 20 agents become available, accept each
   offer, hold it and close it, while residents keep arriving.

    .venv/bin/python bench/console.py            # 5,000 waiting, 200 consoles, 10 s phases
    .venv/bin/python bench/console.py --quick    # 1,000 waiting, 200 consoles, 5 s phases
    .venv/bin/python bench/console.py --help

Results: bench/results/console-<UTC stamp>.json and console-latest.json; see bench/README.md.
The exit status is 1 only when the run itself failed (the server died, logins, consoles or
residents failed); missed targets never fail the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import random
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyotp


def _load_flows() -> types.ModuleType:
    """bench/flows.py, whether this file runs as a script or as ``python -m bench.console``."""
    if "bench.flows" in sys.modules:
        return sys.modules["bench.flows"]
    path = Path(__file__).resolve().with_name("flows.py")
    spec = importlib.util.spec_from_file_location("bench_flows", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


flows = _load_flows()

REPO: Path = flows.REPO
RESULTS_DIR: Path = flows.RESULTS_DIR
log: Callable[[str], None] = flows.log
percentile: Callable[[list[float], float], float] = flows.percentile

TARGET_P99_MS = 100.0
TARGET_RSS_BYTES = 1024**3
PASSWORD = "bench console password 1"  # noqa: S105 - bench agents, throwaway data dir
TENANT = "default"
MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# The server process: memory


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) in bytes and the thread count of a process, from /proc."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
        elif name == "Threads":
            out[name] = int(value)
    return out


@dataclass
class MemorySample:
    label: str
    waiting: int
    rss: int
    hwm: int
    threads: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "waiting": self.waiting,
            "rss_bytes": self.rss,
            "rss_mib": round(self.rss / MiB, 1),
            "peak_rss_mib": round(self.hwm / MiB, 1),
            "threads": self.threads,
        }


def memory(pid: int, label: str, waiting: int) -> MemorySample:
    s = proc_status(pid)
    return MemorySample(label, waiting, s.get("VmRSS", 0), s.get("VmHWM", 0), s.get("Threads", 0))


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx


# --------------------------------------------------------------------------------------------
# Agents: created in this process, logged in over HTTP


@dataclass
class AgentAccount:
    index: int
    username: str
    agent_id: str
    secret: str
    session: str = ""
    csrf: str = ""

    @property
    def cookie(self) -> str:
        return f"idc_agent={self.session}"


async def create_agents(settings: Any, count: int) -> list[AgentAccount]:
    """Add and enrol ``count`` agents (members of every queue of the default tenant) directly
    in the database, as ``idcontact agents add`` + the enrolment page would.

    Bench shortcut: passwords are hashed with argon2id at time_cost=1, 8 KiB, so 200 logins do
    not cost 200 full argon2 verifications on the server (which reads the parameters from the
    hash). Everything else (sealed TOTP secret, enrolment code, memberships) is the real code.
    """
    from sqlalchemy import select

    from idcontact.agents.credentials import Passwords, new_totp_secret
    from idcontact.agents.directory import AgentDirectory, Membership
    from idcontact.keyring import load_keyring
    from idcontact.sealing import Sealer
    from idcontact.storage.db import Database, agents, upgrade

    sealer = Sealer(load_keyring(settings, settings.default_tenant).internal_secret)
    db = Database(settings.resolved_database_url)
    try:
        await upgrade(db.engine)
        directory = AgentDirectory(db, sealer, passwords=Passwords(time_cost=1, memory_kib=8))
        secrets: dict[str, str] = {}
        member = [Membership(TENANT, "agent", ("*",))]
        for i in range(count):
            username = f"bench{i:04d}"
            code = await directory.add(username, f"Bench agent {i}", member)
            secret = new_totp_secret()
            sealed = directory.seal_totp_secret(secret)
            await directory.enrol(code, PASSWORD, sealed, pyotp.TOTP(secret).now())
            secrets[username] = secret
        ids: dict[str, str] = await db.run(
            lambda conn: {
                str(r.username): str(r.id)
                for r in conn.execute(select(agents.c.id, agents.c.username))
            }
        )
    finally:
        await db.dispose()
    return [
        AgentAccount(i, name, ids[name], secrets[name]) for i, name in enumerate(sorted(secrets))
    ]


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    if not found:
        raise RuntimeError(f"no hidden field {name!r} on the page")
    return found.group(1)


async def login(base: str, account: AgentAccount, context: ssl.SSLContext) -> None:
    """The login form, then the console page for the CSRF token of the session."""
    async with httpx.AsyncClient(
        base_url=base, verify=context, timeout=60.0, follow_redirects=False
    ) as client:
        page = await client.get("/agent/login")
        page.raise_for_status()
        done = await client.post(
            "/agent/login",
            data={
                "username": account.username,
                "password": PASSWORD,
                "code": pyotp.TOTP(account.secret).now(),
                "csrf": _field(page.text, "csrf"),
            },
        )
        if done.status_code != 303 or "idc_agent" not in client.cookies:
            raise RuntimeError(f"login of {account.username}: HTTP {done.status_code}")
        account.session = str(client.cookies["idc_agent"])
        console = await client.get(f"/agent/{TENANT}/")
        if console.status_code != 200:
            raise RuntimeError(f"console of {account.username}: HTTP {console.status_code}")
        account.csrf = _field(console.text, "csrf")


# --------------------------------------------------------------------------------------------
# The consoles: one event stream per agent


@dataclass
class Received:
    """What all consoles received of the events published inside one phase's window."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"queue": [], "agent": []})
    # per published event (topic, its ``at``, conversation or agent id): first arrival, last
    # arrival, consoles reached
    fanout: dict[tuple[str, float, str], list[float]] = field(default_factory=dict)
    last_arrival: float = 0.0


class Consoles:
    """The event streams of all agents, read in this process over plain asyncio streams.

    The default client is cheaper than httpx (``--sse-client httpx`` for comparison): every
    console receives every queue change, so at 100 changes/s 200 consoles read 20,000 events/s,
    and the instrument must not become the bottleneck it measures.
    """

    def __init__(self, host: str, port: int, mode: str) -> None:
        self.host = host
        self.port = port
        self.mode = mode
        self.tasks: list[asyncio.Task[None]] = []
        self.ready: dict[int, asyncio.Event] = {}
        self.recording: Received | None = None
        self.window: tuple[float, float] = (0.0, math.inf)
        self.total: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.on_event: Callable[[AgentAccount, str, dict[str, Any]], None] | None = None

    def open(self, accounts: list[AgentAccount]) -> None:
        reader = self._raw if self.mode == "raw" else self._httpx
        for account in accounts:
            self.ready[account.index] = asyncio.Event()
            self.tasks.append(asyncio.create_task(self._run(reader, account)))

    async def wait_ready(self, seconds: float) -> int:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.gather(*(e.wait() for e in self.ready.values()))
        return sum(1 for e in self.ready.values() if e.is_set())

    def record(self, start: float, end: float = math.inf) -> Received:
        """Record the events whose ``at`` falls in [start, end] (wall clock)."""
        self.recording = Received()
        self.window = (start, end)
        return self.recording

    async def settle(self, quiet: float, limit: float) -> float:
        """Wait until no recorded event arrived for ``quiet`` s (at most ``limit`` s), so late
        deliveries still count; then stop recording. Returns the seconds waited."""
        rec = self.recording
        t0 = time.time()
        while rec is not None and time.time() - t0 < limit:
            idle = time.time() - max(rec.last_arrival, t0)
            if idle >= quiet:
                break
            await asyncio.sleep(min(0.2, quiet - idle))
        self.recording = None
        return round(time.time() - t0, 1)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    @property
    def alive(self) -> int:
        return sum(1 for t in self.tasks if not t.done())

    async def _run(self, reader: Callable[[AgentAccount], Any], account: AgentAccount) -> None:
        try:
            await reader(account)
            self.ended["stream ended by the server"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.ended[f"{type(exc).__name__}: {exc}"[:120]] += 1

    def _message(self, account: AgentAccount, block: bytes, now: float) -> None:
        name = "message"
        data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data += line[5:].strip()
        if name == "hello":
            self.ready[account.index].set()
            return
        if name not in ("queue", "agent") or not data:
            return
        payload = json.loads(data)
        if str(payload.get("key", "")).startswith("agent:"):
            name = "agent"  # an agent's own presence, sent to that agent's console only
        at = float(payload["at"])
        self.total[name] += 1
        rec = self.recording
        if rec is not None and self.window[0] <= at <= self.window[1]:
            rec.latencies[name].append(now - at)
            rec.last_arrival = now
            key = (name, at, str(payload.get("id") or payload.get("key")))
            seen = rec.fanout.get(key)
            if seen is None:
                rec.fanout[key] = [now, now, 1.0]
            else:
                seen[0] = min(seen[0], now)
                seen[1] = max(seen[1], now)
                seen[2] += 1
        if self.on_event is not None:
            self.on_event(account, name, payload)

    async def _raw(self, account: AgentAccount) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(
                f"GET /agent/{TENANT}/events HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Accept: text/event-stream\r\nCookie: {account.cookie}\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0]
            if b" 200 " not in status + b" ":
                raise RuntimeError(f"events: {status.decode(errors='replace')}")
            chunked = b"transfer-encoding: chunked" in head.lower()
            buffer = b""
            while True:
                if chunked:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        return
                    data = (await reader.readexactly(size + 2))[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        return
                now = time.time()
                buffer += data
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._message(account, block, now)
        finally:
            writer.close()

    async def _httpx(self, account: AgentAccount) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client:
            url = f"http://{self.host}:{self.port}/agent/{TENANT}/events"
            headers = {"Cookie": account.cookie, "Accept": "text/event-stream"}
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"events: HTTP {response.status_code}")
                lines: list[str] = []
                async for line in response.aiter_lines():
                    if line:
                        lines.append(line)
                        continue
                    self._message(account, "\n".join(lines).encode(), time.time())
                    lines = []


class LoopLag:
    """How late this process's event loop wakes up: a busy client delays every receipt, so a
    large lag means the client, not the server, limited the latency."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LoopLag:
        self.samples = []
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.samples.append(time.perf_counter() - t - 0.01)

    async def stop(self) -> dict[str, float | None]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        values = sorted(self.samples)
        return {"p50": _ms(values, 50), "p99": _ms(values, 99), "max": _ms(values, 100)}


def _ms(values: list[float], q: float) -> float | None:
    """A percentile of sorted seconds in ms; None (JSON null) without values."""
    return round(percentile(values, q) * 1000, 2) if values else None


# --------------------------------------------------------------------------------------------
# Residents: start a conversation with an auth_result, open the landing page (joins the queue)


class Residents:
    """Residents over HTTP, as in tests/flows/test_console.py: ``POST /start`` with an
    ``auth_result`` token signed and encrypted with the instance's demo keys, then ``GET`` the
    landing page, on which the demo comm plugin calls ``QueueService.enqueue``."""

    def __init__(self, base: str, settings: Any, context: ssl.SSLContext) -> None:
        from idcontact.keyring import load_keyring
        from idcontact.tokens import AuthResult, TokenIssuer

        keys = load_keyring(settings, settings.default_tenant)
        self._issuer = TokenIssuer(keys.signing, kid=keys.signing_kid)
        self._encrypt_to = keys.encryption_public
        self._result = AuthResult(
            status="success", attributes={"fullname": "Bench Resident", "bsn": "999990019"}
        )
        self.base = base
        self.context = context
        self.errors: Counter[str] = Counter()

    def token(self) -> str:
        return str(self._issuer.issue(self._result, self._encrypt_to))

    def client(self, connections: int = 1) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=self.context,
            timeout=httpx.Timeout(120.0),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def one(self, client: httpx.AsyncClient) -> tuple[float, float] | None:
        """One resident; (start, landing) seconds, or None after an error (counted)."""
        joined = await self.join(client)
        return None if joined is None else (joined[1], joined[2])

    async def join(
        self, client: httpx.AsyncClient, comm_method: str = "demo"
    ) -> tuple[str, float, float] | None:
        """One resident on ``comm_method``: (their page's URL, start s, landing s), or None
        after an error (counted)."""
        token = self.token()
        try:
            t0 = time.perf_counter()
            r = await client.post(
                f"{self.base}/start",
                json={"purpose": flows.PURPOSE, "auth_result": token, "comm_method": comm_method},
                headers={"Accept": "application/json"},
            )
            if r.status_code != 200:
                self.errors[f"start: HTTP {r.status_code}"] += 1
                return None
            t1 = time.perf_counter()
            page = str(r.json()["client_url"])
            r = await client.get(page)
            if r.status_code != 200:
                self.errors[f"landing: HTTP {r.status_code}"] += 1
                return None
            return page, t1 - t0, time.perf_counter() - t1
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            return None


class InProcess:
    """The server's own services, built in this process on the same data dir and database
    (``create_app`` + ``services_of``, never started): for the direct fill, the state counts
    and the timing probe. Its event bus has no subscribers, so it publishes to nobody."""

    def __init__(self, settings: Any) -> None:
        from idcontact.app import create_app, services_of

        self.services = services_of(create_app(settings))
        tenant = self.services.tenants[TENANT]
        if tenant.conversations is None or tenant.queues is None:
            raise RuntimeError("no conversation store in the in-process services")
        self.conversations = tenant.conversations
        self.queues = tenant.queues
        purpose = tenant.tenant.purpose(flows.PURPOSE)
        if purpose is None:
            raise RuntimeError(f"purpose {flows.PURPOSE} not configured")
        self.purpose = purpose

    async def join(self, token: str) -> None:
        """What POST /start and the landing page do, minus HTTP and the events."""
        conversation_id = await self.conversations.create_with_token(self.purpose, "demo", token)
        await self.queues.enqueue(conversation_id, actor="comm:demo:bench-direct")

    async def states(self) -> dict[str, int]:
        from sqlalchemy import func, select

        from idcontact.storage.db import conversations

        rows = await self.conversations.db.run(
            lambda conn: conn.execute(
                select(conversations.c.state, func.count()).group_by(conversations.c.state)
            ).all()
        )
        return {str(state): int(n) for state, n in rows}

    async def probe(self, repeats: int = 3) -> dict[str, Any]:
        """Wall and CPU ms of one ``QueueService.places()`` and one ``tick()`` (which makes no
        offer while every agent is paused, and publishes to nobody here), best of ``repeats``:
        what the server pays on every landing page and on every change."""
        out: dict[str, Any] = {}
        for name, call in (("places", self.queues.places), ("tick", self.queues.tick)):
            best: tuple[float, float] | None = None
            for _ in range(repeats):
                w0, c0 = time.perf_counter(), time.thread_time()
                await call()
                w, c = time.perf_counter() - w0, time.thread_time() - c0
                best = (w, c) if best is None or w < best[0] else best
            assert best is not None
            out[f"{name}_ms"] = round(best[0] * 1000, 1)
            out[f"{name}_main_thread_cpu_ms"] = round(best[1] * 1000, 1)
        return out

    async def close(self) -> None:
        s = self.services
        await s.http.aclose()
        if s.keystore is not None:
            await s.keystore.close()
        if s.db is not None:
            await s.db.dispose()


# --------------------------------------------------------------------------------------------
# Phases


@dataclass
class Run:
    args: argparse.Namespace
    settings: Any
    server: Any  # flows.Server
    consoles: Consoles
    residents: Residents
    local: InProcess
    accounts: list[AgentAccount]
    db_pids: Callable[[], Any]
    waiting: int = 0
    memory: list[MemorySample] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def mem(self, label: str) -> MemorySample:
        sample = memory(self.server.proc.pid, label, self.waiting)
        self.memory.append(sample)
        return sample


def cpu_of(before: Any, after: Any) -> dict[str, Any]:
    """Cores used during a window by the server, its PostgreSQL backends, this process and the
    whole machine (from ``flows.Sample``)."""
    window = after.wall - before.wall
    server = after.server_cpu - before.server_cpu
    bench = after.bench_cpu - before.bench_cpu
    db = sum(c - before.db_cpu.get(pid, 0.0) for pid, c in after.db_cpu.items() if c == c)
    total = after.sys_total - before.sys_total
    busy = (after.sys_busy - before.sys_busy) / total if total else None
    out: dict[str, Any] = {
        "server_cores": round(server / window, 2),
        "client_cores": round(bench / window, 2),
        "machine_busy_pct": round(100 * busy, 1) if busy is not None else None,
    }
    if after.db_cpu:
        out["db_cores"] = round(db / window, 2)
    if busy is not None:
        out["other_cores"] = round(busy * flows.NCPU - (server + bench + db) / window, 2)
    return out


async def sample(run: Run) -> Any:
    return flows.Sample.take([run.server], await run.db_pids())


def latency_summary(values: list[float]) -> dict[str, Any]:
    v = sorted(values)
    return {
        "count": len(v),
        "p50_ms": _ms(v, 50),
        "p95_ms": _ms(v, 95),
        "p99_ms": _ms(v, 99),
        "max_ms": _ms(v, 100),
        "mean_ms": round(sum(v) / len(v) * 1000, 2) if v else None,
    }


def received_summary(rec: Received, seconds: float, consoles: int) -> dict[str, Any]:
    """Latency of every delivery, and what did not arrive: each queue event is for every
    console, each agent event for one."""
    every = rec.latencies["queue"] + rec.latencies["agent"]
    queue_events = [s for k, s in rec.fanout.items() if k[0] == "queue"]
    spreads = sorted(s[1] - s[0] for s in queue_events)
    expected = len(queue_events) * consoles + sum(1 for k in rec.fanout if k[0] == "agent")
    return {
        "all": latency_summary(every),
        "queue": latency_summary(rec.latencies["queue"]),
        "agent": latency_summary(rec.latencies["agent"]),
        "deliveries_per_s": round(len(every) / seconds, 1) if seconds > 0 else 0.0,
        "queue_events_published": len(queue_events),
        "queue_events_per_s": round(len(queue_events) / seconds, 1) if seconds > 0 else 0.0,
        "deliveries_expected": expected,
        "deliveries_missing": expected - len(every),
        "fanout_spread_ms": {"p50": _ms(spreads, 50), "p99": _ms(spreads, 99)},
    }


async def fill(run: Run, target: int) -> dict[str, Any]:
    """Residents join back to back over HTTP (``--fill-concurrency`` at a time) up to
    ``--http-fill`` waiting, then directly in this process up to ``target``; RSS is sampled at
    every tenth of the way."""
    args = run.args
    http_target = min(target, max(run.waiting, args.http_fill))
    todo = target - run.waiting
    step = max(1, todo // 10)
    marks = {run.waiting + step * i for i in range(1, 11)} | {target}
    times: list[tuple[int, float, float]] = []  # (index, start s, landing s)
    out: dict[str, Any] = {"target": target, "from": run.waiting}
    lag = LoopLag().start()
    rec = run.consoles.record(time.time())
    before = await sample(run)
    t0 = time.perf_counter()
    deadline = t0 + args.fill_timeout
    progress = t0
    claimed = run.waiting
    failed = False

    def joined(index: int, result: tuple[float, float] | None) -> None:
        nonlocal progress
        run.waiting += 1
        if result is not None:
            times.append((index, *result))
        if run.waiting in marks:
            run.mem(f"fill {run.waiting}")
        if time.perf_counter() - progress > 15:
            progress = time.perf_counter()
            log(f"    {run.waiting} waiting ...")

    async def over_http() -> None:
        nonlocal claimed, failed
        async with run.residents.client() as client:
            while claimed < http_target and not failed and time.perf_counter() < deadline:
                index, claimed = claimed, claimed + 1
                result = await run.residents.one(client)
                if result is None:
                    claimed -= 1  # given back
                    failed = sum(run.residents.errors.values()) > 50
                    continue
                joined(index, result)

    await asyncio.gather(*(over_http() for _ in range(args.fill_concurrency)))
    http_seconds = time.perf_counter() - t0
    after = await sample(run)
    out["http"] = {
        "conversations": len(times),
        "seconds": round(http_seconds, 1),
        "per_s": round(len(times) / http_seconds, 1) if times else None,
        "concurrency": args.fill_concurrency,
        "errors": dict(run.residents.errors),
        "cpu": cpu_of(before, after),
    }
    if times:
        times.sort()
        tenth = max(1, len(times) // 10)
        for name, part in (("first_tenth", times[:tenth]), ("last_tenth", times[-tenth:])):
            start = sorted(t[1] for t in part)
            landing = sorted(t[2] for t in part)
            out["http"][name] = {
                "start_p50_ms": _ms(start, 50),
                "landing_p50_ms": _ms(landing, 50),
                "landing_p99_ms": _ms(landing, 99),
            }
    out["http"]["drained_s"] = await run.consoles.settle(args.quiet, args.drain_limit)
    out["http"]["push"] = received_summary(rec, http_seconds, len(run.accounts))
    out["http"]["client_loop_lag_ms"] = await lag.stop()
    run.residents.errors.clear()
    if failed or time.perf_counter() >= deadline:
        out["stopped"] = "resident errors" if failed else f"--fill-timeout {args.fill_timeout:g} s"
        return out

    if run.waiting < target:
        log(f"    direct fill in this process: {run.waiting} -> {target} ...")
        t1 = time.perf_counter()
        direct = 0
        errors: Counter[str] = Counter()
        while run.waiting < target and time.perf_counter() < deadline:
            try:
                await run.local.join(run.residents.token())
            except Exception as exc:
                errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                if sum(errors.values()) > 50:
                    break
                continue
            direct += 1
            joined(run.waiting, None)
        seconds = time.perf_counter() - t1
        out["direct"] = {
            "conversations": direct,
            "seconds": round(seconds, 1),
            "per_s": round(direct / seconds, 1) if seconds else None,
            "errors": dict(errors),
        }
    out["reached"] = run.waiting
    return out


async def quiet(run: Run, seconds: float) -> dict[str, Any]:
    """The server's CPU while nothing happens (its own timers only)."""
    before = await sample(run)
    await asyncio.sleep(seconds)
    return {"seconds": seconds, **cpu_of(before, await sample(run))}


async def steady(
    run: Run,
    *,
    label: str,
    seconds: float,
    rate: float,
    presence_rate: float,
    presence_pool: list[AgentAccount],
    extra: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``rate`` residents/s arrive (open loop: on a clock, whatever the server's speed, at most
    ``--max-in-flight`` at once) and ``presence_rate`` agents/s re-set their presence to
    ``paused``, for ``seconds``. Every event published in the window counts, however late it
    arrives (until ``--quiet`` s pass without one)."""
    args = run.args
    lag = LoopLag().start()
    in_flight: set[asyncio.Task[Any]] = set()
    resident_times: list[tuple[float, float]] = []
    presence_errors: Counter[str] = Counter()
    presence_ok = 0
    completed_in_window = 0
    skipped = 0
    rng = random.Random(1)
    clients = run.residents.client(args.max_in_flight)
    agents_http = httpx.AsyncClient(
        base_url=run.server.url,
        timeout=60.0,
        follow_redirects=False,
        verify=run.residents.context,
    )
    t_end = math.inf

    async def resident() -> None:
        nonlocal completed_in_window
        result = await run.residents.one(clients)
        if result is not None:
            run.waiting += 1
            resident_times.append(result)
            if time.perf_counter() <= t_end:
                completed_in_window += 1

    async def presence(account: AgentAccount) -> None:
        nonlocal presence_ok
        try:
            r = await agents_http.post(
                f"/agent/{TENANT}/presence",
                data={"presence": "paused", "csrf": account.csrf},
                headers={"Cookie": account.cookie},
            )
            if r.status_code == 303:
                presence_ok += 1
            else:
                presence_errors[f"HTTP {r.status_code}"] += 1
        except httpx.HTTPError as exc:
            presence_errors[type(exc).__name__] += 1

    def launch(coro: Any) -> None:
        task = asyncio.create_task(coro)
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    n_res = int(rate * seconds)
    n_pre = int(presence_rate * seconds)
    schedule = sorted(
        [(i / rate, "r") for i in range(n_res)]
        + [((i + 0.5) / presence_rate, "p") for i in range(n_pre)]
    )
    start_wall = time.time()
    rec = run.consoles.record(start_wall, start_wall + seconds)
    before = await sample(run)
    t0 = time.perf_counter()
    t_end = t0 + seconds
    for offset, kind in schedule:
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= args.max_in_flight:
            skipped += 1  # the server is slower than the rate: do not pile up without bound
            continue
        if kind == "r":
            launch(resident())
        else:
            launch(presence(rng.choice(presence_pool)))
    await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
    after = await sample(run)
    window = time.perf_counter() - t0
    unfinished = 0
    if in_flight:
        _, pending = await asyncio.wait(set(in_flight), timeout=args.grace)
        unfinished = len(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    drained = await run.consoles.settle(args.quiet, args.drain_limit)
    loop_lag = await lag.stop()
    await clients.aclose()
    await agents_http.aclose()
    start_lat = sorted(t[0] for t in resident_times)
    landing_lat = sorted(t[1] for t in resident_times)
    out: dict[str, Any] = {
        "label": label,
        "seconds": round(window, 2),
        "waiting_at_start": run.waiting - len(resident_times),
        "residents_per_s_asked": rate,
        "residents_scheduled": n_res,
        "residents_joined": len(resident_times),
        "residents_joined_in_window": completed_in_window,
        "residents_per_s_in_window": round(completed_in_window / window, 1),
        "residents_unfinished_after_grace": unfinished,
        "arrivals_skipped_over_max_in_flight": skipped,
        "resident_errors": dict(run.residents.errors),
        "presence_changes": presence_ok,
        "presence_errors": dict(presence_errors),
        "resident_ms": {
            "start_p50": _ms(start_lat, 50),
            "start_p99": _ms(start_lat, 99),
            "landing_p50": _ms(landing_lat, 50),
            "landing_p99": _ms(landing_lat, 99),
        },
        "drained_s": drained,
        "push": received_summary(rec, window, len(run.accounts)),
        "cpu": cpu_of(before, after),
        "client_loop_lag_ms": loop_lag,
    }
    delivered = out["push"]["deliveries_per_s"]
    if delivered:
        # Everything this process did (residents and tokens included), per delivery: an upper
        # bound of what reading one event costs the client.
        out["client_us_per_delivery"] = round(out["cpu"]["client_cores"] / delivered * 1e6)
    if extra is not None:
        out.update(extra())
    run.residents.errors.clear()
    return out


class OfferDesk:
    """Available agents accept every offer made to them, hold it, then close it (deleting it)."""

    def __init__(self, run: Run, agents: list[AgentAccount], hold: float) -> None:
        self.run = run
        self.mine = {a.agent_id: a for a in agents}
        self.hold = hold
        self.handled = 0
        self.offers = 0
        self.errors: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self.http = httpx.AsyncClient(base_url=run.server.url, timeout=60.0)
        self.open = True

    def on_event(self, account: AgentAccount, name: str, payload: dict[str, Any]) -> None:
        if not self.open or name != "queue" or payload.get("state") != "offered":
            return
        if payload.get("agent_id") != account.agent_id or account.agent_id not in self.mine:
            return
        self.offers += 1
        task = asyncio.create_task(self._handle(account, str(payload["id"])))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _post(self, account: AgentAccount, path: str, **data: str) -> int:
        r = await self.http.post(
            path, data={"csrf": account.csrf, **data}, headers={"Cookie": account.cookie}
        )
        return r.status_code

    async def _handle(self, account: AgentAccount, conversation_id: str) -> None:
        base = f"/agent/{TENANT}/c/{conversation_id}"
        try:
            status = await self._post(account, f"{base}/accept")
            if status != 303:
                self.errors[f"accept: HTTP {status}"] += 1
                return
            await asyncio.sleep(self.hold)
            status = await self._post(account, f"{base}/close")
            if status != 303:
                self.errors[f"close: HTTP {status}"] += 1
                return
            self.handled += 1
            self.run.waiting -= 1
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1

    async def presence(self, value: str) -> int:
        statuses = await asyncio.gather(
            *(
                self._post(a, f"/agent/{TENANT}/presence", presence=value)
                for a in self.mine.values()
            )
        )
        return sum(1 for s in statuses if s == 303)

    async def stop(self) -> None:
        self.open = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.hold + 30):
                await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.aclose()


def _log_phase(p: dict[str, Any]) -> None:
    push, a = p["push"], p["push"]["all"]
    log(
        f"    {a['count']} deliveries ({push['deliveries_per_s']}/s, missing "
        f"{push['deliveries_missing']}): p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, max "
        f"{a['max_ms']} ms; {p['residents_per_s_in_window']} residents/s joined in the window; "
        f"server {p['cpu']['server_cores']} cores, client {p['cpu']['client_cores']} cores"
    )


async def exercise(run: Run) -> dict[str, Any]:
    args = run.args
    out: dict[str, Any] = {}
    run.mem("idle")
    log(f"  logging in {len(run.accounts)} agents ...")
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(8)

    async def one(account: AgentAccount) -> None:
        async with sem:
            await login(run.server.url, account, run.residents.context)

    await asyncio.gather(*(one(a) for a in run.accounts))
    out["login_s"] = round(time.perf_counter() - t0, 2)
    run.mem("agents logged in")

    log(f"  opening {len(run.accounts)} console event streams ({args.sse_client}) ...")
    t0 = time.perf_counter()
    run.consoles.open(run.accounts)
    ready = await run.consoles.wait_ready(60)
    out["consoles_connected"] = ready
    out["consoles_connect_s"] = round(time.perf_counter() - t0, 2)
    if ready != len(run.accounts):
        run.errors[f"only {ready} of {len(run.accounts)} consoles connected"] += 1
        return out
    await asyncio.sleep(2)
    run.mem("consoles connected")
    phases: dict[str, Any] = {}
    out["phases"] = phases

    def steady_args(rate: float) -> dict[str, Any]:
        return {
            "seconds": args.seconds,
            "rate": rate,
            "presence_rate": args.presence_rate,
            "presence_pool": run.accounts,
        }

    async def push(key: str, what: str) -> None:
        """The steady phases at this queue size: the low rate, then the asked rate."""
        for suffix, rate in (("_low", args.low_rate), ("", args.rate)):
            if args.seconds <= 0 or rate <= 0:
                continue
            log(
                f"  push, {what}: {rate:g} residents/s and {args.presence_rate:g} presence "
                f"changes/s for {args.seconds:g} s, agents paused ..."
            )
            label = f"{what}, {rate:g}/s"
            phases[key + suffix] = await steady(run, label=label, **steady_args(rate))
            _log_phase(phases[key + suffix])

    await push("few_waiting", "few waiting")

    log(
        f"  fill to {args.waiting} waiting: over HTTP up to {args.http_fill} "
        f"({args.fill_concurrency} residents at a time), then directly ..."
    )
    f = out["fill"] = await fill(run, args.waiting)
    h = f["http"]
    log(
        f"    over HTTP: {h['conversations']} in {h['seconds']} s ({h['per_s']}/s); landing p50 "
        f"{h.get('first_tenth', {}).get('landing_p50_ms')} ms first tenth, "
        f"{h.get('last_tenth', {}).get('landing_p50_ms')} ms last tenth"
    )
    if f.get("stopped") or run.waiting < args.waiting:
        run.errors[f"fill stopped at {run.waiting} of {args.waiting}: {f.get('stopped')}"] += 1
        return out
    out["states_after_fill"] = await run.local.states()
    await asyncio.sleep(2)
    run.mem("all waiting")
    out["quiet_with_all_waiting"] = await quiet(run, args.quiet_seconds)
    idle_cores = out["quiet_with_all_waiting"]["server_cores"]
    log(
        f"    {run.waiting} waiting; server CPU with nothing happening {idle_cores} cores; "
        "probing places() and tick() in-process ..."
    )
    out["probe_all_waiting"] = await run.local.probe()
    out["probe_all_waiting"]["waiting"] = run.waiting
    out["probe_all_waiting"]["agents"] = len(run.accounts)
    log(f"    {out['probe_all_waiting']}")

    await push("all_waiting", f"{run.waiting} waiting")
    if args.seconds > 0:
        run.mem("after push")
    if run.consoles.alive != len(run.accounts):
        run.errors["console streams ended during the push phases"] += 1

    if args.offer_agents > 0 and args.seconds > 0 and not run.errors:
        desk_agents = run.accounts[: args.offer_agents]
        desk = OfferDesk(run, desk_agents, args.hold)
        run.consoles.on_event = desk.on_event
        log(
            f"  offers: {len(desk_agents)} agents available (accept, hold {args.hold:g} s, "
            f"close), {args.rate:g} residents/s, {args.seconds:g} s ..."
        )
        available = await desk.presence("available")

        def extra() -> dict[str, Any]:
            return {
                "agents_available": available,
                "offers_received": desk.offers,
                "conversations_handled": desk.handled,
                "agent_errors": dict(desk.errors),
            }

        phases["offers"] = await steady(
            run,
            label=f"{run.waiting} waiting, {len(desk_agents)} agents available",
            seconds=args.seconds,
            rate=args.rate,
            presence_rate=0.0,
            presence_pool=[],
            extra=extra,
        )
        await desk.presence("paused")
        await desk.stop()
        run.consoles.on_event = None
        # Offers made near the end of the window are handled after it: count them all.
        phases["offers"]["offers_received"] = desk.offers
        phases["offers"]["conversations_handled"] = desk.handled
        phases["offers"]["agent_errors"] = dict(desk.errors)
        _log_phase(phases["offers"])
        run.mem("after offers")
        if run.consoles.alive != len(run.accounts):
            run.errors["console streams ended during the offers phase"] += 1
    out["console_streams_ended"] = dict(run.consoles.ended)
    out["events_received_total"] = dict(run.consoles.total)
    return out


# --------------------------------------------------------------------------------------------
# The whole run


def settings_for(data_dir: Path, config: Path, database_url: str | None) -> Any:
    from idcontact.settings import load_settings

    overrides: dict[str, Any] = {"data_dir": str(data_dir)}
    if database_url:
        overrides["database_url"] = database_url
    return load_settings(config, overrides)


@dataclass
class Instance:
    """One server of a benchmark, with its agents, as :func:`instance` made it."""

    settings: Any
    server: Any  # flows.Server
    accounts: list[AgentAccount]
    db_pids: Callable[[], Any]
    data_dir: Path


@contextlib.contextmanager
def instance(
    runner: asyncio.Runner,
    result: dict[str, Any],
    *,
    name: str,
    config_text: str,
    agents: int,
    postgres: Any | None,
    server_env: dict[str, str],
    profile_to: Path | None = None,
) -> Iterator[Instance]:
    """A fresh data dir (and PostgreSQL database when ``postgres`` is given), the config,
    ``agents`` enrolled agents and one ``idcontact serve`` process; stopped (by PID) and
    cleaned up again afterwards, also when something fails (the exception propagates).
    Timings, a dead server and the server's warnings go into ``result``."""
    db_name: str | None = None
    with tempfile.TemporaryDirectory(prefix=f"idcontact-bench-{name}-") as tmp:
        data_dir = Path(tmp)
        try:
            database_url: str | None = None
            if postgres is not None:
                db_name = f"idcontact_bench_{name}_{os.getpid()}"
                database_url = runner.run(flows.create_database(postgres.admin_url, db_name))
            config = data_dir / "idcontact.toml"
            config.write_text(config_text)
            settings = settings_for(data_dir, config, database_url)
            log(f"  creating {agents} agents in the database ...")
            t0 = time.perf_counter()
            accounts = runner.run(create_agents(settings, agents))
            result["agents_created_s"] = round(time.perf_counter() - t0, 2)
            result["background_busy_pct_before"] = flows.background_busy_pct()
            port = flows.free_port()
            env = flows.clean_env()
            env["IDCONTACT_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
            if database_url is not None:
                env["IDCONTACT_DATABASE_URL"] = database_url
            env.update(server_env)
            (data_dir / "logs").mkdir()
            t0 = time.perf_counter()
            server = flows.start_server(
                config=config,
                data_dir=data_dir,
                port=port,
                roles=(),
                env=env,
                log_path=data_dir / "logs" / "server.log",
                profile_to=profile_to,
            )
            result["startup_s"] = round(time.perf_counter() - t0, 2)
            db_pids: Callable[[], Any] = flows._no_pids
            if postgres is not None and db_name is not None:
                admin, db = postgres.admin_url, db_name

                async def pids() -> list[int]:
                    return list(await flows.postgres_backend_pids(admin, db))

                db_pids = pids
            try:
                yield Instance(settings, server, accounts, db_pids, data_dir)
                if server.proc.poll() is not None:
                    result.setdefault("errors", []).append("the server process died")
            finally:
                if profile_to is not None:
                    # Writing the profile of many streams takes longer than stop_server waits.
                    server.proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        server.proc.wait(timeout=600)
                flows.stop_server(server)
                warnings = [
                    line
                    for line in flows.log_tail(server.log_path, 1_000_000).splitlines()
                    if '"level": "ERROR"' in line or '"level": "WARNING"' in line
                ]
                if warnings:
                    result["server_log_warnings"] = {"count": len(warnings), "last": warnings[-3:]}
        finally:
            if postgres is not None and db_name is not None:
                try:
                    runner.run(flows.drop_database(postgres.admin_url, db_name))
                except Exception as exc:
                    log(f"  could not drop database {db_name}: {exc}")


def run_all(
    args: argparse.Namespace, runner: asyncio.Runner, postgres: Any | None
) -> dict[str, Any]:
    result: dict[str, Any] = {"database": "postgres" if postgres is not None else "sqlite"}
    try:
        with instance(
            runner,
            result,
            name="console",
            config_text=flows.config_toml(),
            agents=args.consoles,
            postgres=postgres,
            server_env=args.server_env,
            profile_to=args.profile_to,
        ) as inst:
            result.update(
                runner.run(_exercise(args, inst.settings, inst.server, inst.accounts, inst.db_pids))
            )
    except Exception as exc:
        result.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
    return result


async def _exercise(
    args: argparse.Namespace,
    settings: Any,
    server: Any,
    accounts: list[AgentAccount],
    db_pids: Callable[[], Any],
) -> dict[str, Any]:
    consoles = Consoles("127.0.0.1", server.port, args.sse_client)
    residents = Residents(server.url, settings, ssl.create_default_context())
    local = InProcess(settings)
    run = Run(args, settings, server, consoles, residents, local, accounts, db_pids)
    try:
        out = await exercise(run)
    finally:
        await consoles.close()
        await local.close()
    out["memory"] = [m.as_dict() for m in run.memory]
    out["memory_summary"] = memory_summary(run.memory, len(accounts))
    if run.errors:
        out["errors"] = list(run.errors)
    return out


def memory_summary(samples: list[MemorySample], consoles: int) -> dict[str, Any]:
    by = {m.label: m for m in samples}
    out: dict[str, Any] = {}
    idle, logged_in = by.get("idle"), by.get("agents logged in")
    connected, full = by.get("consoles connected"), by.get("all waiting")
    if idle:
        out["idle_mib"] = round(idle.rss / MiB, 1)
    if connected and logged_in and consoles:
        out["consoles_mib"] = round(connected.rss / MiB, 1)
        out["per_console_kib"] = round((connected.rss - logged_in.rss) / consoles / 1024, 1)
    if full and connected and full.waiting:
        out["waiting_mib"] = round(full.rss / MiB, 1)
        out["waiting"] = full.waiting
        out["per_waiting_bytes"] = round((full.rss - connected.rss) / full.waiting)
        fills = [(float(m.waiting), float(m.rss)) for m in samples if m.label.startswith("fill ")]
        # The marginal cost, without the first tenth (warm-up: caches, pools, first pages).
        marginal = slope(fills[1:])
        out["per_waiting_marginal_bytes"] = round(marginal) if marginal is not None else None
    out["peak_mib"] = round(max((m.hwm for m in samples), default=0) / MiB, 1)
    out["max_rss_mib"] = round(max((m.rss for m in samples), default=0) / MiB, 1)
    return out


# --------------------------------------------------------------------------------------------
# Output


def _f(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def render(report: dict[str, Any]) -> str:
    p = report["parameters"]
    m = report["machine"]
    r = report["result"]
    lines = [
        "",
        f"idcontact agent consoles: {p['consoles']} consoles, {p['waiting']} waiting "
        f"conversations, {r.get('database', '?')}",
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}. Consoles and "
        "residents run in this process, on the same CPUs as the server.",
        "",
        "server memory (RSS of the serve process):",
    ]
    head = f"{'when':<22} {'waiting':>8} {'RSS MiB':>8} {'peak MiB':>9} {'threads':>8}"
    lines += [head, "-" * len(head)]
    for s in r.get("memory", []):
        lines.append(
            f"{s['label']:<22} {s['waiting']:>8} {s['rss_mib']:>8.1f} {s['peak_rss_mib']:>9.1f} "
            f"{s['threads']:>8}"
        )
    ms = r.get("memory_summary", {})
    if ms.get("per_console_kib") is not None:
        lines.append(f"per connected console: {ms['per_console_kib']} KiB")
    if "per_waiting_bytes" in ms:
        lines.append(
            f"per waiting conversation: {ms['per_waiting_bytes']} bytes ((all waiting - consoles "
            f"connected) / {ms['waiting']}); marginal, the slope over the fill after its first "
            f"tenth: {_f(ms.get('per_waiting_marginal_bytes'), '.0f')} bytes"
        )
    rss_ok = ms.get("max_rss_mib", 0) * MiB <= TARGET_RSS_BYTES
    lines.append(
        f"max RSS {_f(ms.get('max_rss_mib'))} MiB (peak {_f(ms.get('peak_mib'))} MiB): "
        f"target <= 1024 MiB {'ok' if rss_ok else 'MISS'}"
    )
    f = r.get("fill")
    if f:
        h = f["http"]
        ft, lt = h.get("first_tenth", {}), h.get("last_tenth", {})
        lines += [
            "",
            f"fill {f['from']} -> {f.get('reached', '?')} waiting: {h['conversations']} over HTTP "
            f"in {h['seconds']} s ({_f(h['per_s'])}/s, {h['concurrency']} at a time, server "
            f"{h['cpu']['server_cores']} cores); landing page p50 {ft.get('landing_p50_ms')} ms "
            f"in its first tenth, {lt.get('landing_p50_ms')} ms in its last",
        ]
        d = f.get("direct")
        if d:
            lines.append(
                f"   then {d['conversations']} directly in this process in {d['seconds']} s "
                "(same Conversations/QueueService code, no HTTP, no events)"
            )
    q = r.get("quiet_with_all_waiting")
    if q:
        lines.append(
            f"with {r['memory_summary'].get('waiting', '?')} waiting and nothing happening, the "
            f"server uses {q['server_cores']} cores (its queue tick, at least once a second)"
        )
    pr = r.get("probe_all_waiting")
    if pr:
        lines.append(
            f"in-process probe at {pr['waiting']} waiting, {pr['agents']} agents: "
            f"QueueService.places() {pr['places_ms']} ms, tick() {pr['tick_ms']} ms (wall)"
        )
    lines += [
        "",
        "push latency = console receipt - server publish time, every event at every console:",
    ]
    head = (
        f"{'phase':<30} {'deliv.':>7} {'miss':>6} {'deliv/s':>7} {'chg/s':>6} {'p50':>7} "
        f"{'p95':>7} {'p99':>8} {'max':>8} {'p99<=100':>8} {'srv':>5} {'cli':>5} {'oth':>5} "
        f"{'lag99':>6}"
    )
    lines += [head, "-" * len(head)]
    rows: list[tuple[str, dict[str, Any]]] = []
    if f and f["http"]["conversations"]:
        rows.append(("fill over HTTP, back to back", f["http"]))
    phases = r.get("phases", {})
    rows += [(ph["label"], ph) for ph in phases.values()]
    for label, ph in rows:
        push, a = ph["push"], ph["push"]["all"]
        ok = (
            a["p99_ms"] is not None
            and a["p99_ms"] <= TARGET_P99_MS
            and not push["deliveries_missing"]
        )
        lines.append(
            f"{label[:30]:<30} {a['count']:>7} {push['deliveries_missing']:>6} "
            f"{push['deliveries_per_s']:>7.0f} {push['queue_events_per_s']:>6.1f} "
            f"{_f(a['p50_ms']):>7} {_f(a['p95_ms']):>7} {_f(a['p99_ms']):>8} "
            f"{_f(a['max_ms']):>8} {('ok' if ok else 'MISS'):>8} "
            f"{_f(ph['cpu']['server_cores'], '.2f'):>5} {_f(ph['cpu']['client_cores'], '.2f'):>5} "
            f"{_f(ph['cpu'].get('other_cores'), '.2f'):>5} {_f(ph['client_loop_lag_ms']['p99']):>6}"
        )
    lines.append(
        "(deliv. = deliveries received; miss = published in the window but never received; "
        "chg/s = queue changes published/s;"
    )
    lines.append(
        " srv/cli/oth = cores used by the server, this client and anything else on the machine;"
        " lag99 = p99 ms the client's event loop woke late)"
    )
    for ph in phases.values():
        rm = ph["resident_ms"]
        lines.append(
            f"   {ph['label']}: {ph['residents_joined_in_window']} residents joined in the "
            f"window ({ph['residents_per_s_in_window']}/s of {ph['residents_per_s_asked']:g} "
            f"asked), landing p50/p99 {rm['landing_p50']}/{rm['landing_p99']} ms; queue "
            f"p99 {ph['push']['queue']['p99_ms']} ms, agent (presence) p99 "
            f"{_f(ph['push']['agent']['p99_ms'])} ms; fan-out spread p50/p99 "
            f"{ph['push']['fanout_spread_ms']['p50']}/{ph['push']['fanout_spread_ms']['p99']} ms"
        )
        if ph.get("arrivals_skipped_over_max_in_flight") or ph.get(
            "residents_unfinished_after_grace"
        ):
            lines.append(
                f"   !! {ph['arrivals_skipped_over_max_in_flight']} arrivals skipped "
                f"({p['max_in_flight']} already in flight), "
                f"{ph['residents_unfinished_after_grace']} unfinished {p['grace_s']:g} s after "
                "the window: the server is slower than the rate"
            )
        errors = {**ph.get("resident_errors", {}), **ph.get("presence_errors", {})}
        if errors:
            lines.append(f"   !! request errors (not counted as a failed run): {errors}")
        if "conversations_handled" in ph:
            lines.append(
                f"   {ph['agents_available']} agents available: {ph['offers_received']} offers, "
                f"{ph['conversations_handled']} accepted and closed, errors "
                f"{ph['agent_errors'] or 0}"
            )
    measured = [ph for ph in phases.values() if "client_us_per_delivery" in ph]
    if measured:
        # The busiest phase: elsewhere fixed costs (residents, tokens) dominate the ratio.
        busiest = max(measured, key=lambda ph: ph["push"]["deliveries_per_s"])
        cost = busiest["client_us_per_delivery"]
        lines.append(
            f"   client: {cost} us CPU per delivery in the busiest phase ({busiest['label']}; "
            f"residents included), so this one process could read ~{1e6 / cost:,.0f} "
            "deliveries/s on its core"
        )
    noisy = [label for label, ph in rows if (ph["cpu"].get("other_cores") or 0) > 0.25]
    if (r.get("background_busy_pct_before") or 0) > 15:
        noisy.insert(0, "before the start")
    if noisy:
        lines.append(
            f"   !! other workloads used the CPUs ({', '.join(noisy)}): the server had less than "
            "its share; rerun on a quiet machine"
        )
    lines += [
        "",
        f"targets (informational, never fail the run): push p99 <= {TARGET_P99_MS:.0f} ms with "
        "nothing missing, RSS <= 1 GiB",
    ]
    warnings = r.get("server_log_warnings")
    if warnings:
        lines.append(
            f"!! the server logged {warnings['count']} warnings or errors (the last ones are in "
            "the JSON, result.server_log_warnings)"
        )
    lines += [f"note: {note}" for note in report.get("notes", [])]
    lines += [f"!! {err}" for err in r.get("errors", [])]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Agent console benchmark of idcontact (see bench/README.md)."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1,000 waiting (500 over HTTP), 5 s phases; still 200 consoles",
    )
    parser.add_argument("--waiting", type=int, help="conversations waiting (default 5000)")
    parser.add_argument(
        "--http-fill",
        type=int,
        help="fill over HTTP up to this many waiting, the rest directly in this process "
        "(default 1000, quick 500; >= --waiting: all over HTTP)",
    )
    parser.add_argument("--consoles", type=int, default=200, help="agent consoles (default 200)")
    parser.add_argument(
        "--seconds", type=float, help="seconds per steady phase (default 10, quick 5; 0 skips)"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="residents/s arriving (50)")
    parser.add_argument(
        "--low-rate",
        type=float,
        default=2.0,
        help="residents/s of the extra phase well below capacity, before each --rate phase "
        "(default 2; 0 skips)",
    )
    parser.add_argument(
        "--presence-rate", type=float, default=2.0, help="presence changes/s (default 2)"
    )
    parser.add_argument(
        "--offer-agents",
        type=int,
        default=20,
        help="agents made available in the offers phase (0 skips it; default 20)",
    )
    parser.add_argument(
        "--hold", type=float, default=5.0, help="seconds an agent holds an accepted conversation"
    )
    parser.add_argument(
        "--fill-concurrency", type=int, default=8, help="residents joining at once in the fill"
    )
    parser.add_argument(
        "--fill-timeout", type=float, default=3600.0, help="give up the fill after this many s"
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=3.0,
        help="a phase ends when no event of its window arrived for this many s (default 3)",
    )
    parser.add_argument(
        "--drain-limit", type=float, default=120.0, help="wait at most this long for late events"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="seconds residents still in flight after a window may take before being cancelled",
    )
    parser.add_argument(
        "--max-in-flight", type=int, default=100, help="skip arrivals beyond this many at once"
    )
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=5.0,
        help="seconds of the server-CPU sample with everything waiting and nothing happening",
    )
    parser.add_argument(
        "--sse-client",
        choices=("raw", "httpx"),
        default="raw",
        help="how consoles read their streams: plain asyncio (default, cheapest) or httpx",
    )
    parser.add_argument("--postgres", action="store_true", help="run on PostgreSQL")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server (repeatable)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the server under pyinstrument (as bench/flows.py --profile); writes "
        "bench/results/profile-console-<stamp>.txt and .pstats; results are not written",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.waiting = args.waiting or (1000 if args.quick else 5000)
    if args.http_fill is None:
        args.http_fill = 500 if args.quick else 1000
    if args.seconds is None:
        args.seconds = 5.0 if args.quick else 10.0
    if args.offer_agents > args.consoles:
        parser.error("--offer-agents cannot exceed --consoles")
    args.server_env = flows.server_env(parser, args.server_env)
    return args


@contextlib.contextmanager
def postgres_if_asked(
    args: argparse.Namespace, runner: asyncio.Runner
) -> Iterator[tuple[Any | None, str]]:
    if not args.postgres:
        yield None, "not asked (--postgres)"
        return
    wanted = [types.SimpleNamespace(database="postgres")]
    with flows.postgres_for(wanted, argparse.Namespace(no_postgres=False), runner) as found:
        yield found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.profile_to = RESULTS_DIR / f"profile-console-{stamp}.txt" if args.profile else None
    report: dict[str, Any] = {
        "benchmark": "idcontact agent consoles",
        "started_utc": stamp,
        "machine": flows.machine_info(),
        "parameters": {
            "quick": args.quick,
            "consoles": args.consoles,
            "waiting": args.waiting,
            "http_fill": args.http_fill,
            "seconds_per_phase": args.seconds,
            "residents_per_s": args.rate,
            "low_rate_residents_per_s": args.low_rate,
            "presence_changes_per_s": args.presence_rate,
            "offer_agents": args.offer_agents,
            "hold_s": args.hold,
            "fill_concurrency": args.fill_concurrency,
            "quiet_s": args.quiet,
            "grace_s": args.grace,
            "max_in_flight": args.max_in_flight,
            "sse_client": args.sse_client,
            "server_env": args.server_env,
            "profiled": args.profile,
            "purpose": flows.PURPOSE,
            "agent_passwords": "argon2id time_cost=1, 8 KiB (bench shortcut for the logins)",
        },
        "targets": {"push_p99_ms": TARGET_P99_MS, "rss_bytes": TARGET_RSS_BYTES},
        "notes": [],
    }
    log(f"idcontact console benchmark ({'quick' if args.quick else 'full'}), {stamp}")
    report["parameters"]["loadgen_tweaks"] = flows.make_loadgen_cheap()
    with asyncio.Runner(loop_factory=flows.loop_factory()) as runner:
        with postgres_if_asked(args, runner) as (postgres, reason):
            if args.postgres and postgres is None:
                report["result"] = {"errors": [f"PostgreSQL unavailable: {reason}"]}
            else:
                if postgres is not None:
                    report["postgres"] = {"note": postgres.note}
                report["result"] = run_all(args, runner, postgres)
    if args.profile:
        report["notes"].append("server profiled: slower than normal, RSS includes the profiler")
    report["finished_utc"] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    print(render(report), flush=True)
    if args.profile_to is not None:
        flows.render_profiles([args.profile_to])
    if not args.no_write and not args.profile:
        stamped, latest = flows.write_results(report, stamp, "console")
        log(f"\nwrote {stamped.relative_to(REPO)} and {latest.relative_to(REPO)}")
    if report["result"].get("errors"):
        log("\nFAILED: the run itself failed (see above); missed targets never fail it")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
