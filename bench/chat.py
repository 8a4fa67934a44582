"""Chat benchmark (issue #7, point 6): 2,000 chat conversations open at once on one instance.

Every conversation has both WebSockets open at the same time: the resident's
(``/comm/chat/c/<id>/ws``) and the agent's (``/agent/<tenant>/c/<id>/chat``). Then both sides
write, each conversation one message every ``--interval`` seconds (alternating sides, spread
at random over the interval), for ``--duration`` seconds. Reported:

- **message latency**: from sending a frame on one socket to the ``message`` frame arriving on
  the other socket (p50/p95/p99/max; target p99 <= 50 ms), messages/s and errors (error frames,
  closed sockets, messages that never arrived);
- **memory per open conversation**: the server's RSS (``/proc/<pid>/status``) with all
  conversations open minus before them, divided by their number (both sockets included);
- the server's CPU time (per message, and cores), and the set-up time for all conversations.

Against one real ``idcontact serve`` (uvicorn) process on 127.0.0.1 with a fresh data dir;
``--setup production`` (default): PostgreSQL and Redis (the event bus), as ``flows.py`` finds
PostgreSQL and ``$IDCONTACT_TEST_REDIS_URL``; ``--setup embedded``: the SQLite default.

    .venv/bin/python bench/chat.py --quick            # 200 conversations, 10 s
    .venv/bin/python bench/chat.py                    # 2,000 conversations, 30 s
    .venv/bin/python bench/chat.py --setup production --setup embedded
    .venv/bin/python bench/chat.py --help

Results: bench/results/chat-<UTC stamp>.json and chat-latest.json (see bench/README.md).
The exit status is 1 only when the run itself failed (the server died, conversations could not
be opened); missed targets never fail it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import resource
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks
import console

flows = console.flows
log = flows.log
REPO: Path = flows.REPO
TENANT = console.TENANT
MiB = 1024 * 1024
TARGET_P99_MS = 50.0
REDIS_ENV = "IDCONTACT_TEST_REDIS_URL"
REDIS_SCRIPT = REPO / "scripts" / "services" / "redis"
SETUPS = {
    "production": "PostgreSQL + Redis event bus (data keys in PostgreSQL: keystore auto)",
    "embedded": "SQLite (data file + key file), in-process event bus: the default",
}


# --------------------------------------------------------------------------------------------
# Configuration and limits


def config_text(max_chats: int) -> str:
    """``flows.py``'s configuration plus the chat channel, and a queue in which one agent may
    hold ``max_chats`` chats; offers last long enough for the bench to accept every one."""
    return flows.config_toml() + (
        "\n[[comm_methods]]\n"
        'tag = "chat"\nname = "Chatten"\nplugin = "chat"\nchannel = "chat"\n\n'
        "[[queues]]\n"
        f'tag = "general"\nmax_chats = {max_chats}\noffer_seconds = 600\n'
    )


def raise_open_files(needed: int) -> dict[str, Any]:
    """Raise this process's soft limit of open files to what ``needed`` sockets take (the
    server, started afterwards, inherits it). Returns what it was and is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out: dict[str, Any] = {"needed": needed, "soft_before": soft, "hard": hard}
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    out["soft"] = soft
    out["enough"] = soft == resource.RLIM_INFINITY or soft >= needed
    return out


def find_redis() -> tuple[str | None, str]:
    """The Redis URL for the event bus, or None and why there is none (the bench does not
    start Redis: ``bash scripts/services/redis start``)."""
    url = os.environ.get(REDIS_ENV, "").strip()
    if url:
        return url, f"from ${REDIS_ENV}"
    status = subprocess.run(["bash", str(REDIS_SCRIPT), "status"], capture_output=True)
    if status.returncode != 0:
        return None, f"${REDIS_ENV} is not set and scripts/services/redis is not running"
    got = subprocess.run(["bash", str(REDIS_SCRIPT), "url"], capture_output=True, text=True)
    url = got.stdout.strip()
    return (url, "scripts/services/redis") if url else (None, "scripts/services/redis url failed")


# --------------------------------------------------------------------------------------------
# The two sockets of one conversation


@dataclass
class Sent:
    at: float  # perf_counter when the frame was sent
    side: str
    recorded: bool  # inside the measured window
    delivered: bool = False
    echoed: bool = False


@dataclass
class Tally:
    """Everything the sockets saw, for the whole run."""

    pending: dict[str, Sent] = field(default_factory=dict)
    delivery: list[float] = field(default_factory=list)  # to the other side, in the window
    echo: list[float] = field(default_factory=list)  # back to the sender (numbered), in the window
    sent_in_window: int = 0
    outstanding: int = 0  # recorded messages not yet delivered and echoed
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    errors: Counter[str] = field(default_factory=Counter)
    closing: bool = False

    def new_phase(self) -> None:
        """Count afresh (messages of an earlier phase still pending stay unrecorded)."""
        for sent in self.pending.values():
            sent.recorded = False
        self.delivery, self.echo = [], []
        self.sent_in_window = self.outstanding = 0
        self.settled.clear()
        self.errors = Counter()

    def sending(self, token: str, at: float, side: str, recorded: bool) -> None:
        self.pending[token] = Sent(at, side, recorded)
        if recorded:
            self.sent_in_window += 1
            self.outstanding += 1
            self.settled.clear()

    def arrived(self, socket: Socket, frame: dict[str, Any], now: float) -> None:
        token = str(frame.get("text", "")).split(" ", 1)[0]
        sent = self.pending.get(token)
        if sent is None:
            self.errors["a message frame that was never sent (or arrived twice)"] += 1
            return
        if frame.get("from") != sent.side:
            self.errors["a message frame with the wrong sender"] += 1
        if socket.side != sent.side:
            sent.delivered = True
            if sent.recorded:
                self.delivery.append(now - sent.at)
        else:
            sent.echoed = True
            if sent.recorded:
                self.echo.append(now - sent.at)
        if sent.delivered and sent.echoed:
            del self.pending[token]
            if sent.recorded:
                self.outstanding -= 1
                if not self.outstanding:
                    self.settled.set()


class Socket:
    """One side's WebSocket; a task reads every frame from it."""

    def __init__(self, side: str, ws: ClientConnection, tally: Tally) -> None:
        self.side = side
        self.ws = ws
        self.tally = tally
        self.state = ""
        self.seen: list[str] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "message":
                    self.tally.arrived(self, frame, now)
                elif kind == "state":
                    self.state = str(frame.get("state"))
                    self.seen.append(self.state)
                    self._changed.set()
                elif kind == "error":
                    self.tally.errors[f"{self.side}: error frame {frame.get('error')}"] += 1
        except ConnectionClosed as exc:
            if not self.tally.closing:
                self.tally.errors[f"{self.side} socket closed: {exc}"[:120]] += 1
        else:  # a clean close by the server, unasked
            if not self.tally.closing:
                self.tally.errors[f"{self.side} socket closed with {self.ws.close_code}"] += 1
        finally:
            self._changed.set()

    async def wait_state(self, wanted: set[str], within: float) -> str:
        async with asyncio.timeout(within):
            while self.state not in wanted:
                if self.task.done():
                    raise RuntimeError(f"{self.side} socket closed in state {self.state!r}")
                self._changed.clear()
                await self._changed.wait()
        return self.state

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(Exception):
            await self.task


@dataclass
class Chat:
    index: int
    conversation_id: str
    resident: Socket
    agent: Socket


# --------------------------------------------------------------------------------------------
# Opening the conversations


@dataclass
class Opener:
    """Opens conversations the way browsers and agents do: the resident starts (``POST /start``
    with a token, comm method ``chat``), opens the page (joins the queue) and the chat socket;
    the dispatcher offers the conversation to an available agent, who accepts (``POST
    .../accept``) and opens the agent's socket.

    Bench shortcut: which agent got an offer is read from the database (one row by id) rather
    than from every agent's console stream, where each queue change goes to all consoles.
    """

    base: str
    ws_base: str
    residents: Any  # console.Residents
    accounts: dict[str, Any]  # agent id -> console.AgentAccount
    db: Any  # idcontact.storage.db.Database on the server's database
    tally: Tally
    compression: str | None
    http: httpx.AsyncClient
    steps: dict[str, list[float]] = field(
        default_factory=lambda: {
            k: [] for k in ("join", "resident_ws", "offer", "accept", "agent_ws")
        }
    )
    errors: Counter[str] = field(default_factory=Counter)

    async def agent_of(self, conversation_id: str) -> str | None:
        from sqlalchemy import select

        from idcontact.storage.db import conversations

        def work(conn: Any) -> str | None:
            return conn.execute(
                select(conversations.c.agent_id).where(conversations.c.id == conversation_id)
            ).scalar()

        found: str | None = await self.db.run(work)
        return found

    async def socket(self, side: str, path: str, headers: dict[str, str] | None = None) -> Socket:
        ws = await connect(
            self.ws_base + path,
            origin=self.base if side == "agent" else None,  # type: ignore[arg-type]
            additional_headers=headers,
            compression=self.compression,
            ping_interval=None,  # browsers do not ping; the server does, and we answer
            open_timeout=60,
            max_queue=None,
        )
        return Socket(side, ws, self.tally)

    async def one(self, index: int) -> Chat | None:
        stamps = [time.perf_counter()]
        joined = await self.residents.join(self.http, "chat")
        if joined is None:
            self.errors["resident: start or page failed"] += 1
            return None
        conversation_id = joined[0].rsplit("/", 1)[1]
        resident: Socket | None = None
        agent: Socket | None = None
        holder: Any = None  # the agent, once accepted
        stage = "resident socket"
        try:
            stamps.append(time.perf_counter())
            resident = await self.socket("resident", f"/comm/chat/c/{conversation_id}/ws")
            await resident.wait_state({"waiting", "offered"}, 60)
            stamps.append(time.perf_counter())
            stage = "offer"
            await resident.wait_state({"offered"}, 120)
            stamps.append(time.perf_counter())
            stage = "accept"
            agent_id = await self.agent_of(conversation_id)
            account = self.accounts.get(agent_id or "")
            if account is None:
                raise RuntimeError("offered to an agent the bench does not know")
            accepted = await self.http.post(
                f"{self.base}/agent/{TENANT}/c/{conversation_id}/accept",
                data={"csrf": account.csrf},
                headers={"Cookie": account.cookie},
            )
            if accepted.status_code != 303:
                raise RuntimeError(f"accept: HTTP {accepted.status_code}")
            holder = account
            stamps.append(time.perf_counter())
            stage = "agent socket"
            agent = await self.socket(
                "agent",
                f"/agent/{TENANT}/c/{conversation_id}/chat",
                {"Cookie": account.cookie},
            )
            await agent.wait_state({"connected"}, 60)
            await resident.wait_state({"connected"}, 60)
            stamps.append(time.perf_counter())
        except Exception as exc:
            kind = f"{stage}: {type(exc).__name__} {exc}"[:120]
            if not self.errors[kind]:
                seen = {s.side: s.seen for s in (resident, agent) if s is not None}
                log(
                    f"    !! opening a conversation failed: {kind}; states the sockets were told: "
                    f"{seen} (counted, the bench goes on)"
                )
            self.errors[kind] += 1
            for s in (resident, agent):
                if s is not None:
                    await s.close()
            # Ended, so it holds no agent's chat slot: by the agent once accepted (the
            # resident's end would leave it in wrap-up, and the agent unavailable).
            with contextlib.suppress(httpx.HTTPError):
                if holder is None:
                    await self.http.post(joined[0] + "/end")
                else:
                    await self.http.post(
                        f"{self.base}/agent/{TENANT}/c/{conversation_id}/close",
                        data={"csrf": holder.csrf},
                        headers={"Cookie": holder.cookie},
                    )
            return None
        for name, (a, b) in zip(self.steps, itertools.pairwise(stamps), strict=False):
            self.steps[name].append(b - a)
        return Chat(index, conversation_id, resident, agent)


def rss(pid: int) -> int:
    return console.proc_status(pid).get("VmRSS", 0)


@dataclass
class MemoryLog:
    pid: int
    samples: list[dict[str, Any]] = field(default_factory=list)

    def take(self, label: str, open_now: int) -> int:
        status = console.proc_status(self.pid)
        value = status.get("VmRSS", 0)
        self.samples.append(
            {
                "label": label,
                "open": open_now,
                "rss_bytes": value,
                "rss_mib": round(value / MiB, 1),
                "peak_rss_mib": round(status.get("VmHWM", 0) / MiB, 1),
                "threads": status.get("Threads", 0),
            }
        )
        return value


async def open_all(
    opener: Opener, count: int, concurrency: int, mem: MemoryLog
) -> tuple[list[Chat], float]:
    """Open ``count`` conversations, ``concurrency`` at a time; RSS at every tenth."""
    chats: list[Chat] = []
    marks = {max(1, round(count * i / 10)) for i in range(1, 11)}
    claimed = 0
    failures = 0
    progress = time.perf_counter()
    t0 = progress

    async def worker() -> None:
        nonlocal claimed, failures, progress
        while claimed < count and failures <= 50:
            index = claimed
            claimed += 1
            chat = await opener.one(index)
            if chat is None:
                failures += 1
                claimed -= 1  # given back
                continue
            chats.append(chat)
            if len(chats) in marks:
                mem.take(f"open {len(chats)}", len(chats))
            if time.perf_counter() - progress > 15:
                progress = time.perf_counter()
                log(f"    {len(chats)} open ...")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return chats, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Talking


FILLER = "Goedemiddag, ik heb een vraag over mijn verhuizing naar een andere gemeente."


async def talk(
    chats: list[Chat],
    tally: Tally,
    *,
    interval: float,
    warmup: float,
    duration: float,
    prefix: str = "",
    seed: int = 7,
) -> dict[str, Any]:
    """Each conversation sends a message every ``interval`` s, alternating sides, from a random
    phase (open loop: sending never waits for an answer). Messages sent in the window
    [warmup, warmup + duration) are measured; then wait until they all arrived (at most 15 s)."""
    rng = random.Random(seed)
    t0 = time.perf_counter() + 0.5
    window = (t0 + warmup, t0 + warmup + duration)
    send_errors: Counter[str] = Counter()

    async def one(chat: Chat, phase: float, first: str) -> None:
        side = first
        n = 0
        due = t0 + phase
        while due < window[1]:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            token = f"{prefix}{chat.index}.{n}"
            socket = chat.resident if side == "resident" else chat.agent
            now = time.perf_counter()
            recorded = window[0] <= now < window[1]
            tally.sending(token, now, side, recorded)
            try:
                await socket.ws.send(json.dumps({"type": "message", "text": f"{token} {FILLER}"}))
            except ConnectionClosed:
                send_errors[f"{side}: send on a closed socket"] += 1
                return
            side = "agent" if side == "resident" else "resident"
            n += 1
            due += interval

    tasks = [
        asyncio.create_task(one(c, rng.uniform(0, interval), rng.choice(("resident", "agent"))))
        for c in chats
    ]
    await asyncio.gather(*tasks)
    t_sent = time.perf_counter()
    if tally.outstanding:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await tally.settled.wait()
    undelivered = sum(1 for s in tally.pending.values() if s.recorded and not s.delivered)
    unechoed = sum(1 for s in tally.pending.values() if s.recorded and not s.echoed)
    tally.errors.update(send_errors)
    return {
        "window": window,
        "drained_s": round(time.perf_counter() - t_sent, 2),
        "undelivered": undelivered,
        "unechoed": unechoed,
    }


# --------------------------------------------------------------------------------------------
# One set-up


async def talk_phase(
    args: argparse.Namespace,
    chats: list[Chat],
    tally: Tally,
    sample: Callable[[], Awaitable[Any]],
    interval: float,
    number: int,
    result: dict[str, Any],
) -> dict[str, Any]:
    """One talk at one rate, with its latency, errors and CPU."""
    tally.new_phase()
    rate = len(chats) / interval
    log(
        f"  talking: {len(chats)} conversations, one message every {interval:g} s each "
        f"(~{rate:.0f} messages/s), {args.warmup:g} s warm-up + {args.duration:g} s ..."
    )
    lag = console.LoopLag().start()
    talking = asyncio.create_task(
        talk(
            chats,
            tally,
            interval=interval,
            warmup=args.warmup,
            duration=args.duration,
            prefix=f"{number}.",
        )
    )
    # CPU over the measured window only.
    await asyncio.sleep(0.5 + args.warmup)
    cpu2 = await sample()
    await asyncio.sleep(args.duration)
    cpu3 = await sample()
    talked = await talking
    loop_lag = await lag.stop()
    delivery = sorted(tally.delivery)
    msg_out: dict[str, Any] = {
        "sent": tally.sent_in_window,
        "delivered": len(delivery),
        "messages_per_s": round(tally.sent_in_window / args.duration, 1),
        "asked_per_s": round(rate, 1),
        "latency": console.latency_summary(delivery),
        "echo_latency": console.latency_summary(tally.echo),
        "undelivered": talked["undelivered"],
        "unechoed": talked["unechoed"],
        "drained_s": talked["drained_s"],
        "errors": dict(tally.errors),
        "cpu": console.cpu_of(cpu2, cpu3),
        "client_loop_lag_ms": loop_lag,
    }
    if tally.sent_in_window:
        server_cpu = cpu3.server_cpu - cpu2.server_cpu
        msg_out["server_cpu_ms_per_message"] = round(server_cpu / tally.sent_in_window * 1000, 2)
        # Minus what the server spends anyway (measured with nobody writing).
        base = result["quiet"]["server_cores"] * (cpu3.wall - cpu2.wall)
        msg_out["server_cpu_ms_per_message_above_quiet"] = round(
            (server_cpu - base) / tally.sent_in_window * 1000, 2
        )
        if cpu3.db_cpu:
            db_cpu = sum(c - cpu2.db_cpu.get(pid, 0.0) for pid, c in cpu3.db_cpu.items() if c == c)
            msg_out["db_cpu_ms_per_message"] = round(db_cpu / tally.sent_in_window * 1000, 2)
    lat = msg_out["latency"]
    log(
        f"    {msg_out['sent']} sent ({msg_out['messages_per_s']}/s), latency p50 "
        f"{lat['p50_ms']} p95 {lat['p95_ms']} p99 {lat['p99_ms']} max {lat['max_ms']} ms; "
        f"undelivered {msg_out['undelivered']}, errors {msg_out['errors'] or 0}; server "
        f"{msg_out['cpu']['server_cores']} cores, client {msg_out['cpu']['client_cores']}"
    )
    msg_out["interval_s"] = interval
    return msg_out


async def exercise(args: argparse.Namespace, inst: Any, setup: str, result: dict[str, Any]) -> None:
    from idcontact.storage.db import Database

    server = inst.server
    mem = MemoryLog(server.proc.pid)
    tally = Tally()
    context = ssl.create_default_context()
    residents = console.Residents(server.url, inst.settings, context)
    db = Database(inst.settings.resolved_database_url)
    limits = httpx.Limits(max_connections=args.setup_concurrency * 2)
    http = httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits, verify=context)
    opener = Opener(
        base=server.url,
        ws_base=server.url.replace("http://", "ws://", 1),
        residents=residents,
        accounts={a.agent_id: a for a in inst.accounts},
        db=db,
        tally=tally,
        compression=None if args.no_compression else "deflate",
        http=http,
    )
    chats: list[Chat] = []

    async def sample() -> Any:
        return flows.Sample.take([server], await inst.db_pids())

    try:
        mem.take("idle", 0)
        log(f"  logging in {len(inst.accounts)} agents and making them available ...")
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(8)

        async def ready(account: Any) -> None:
            async with sem:
                await console.login(server.url, account, context)
                r = await http.post(
                    f"{server.url}/agent/{TENANT}/presence",
                    data={"presence": "available", "csrf": account.csrf},
                    headers={"Cookie": account.cookie},
                )
                if r.status_code != 303:
                    raise RuntimeError(f"presence of {account.username}: HTTP {r.status_code}")

        await asyncio.gather(*(ready(a) for a in inst.accounts))
        result["agents_ready_s"] = round(time.perf_counter() - t0, 2)
        await asyncio.sleep(1)
        before_open = mem.take("agents available", 0)

        log(
            f"  opening {args.conversations} conversations ({args.setup_concurrency} at a time): "
            "resident start + page + socket, offer, accept, agent socket ..."
        )
        cpu0 = await sample()
        chats, seconds = await open_all(opener, args.conversations, args.setup_concurrency, mem)
        cpu1 = await sample()
        setup_out: dict[str, Any] = {
            "opened": len(chats),
            "seconds": round(seconds, 1),
            "per_s": round(len(chats) / seconds, 1) if seconds else None,
            "concurrency": args.setup_concurrency,
            "errors": dict(opener.errors + residents.errors),
            "step_ms": {
                name: {"p50": console._ms(sorted(v), 50), "p99": console._ms(sorted(v), 99)}
                for name, v in opener.steps.items()
            },
            "cpu": console.cpu_of(cpu0, cpu1),
        }
        if chats:
            setup_out["server_cpu_ms_per_conversation"] = round(
                (cpu1.server_cpu - cpu0.server_cpu) / len(chats) * 1000, 1
            )
        result["setup"] = setup_out
        log(
            f"    {len(chats)} open in {setup_out['seconds']} s ({setup_out['per_s']}/s); "
            f"errors {setup_out['errors'] or 0}"
        )
        if len(chats) < args.conversations:
            result.setdefault("errors", []).append(
                f"only {len(chats)} of {args.conversations} conversations opened"
            )
            if not chats:
                return
        await asyncio.sleep(2)
        all_open = mem.take("all open", len(chats))
        fills = [
            (float(s["open"]), float(s["rss_bytes"]))
            for s in mem.samples
            if s["label"].startswith("open ")
        ]
        marginal = console.slope(fills[1:])
        result["memory_summary"] = {
            "before_mib": round(before_open / MiB, 1),
            "all_open_mib": round(all_open / MiB, 1),
            "per_conversation_kib": round((all_open - before_open) / len(chats) / 1024, 1),
            "per_conversation_marginal_kib": (
                round(marginal / 1024, 1) if marginal is not None else None
            ),
        }
        log(
            f"    RSS {result['memory_summary']['before_mib']} -> "
            f"{result['memory_summary']['all_open_mib']} MiB: "
            f"{result['memory_summary']['per_conversation_kib']} KiB per open conversation"
        )

        # What the server costs with everything open and nobody writing (its own timers: the
        # queue tick, keep-alive pings), so the talk's CPU can be split into base and messages.
        quiet0 = await sample()
        await asyncio.sleep(args.quiet)
        quiet1 = await sample()
        result["quiet"] = {"seconds": args.quiet, **console.cpu_of(quiet0, quiet1)}
        log(f"    nobody writing: server {result['quiet']['server_cores']} cores")

        result["phases"] = []
        for number, interval in enumerate(args.interval):
            phase = await talk_phase(args, chats, tally, sample, interval, number, result)
            result["phases"].append(phase)
        mem.take("after talking", len(chats))
        if server.proc.poll() is not None:
            result.setdefault("errors", []).append("the server process died")
    finally:
        tally.closing = True
        t0 = time.perf_counter()
        sem2 = asyncio.Semaphore(200)

        async def close(chat: Chat) -> None:
            async with sem2:
                await chat.agent.close()
                await chat.resident.close()

        await asyncio.gather(*(close(c) for c in chats))
        if chats:
            result["close_s"] = round(time.perf_counter() - t0, 2)
            await asyncio.sleep(2)
            mem.take("sockets closed", 0)
        result["memory"] = mem.samples
        await http.aclose()
        await db.dispose()


def run_setup(
    args: argparse.Namespace, runner: asyncio.Runner, setup: str, postgres: Any | None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "setup": setup,
        "description": SETUPS[setup],
        "database": "postgres" if postgres is not None else "sqlite",
    }
    server_env = dict(args.server_env)
    if setup == "production":
        server_env.setdefault("IDCONTACT_REDIS_URL", args.redis_url)
        result["event_bus"] = "redis"
    else:
        result["event_bus"] = "local"
    result["keystore"] = server_env.get("IDCONTACT_KEYSTORE", "auto")
    agents = math.ceil(args.conversations / args.max_chats)
    result["agents"] = agents
    result["max_chats"] = args.max_chats
    try:
        with console.instance(
            runner,
            result,
            name="chat",
            config_text=config_text(args.max_chats),
            agents=agents,
            postgres=postgres,
            server_env=server_env,
            profile_to=args.profile_to,
        ) as inst:
            out: dict[str, Any] = {}
            try:
                runner.run(exercise(args, inst, setup, out))
            finally:
                errors = out.pop("errors", [])
                result.update(out)
                if errors:
                    result.setdefault("errors", []).extend(errors)
    except Exception as exc:
        result.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
    return result


# --------------------------------------------------------------------------------------------
# Output


_f = console._f  # a number for the tables, '-' for none


def render(report: dict[str, Any]) -> str:
    p, m = report["parameters"], report["machine"]
    lines = [
        "",
        f"idcontact chat: {p['conversations']} conversations with both sockets open; each "
        f"phase one message every N s per conversation, {p['duration_s']:g} s measured",
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}. The clients run "
        "in this process, on the same CPUs as the server.",
        f"open files: soft limit {report['open_files']['soft']} (was "
        f"{report['open_files']['soft_before']}, needed ~{report['open_files']['needed']})",
        "",
    ]
    head = (
        f"{'set-up':<11} {'every':>5} {'msg/s':>6} {'p50':>6} {'p95':>6} {'p99':>7} {'max':>7} "
        f"{'p99<=50':>7} {'err':>5} {'srv':>5} {'db':>5} {'cli':>5} {'oth':>5} {'ms/msg':>6}"
    )
    lines += [head, "-" * len(head)]
    for name, r in report["runs"].items():
        for msg in r.get("phases", []):
            lat, cpu = msg["latency"], msg["cpu"]
            errors = sum(msg["errors"].values()) + msg["undelivered"]
            ok = lat["p99_ms"] is not None and lat["p99_ms"] <= TARGET_P99_MS and not errors
            lines.append(
                f"{name:<11} {msg['interval_s']:>4g}s {msg['messages_per_s']:>6.1f} "
                f"{_f(lat['p50_ms']):>6} {_f(lat['p95_ms']):>6} {_f(lat['p99_ms']):>7} "
                f"{_f(lat['max_ms']):>7} {('ok' if ok else 'MISS'):>7} {errors:>5} "
                f"{_f(cpu.get('server_cores'), '.2f'):>5} {_f(cpu.get('db_cores'), '.2f'):>5} "
                f"{_f(cpu.get('client_cores'), '.2f'):>5} {_f(cpu.get('other_cores'), '.2f'):>5} "
                f"{_f(msg.get('server_cpu_ms_per_message_above_quiet'), '.2f'):>6}"
            )
    lines.append(
        "(latency in ms: frame sent on one socket -> message frame on the other; err = error "
        "frames, closed sockets and undelivered messages; srv/db/cli/oth = cores of the server, "
        "its PostgreSQL backends, this client and everything else; ms/msg = server CPU per "
        "message above its CPU with nobody writing)"
    )
    for name, r in report["runs"].items():
        lines.append("")
        lines.append(f"{name}: {r.get('description', '')}")
        if r.get("background_busy_pct_before") is not None:
            lines.append(
                f"   the machine was {r['background_busy_pct_before']} % busy before the server "
                "started (other workloads)"
            )
        s = r.get("setup")
        if s:
            steps = ", ".join(f"{k} {v['p50']}/{v['p99']}" for k, v in s.get("step_ms", {}).items())
            lines.append(
                f"   set-up: {s['opened']} conversations in {s['seconds']} s ({s['per_s']}/s, "
                f"{s['concurrency']} at a time), server "
                f"{_f(s.get('server_cpu_ms_per_conversation'))} ms CPU each; steps p50/p99 ms: "
                f"{steps}"
            )
            if s.get("errors"):
                lines.append(f"   !! set-up errors: {s['errors']}")
        ms = r.get("memory_summary")
        if ms:
            lines.append(
                f"   memory: {ms['before_mib']} MiB with {r['agents']} agents logged in, "
                f"{ms['all_open_mib']} MiB with all open: {ms['per_conversation_kib']} KiB per "
                f"open conversation (marginal {_f(ms['per_conversation_marginal_kib'])} KiB)"
            )
            after = [
                x for x in r.get("memory", []) if x["label"] in ("after talking", "sockets closed")
            ]
            if after:
                lines.append(
                    "   then " + ", ".join(f"{x['label']} {x['rss_mib']} MiB" for x in after)
                )
        if "quiet" in r:
            lines.append(f"   nobody writing: server {r['quiet']['server_cores']} cores")
        for msg in r.get("phases", []):
            echo = msg["echo_latency"]
            lines.append(
                f"   every {msg['interval_s']:g} s: {msg['sent']} sent in the window "
                f"({msg['messages_per_s']}/s of {msg['asked_per_s']} asked), {msg['delivered']} "
                f"delivered, {msg['undelivered']} undelivered; echo to the sender p50/p99 "
                f"{echo['p50_ms']}/{echo['p99_ms']} ms; server "
                f"{_f(msg.get('server_cpu_ms_per_message'), '.2f')} ms CPU per message"
                + (
                    f", PostgreSQL {msg['db_cpu_ms_per_message']} ms"
                    if "db_cpu_ms_per_message" in msg
                    else ""
                )
                + f"; client loop lag p99 {msg['client_loop_lag_ms']['p99']} ms"
            )
            if msg.get("errors"):
                lines.append(f"   !! errors: {msg['errors']}")
            if (msg["cpu"].get("other_cores") or 0) > 0.25:
                lines.append(
                    "   !! other workloads used the CPUs during this phase: the server had less "
                    "than its share; rerun on a quiet machine"
                )
        warnings = r.get("server_log_warnings")
        if warnings:
            lines.append(f"   !! the server logged {warnings['count']} warnings or errors")
        lines += [f"   !! {e}" for e in r.get("errors", [])]
    lines += ["", f"target (informational, never fails the run): p99 <= {TARGET_P99_MS:.0f} ms"]
    lines += [f"note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chat benchmark of idcontact (bench/README.md).")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 200 conversations, 2 s warm-up, 10 s"
    )
    parser.add_argument("--conversations", type=int, help="open at once (default 2000)")
    parser.add_argument("--duration", type=float, help="measured seconds (default 30)")
    parser.add_argument("--warmup", type=float, help="seconds of talk before it (default 5)")
    parser.add_argument(
        "--interval",
        type=float,
        action="append",
        help="seconds between two messages of one conversation, sides alternating; repeatable: "
        "one talk phase each, on the same open conversations (default 30 and 10)",
    )
    parser.add_argument(
        "--max-chats",
        type=int,
        default=20,
        help="chats one agent may hold (the queue's max_chats, at most 20); agents = "
        "conversations / max-chats (default 20)",
    )
    parser.add_argument(
        "--setup",
        action="append",
        choices=tuple(SETUPS),
        help="production (PostgreSQL + Redis) and/or embedded (SQLite); repeatable "
        "(default production)",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=5.0,
        help="seconds of server CPU with all open and nobody writing, before the talk (5)",
    )
    parser.add_argument(
        "--setup-concurrency", type=int, default=16, help="conversations opened at once (16)"
    )
    parser.add_argument(
        "--no-compression",
        action="store_true",
        help="no permessage-deflate on the sockets (browsers ask for it; default: asked)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server, e.g. IDCONTACT_KEYSTORE=redis (repeatable)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the server under pyinstrument (as bench/flows.py --profile); writes "
        "bench/results/profile-chat-<setup>-<stamp>.txt and .pstats; results are not written",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.conversations = args.conversations or (200 if args.quick else 2000)
    args.duration = args.duration or (10.0 if args.quick else 30.0)
    if args.warmup is None:
        args.warmup = 2.0 if args.quick else 5.0
    args.setup = list(dict.fromkeys(args.setup or ["production"]))
    if not 1 <= args.max_chats <= 20:
        parser.error("--max-chats must be 1..20 (the queue setting's range)")
    args.interval = args.interval or [30.0, 10.0]
    if min(args.interval) <= 0 or args.duration <= 0:
        parser.error("--interval and --duration must be positive")
    args.server_env = flows.server_env(parser, args.server_env)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # Each conversation: two sockets here and two in the server (which inherits the limit),
    # plus the set-up's HTTP connections, the database's and some slack.
    open_files = raise_open_files(4 * args.conversations + 1024)
    report: dict[str, Any] = {
        "benchmark": "idcontact chat",
        "started_utc": stamp,
        "machine": flows.machine_info(),
        "parameters": {
            "quick": args.quick,
            "conversations": args.conversations,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "intervals_s": args.interval,
            "message_bytes": len(f"{args.conversations}.999 {FILLER}"),
            "max_chats": args.max_chats,
            "setup_concurrency": args.setup_concurrency,
            "compression": "none" if args.no_compression else "permessage-deflate offered",
            "server_env": args.server_env,
            "profiled": args.profile,
            "purpose": flows.PURPOSE,
            "websockets_client": console.flows.package_version("websockets"),
            "agent_passwords": "argon2id time_cost=1, 8 KiB (bench shortcut for the logins)",
        },
        "targets": {"latency_p99_ms": TARGET_P99_MS},
        "open_files": open_files,
        "runs": {},
        "notes": [],
    }
    if not open_files["enough"]:
        report["notes"].append(
            f"the open-file limit ({open_files['soft']}) is below the ~{open_files['needed']} "
            "needed: expect failed connections (raise the hard limit: ulimit -Hn)"
        )
    log(f"idcontact chat benchmark ({'quick' if args.quick else 'full'}), {stamp}")
    with asyncio.Runner(loop_factory=flows.loop_factory()) as runner:
        for setup in args.setup:
            log(f"set-up: {setup} ({SETUPS[setup]})")
            args.profile_to = (
                flows.RESULTS_DIR / f"profile-chat-{setup}-{stamp}.txt" if args.profile else None
            )
            if setup == "embedded":
                report["runs"][setup] = run_setup(args, runner, setup, None)
                continue
            args.redis_url, redis_note = find_redis()
            if args.redis_url is None:
                report["runs"][setup] = {"setup": setup, "errors": [f"no Redis: {redis_note}"]}
                continue
            wanted = [argparse.Namespace(database="postgres")]
            with flows.postgres_for(wanted, argparse.Namespace(no_postgres=False), runner) as (
                postgres,
                reason,
            ):
                if postgres is None:
                    report["runs"][setup] = {
                        "setup": setup,
                        "errors": [f"PostgreSQL unavailable: {reason}"],
                    }
                    continue
                run = run_setup(args, runner, setup, postgres)
                run["postgres"] = postgres.note
                run["redis"] = redis_note
                report["runs"][setup] = run
            if args.profile_to is not None:
                flows.render_profiles([args.profile_to])
    if args.profile:
        report["notes"].append("server profiled: slower than normal, RSS includes the profiler")
    report["finished_utc"] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    print(render(report), flush=True)
    if not args.no_write and not args.profile:
        stamped, latest = flows.write_results(report, stamp, "chat")
        log(f"\nwrote {stamped.relative_to(REPO)} and {latest.relative_to(REPO)}")
    failed = [name for name, r in report["runs"].items() if r.get("errors")]
    if failed:
        log(f"\nFAILED: {', '.join(failed)} (see above); missed targets never fail the run")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
