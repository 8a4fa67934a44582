"""Full-flow benchmark of idcontact: flows/s and latency at 32 concurrent clients.

One flow is what a resident does, end to end:

1. ``POST /start`` (JSON, ``Accept: application/json``): the core calls the comm plugin's
   ``start_communication`` (a conversation and an attr_url slot are created) and then the auth
   plugin's ``start_authentication``; the answer is the auth confirm page URL.
2. ``POST <confirm URL>`` with ``action=share``: the demo auth plugin delivers the attributes to
   the comm attr_url, which stores them in the vault; the answer is a 303 to the landing page.
   With the roles split, that is a signed and encrypted token POSTed server-side (decrypted,
   verified, replay-checked on arrival); in one process the result is handed to the slot
   directly (``LocalSlots``: no token to make or read).
3. ``GET <landing page>``: the waiting room; opening it puts the conversation in the queue. It
   names the data the agent will see and never shows it.

Each scenario runs a real uvicorn server (``idcontact serve``) as a subprocess on 127.0.0.1 with
a fresh data directory; the load generator (bench/rawhttp.py) runs in this process, on the same
machine, so it competes with the server for the CPUs. The clients run flows back to back (the
peak), then paced to the target rate together (latency counted from when each flow was due).
Besides the HTTP scenarios the benchmark measures the *crypto floor*: the per-flow cost of the
token and vault cryptography alone, in-process.

    .venv/bin/python bench/flows.py            # full run (20 s per scenario)
    .venv/bin/python bench/flows.py --quick    # 5 s per scenario
    .venv/bin/python bench/flows.py --help

See bench/README.md for what the numbers mean. The exit status is 1 when any flow failed or a
scenario could not run; missed targets never fail the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import json
import math
import os
import platform
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import httpx
from rawhttp import RawClient

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
POSTGRES_SCRIPT = REPO / "scripts" / "services" / "postgres"
POSTGRES_ENV = "IDCONTACT_TEST_POSTGRES_URL"

TARGET_FLOWS_PER_S = {"EC": 400.0, "RSA": 250.0}
TARGET_P99_MS = 50.0

PURPOSE = "report_move"
START_BODY = {"purpose": PURPOSE, "auth_method": "demo", "comm_method": "demo"}
# The demo auth plugin's BSN: seen on the landing page only when the vault was read back.
EXPECTED_ON_LANDING = "U bent nummer"
"""The waiting room's place in line: the attributes arrived and the conversation is queued."""

KeyType = Literal["EC", "RSA"]
Database = Literal["sqlite", "postgres"]
Topology = Literal["embedded", "split"]


@dataclass(frozen=True)
class Scenario:
    number: int
    id: str
    keys: KeyType
    database: Database
    topology: Topology
    workers: int = 1

    @property
    def title(self) -> str:
        db = "SQLite" if self.database == "sqlite" else "PostgreSQL"
        keys = "EC P-256" if self.keys == "EC" else "RSA-2048"
        topology = self.topology if self.workers == 1 else f"{self.topology} x{self.workers}"
        return f"{topology}, {keys}, {db}"


SCENARIOS = (
    Scenario(1, "embedded-ec-sqlite", "EC", "sqlite", "embedded"),
    Scenario(2, "embedded-rsa-sqlite", "RSA", "sqlite", "embedded"),
    Scenario(3, "embedded-ec-postgres", "EC", "postgres", "embedded"),
    Scenario(4, "embedded-rsa-postgres", "RSA", "postgres", "embedded"),
    Scenario(5, "split-ec-sqlite", "EC", "sqlite", "split"),
    # serve --workers 2: one process per core.
    Scenario(6, "embedded2-ec-sqlite", "EC", "sqlite", "embedded", workers=2),
    Scenario(7, "embedded2-ec-postgres", "EC", "postgres", "embedded", workers=2),
    Scenario(8, "embedded2-rsa-sqlite", "RSA", "sqlite", "embedded", workers=2),
)


# --------------------------------------------------------------------------------------------
# Small helpers


def log(msg: str) -> None:
    print(msg, flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (``q`` in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = len(os.sched_getaffinity(0))


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (``serve --workers``
    forks workers); NaN when unavailable."""
    fields = _stat_fields(pid)
    if fields is None:
        return math.nan
    total = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    parents = {pid}
    for _ in range(3):  # workers, and what they spawn
        children = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            child = _stat_fields(int(entry.name))
            if child is not None and int(child[1]) in parents:
                children.add(int(entry.name))
                total += (int(child[11]) + int(child[12])) / _CLK_TCK
        if not children:
            break
        parents = children
    return total


def system_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from ``/proc/stat``; (0, 0) when unavailable."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0, 0
    values = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    total = sum(values)
    return total - idle, total


def background_busy_pct(seconds: float = 1.0) -> float | None:
    """How busy the machine is while we do nothing (other workloads), in percent."""
    busy0, total0 = system_cpu_ticks()
    time.sleep(seconds)
    busy1, total1 = system_cpu_ticks()
    return round(100 * (busy1 - busy0) / (total1 - total0), 1) if total1 > total0 else None


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def clean_env() -> dict[str, str]:
    """The environment for servers: ours, minus any IDCONTACT_* setting that could leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IDCONTACT_")}


# --------------------------------------------------------------------------------------------
# Configuration and server processes


def config_toml(auth_start: str | None = None, comm_start: str | None = None) -> str:
    """The benchmark configuration: one purpose, the demo auth and comm plugins."""
    auth_extra = f'start = "{auth_start}"\n' if auth_start else ""
    comm_extra = f'start = "{comm_start}"\n' if comm_start else ""
    return (
        "# Written by bench/flows.py\n"
        "[attribute_labels]\n"
        'fullname = { nl = "Naam", en = "Full name" }\n'
        'bsn = { nl = "Burgerservicenummer (BSN)", en = "Citizen service number (BSN)" }\n\n'
        "[[auth_methods]]\n"
        'tag = "demo"\nname = "Demo-identificatie"\nplugin = "demo"\n'
        f'assurance = "substantial"\n{auth_extra}\n'
        "[[comm_methods]]\n"
        f'tag = "demo"\nname = "Demokanaal"\nplugin = "demo"\n{comm_extra}\n'
        "[[purposes]]\n"
        f'tag = "{PURPOSE}"\n'
        'label = { nl = "Verhuizing doorgeven", en = "Report a move" }\n'
        'attributes = ["fullname", "bsn"]\n'
        'allowed_auth = ["*"]\nallowed_comm = ["*"]\nmin_assurance = "substantial"\n'
    )


# Runs ``idcontact serve`` under pyinstrument. uvicorn re-raises SIGTERM after its graceful
# shutdown with the previous handler restored; ours turns it into SystemExit, so the profile is
# written (``python -m pyinstrument`` would die with the signal and write nothing).
PROFILE_WRAPPER = """
import pstats, signal, sys
from pathlib import Path
from pyinstrument import Profiler
from pyinstrument.renderers import PstatsRenderer

def _term(signum, frame):
    raise SystemExit(0)

signal.signal(signal.SIGTERM, _term)
out = Path(sys.argv[1])
profiler = Profiler(interval=0.0005, async_mode="disabled")
profiler.start()
try:
    from idcontact.cli import main
    main(sys.argv[2:], prog_name="idcontact", standalone_mode=False)
except SystemExit:
    pass
finally:
    session = profiler.stop()
    stats_bytes = PstatsRenderer().render(session).encode("utf-8", "surrogateescape")
    out.with_suffix(".pstats").write_bytes(stats_bytes)
    with out.with_suffix(".txt").open("w") as fh:
        fh.write(profiler.output_text(unicode=True, color=False))
        fh.write("\\n\\nTop functions by self time (pyinstrument samples, main thread):\\n")
        stats = pstats.Stats(str(out.with_suffix(".pstats")), stream=fh)
        stats.sort_stats("tottime").print_stats(40)
        fh.write("\\nTop functions by cumulative time:\\n")
        stats.sort_stats("cumulative").print_stats(60)
"""


@dataclass
class Server:
    roles: tuple[str, ...]
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return "+".join(self.roles) if self.roles else "embedded"


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_server(
    *,
    config: Path,
    data_dir: Path,
    port: int,
    roles: tuple[str, ...],
    env: dict[str, str],
    log_path: Path,
    profile_to: Path | None = None,
    workers: int = 1,
) -> Server:
    """Start ``idcontact serve`` and wait until ``/healthz`` answers."""
    serve = ["serve", "--config", str(config), "--data-dir", str(data_dir)]
    serve += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    for role in roles:
        serve += ["--role", role]
    if profile_to is None:
        cmd = [sys.executable, "-m", "idcontact", *serve]
    else:
        cmd = [sys.executable, "-c", PROFILE_WRAPPER, str(profile_to), *serve]
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C on the bench does not hit the server directly
        )
    server = Server(roles, port, proc, log_path)
    deadline = time.monotonic() + 90
    with httpx.Client(timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"server {server.name} exited with {proc.returncode} before it was healthy:\n"
                    + log_tail(log_path)
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{server.url}/healthz").status_code == 200:
                    return server
            if time.monotonic() > deadline:
                stop_server(server)
                raise RuntimeError(f"server {server.name} not healthy after 90 s")
            time.sleep(0.1)


def stop_server(server: Server) -> None:
    """Stop one server by its PID: SIGTERM (graceful), SIGKILL after 30 s."""
    proc = server.proc
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# PostgreSQL: one fresh database per scenario


@dataclass
class Postgres:
    admin_url: str  # SQLAlchemy URL (postgresql+asyncpg://...)
    started_by_us: bool
    note: str = ""


def find_postgres() -> tuple[Postgres | None, str]:
    """The PostgreSQL server to use, or None and the reason why there is none."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if url:
        return Postgres(url, started_by_us=False, note=f"from ${POSTGRES_ENV}"), ""
    if not POSTGRES_SCRIPT.exists():
        return None, f"${POSTGRES_ENV} is not set and {POSTGRES_SCRIPT} does not exist"
    status = subprocess.run(["bash", str(POSTGRES_SCRIPT), "status"], capture_output=True)
    was_running = status.returncode == 0
    if not was_running:
        log("starting PostgreSQL with scripts/services/postgres start ...")
        started = subprocess.run(
            ["bash", str(POSTGRES_SCRIPT), "start"], capture_output=True, text=True
        )
        if started.returncode != 0:
            reason = (started.stderr or started.stdout).strip().splitlines()[-1:]
            return None, "scripts/services/postgres start failed: " + " ".join(reason)
    got = subprocess.run(["bash", str(POSTGRES_SCRIPT), "url"], capture_output=True, text=True)
    if got.returncode != 0 or not got.stdout.strip():
        return None, "scripts/services/postgres url printed nothing"
    note = "started by the bench" if not was_running else "already running (scripts/services)"
    return Postgres(got.stdout.strip(), started_by_us=not was_running, note=note), ""


def _asyncpg_params(sa_url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    u = make_url(sa_url)
    return {
        "user": u.username,
        "password": u.password,
        "host": u.host or "127.0.0.1",
        "port": u.port or 5432,
        "database": u.database or "postgres",
    }


async def create_database(admin_url: str, name: str) -> str:
    """CREATE DATABASE ``name``; return its SQLAlchemy URL."""
    import asyncpg
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(**_asyncpg_params(admin_url), timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(**_asyncpg_params(admin_url), timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def postgres_backend_pids(admin_url: str, database: str) -> list[int]:
    """PIDs of the server processes serving connections to ``database`` (their CPU counts)."""
    import asyncpg

    conn = await asyncpg.connect(**_asyncpg_params(admin_url), timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


async def _no_pids() -> list[int]:
    return []


async def other_postgres_clients(admin_url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(**_asyncpg_params(admin_url), timeout=10)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return int(count)


# --------------------------------------------------------------------------------------------
# The load generator


class FlowError(Exception):
    pass


@dataclass
class FlowRecord:
    started: float
    ended: float
    steps: tuple[float, float, float]  # start, confirm, landing (seconds)


@dataclass
class LoadResult:
    records: list[FlowRecord] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def one_flow(
    client: httpx.AsyncClient | RawClient, core_url: str
) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    r = await client.post(
        f"{core_url}/start", json=START_BODY, headers={"Accept": "application/json"}
    )
    if r.status_code != 200:
        raise FlowError(f"start: HTTP {r.status_code}")
    confirm_url = r.json()["client_url"]
    t1 = time.perf_counter()
    r = await client.post(confirm_url, data={"action": "share"})
    if r.status_code != 303 or "location" not in r.headers:
        raise FlowError(f"confirm: HTTP {r.status_code}")
    landing_url = r.headers["location"]
    t2 = time.perf_counter()
    r = await client.get(landing_url)
    if r.status_code != 200:
        raise FlowError(f"landing: HTTP {r.status_code}")
    if EXPECTED_ON_LANDING not in r.text:
        raise FlowError("landing: not in the queue (delivery failed)")
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


@dataclass
class Phase:
    records: list[FlowRecord]
    errors: Counter[str]
    t0: float
    t_end: float


class LoadGenerator:
    """``size`` independent clients, each with its own connection(s), reused across phases.

    ``raw`` (the default, `bench/rawhttp.py`): a keep-alive HTTP/1.1 connection per client
    and origin, requests written and answers parsed (httptools) by hand, ~0.2 ms of CPU per
    request. ``httpx``: one ``httpx.AsyncClient`` per client, ~0.8 ms per request, as the
    runs before 2026-12-01 measured. One pool per httpx client: httpcore scans its whole pool
    for every request, O(connections²) CPU with a single shared pool of 32; all share one SSL
    context (building one per client loads the CA bundle each time); no TLS is used anyway.
    """

    def __init__(self, core_url: str, size: int, kind: str = "raw") -> None:
        self.core_url = core_url
        self.size = size
        self.kind = kind
        self._stack = contextlib.AsyncExitStack()
        self.clients: list[httpx.AsyncClient | RawClient] = []

    async def __aenter__(self) -> LoadGenerator:
        context = ssl.create_default_context()
        for _ in range(self.size):
            client: httpx.AsyncClient | RawClient
            if self.kind == "raw":
                client = RawClient(timeout=60.0)
            else:
                client = httpx.AsyncClient(
                    verify=context, timeout=httpx.Timeout(60.0), follow_redirects=False
                )
            self.clients.append(await self._stack.enter_async_context(client))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def run(
        self,
        duration: float,
        concurrency: int,
        max_errors: int = 500,
        rate: float | None = None,
    ) -> Phase:
        """``concurrency`` clients each run flows until ``duration`` has passed: back to back
        (closed loop), or, given a ``rate`` (flows/s of all clients together), each on its own
        schedule of one flow every ``concurrency / rate`` seconds, the clients staggered.

        Paced, a flow's latency counts from when it was due, not from when it began: a client
        still busy with its previous flow starts late, and that lateness is waiting the system
        caused (no "coordinated omission").
        """
        records: list[FlowRecord] = []
        errors: Counter[str] = Counter()
        t0 = time.perf_counter()
        t_end = t0 + duration
        every = concurrency / rate if rate else 0.0

        async def loop(client: httpx.AsyncClient | RawClient, due: float) -> None:
            while (now := time.perf_counter()) < t_end and (not rate or due < t_end):
                if rate:
                    if due > now:
                        await asyncio.sleep(due - now)
                    begun, due = due, due + every
                else:
                    begun = now
                try:
                    steps = await one_flow(client, self.core_url)
                except Exception as exc:
                    kind = str(exc) if isinstance(exc, FlowError) else type(exc).__name__
                    errors[kind] += 1
                    if sum(errors.values()) >= max_errors:
                        return
                    continue
                records.append(FlowRecord(begun, time.perf_counter(), steps))

        await asyncio.gather(
            *(
                loop(c, t0 + i / rate if rate else t0)
                for i, c in enumerate(self.clients[:concurrency])
            )
        )
        return Phase(records, errors, t0, t_end)


def make_loadgen_cheap() -> list[str]:
    """Trim avoidable CPU from the load generator (it shares the CPUs with the server)."""
    tweaks = []
    if importlib.util.find_spec("sniffio") is None:
        # httpcore 1.0.x runs `import sniffio` for every request it sends. Without sniffio
        # installed each attempt searches sys.path (~0.1-0.3 ms of CPU); None in sys.modules
        # makes the import fail at once, and httpcore falls back to asyncio, which we run.
        sys.modules["sniffio"] = None  # type: ignore[assignment]
        tweaks.append("sniffio not installed: its import is short-circuited in the load generator")
    tweaks.append("one httpx.AsyncClient (connection pool) per client, one shared SSL context")
    return tweaks


@dataclass
class Sample:
    """CPU counters at one moment: the bench process, the servers, the database, the machine."""

    wall: float
    bench_cpu: float
    server_cpu: float
    per_server: dict[str, float]
    db_cpu: dict[int, float]
    sys_busy: int
    sys_total: int

    @classmethod
    def take(cls, servers: list[Server], db_pids: list[int]) -> Sample:
        busy, total = system_cpu_ticks()
        per_server = {s.name: process_cpu_seconds(s.proc.pid) for s in servers}
        return cls(
            wall=time.perf_counter(),
            bench_cpu=time.process_time(),
            server_cpu=sum(per_server.values()),
            per_server=per_server,
            db_cpu={pid: process_cpu_seconds(pid) for pid in db_pids},
            sys_busy=busy,
            sys_total=total,
        )


def summarize(phase: Phase, before: Sample, after: Sample, paced: bool = False) -> dict[str, Any]:
    """Throughput, latency and CPU of one phase. Back to back, flows still running at its end
    do not count towards throughput (their latency does); paced, every flow that was due in
    the window and done counts (one due just before the end would otherwise be lost)."""
    window = phase.t_end - phase.t0
    flows = len(phase.records) if paced else sum(1 for r in phase.records if r.ended <= phase.t_end)
    latencies = sorted(r.ended - r.started for r in phase.records)
    step_names = ("start", "confirm", "landing")
    steps = {n: sorted(r.steps[i] for r in phase.records) for i, n in enumerate(step_names)}
    cpu_window = after.wall - before.wall
    server_cpu = after.server_cpu - before.server_cpu
    bench_cpu = after.bench_cpu - before.bench_cpu
    # Database backends that appeared during the window count from zero.
    db_cpu = sum(
        cpu - before.db_cpu.get(pid, 0.0) for pid, cpu in after.db_cpu.items() if cpu == cpu
    )
    sys_total = after.sys_total - before.sys_total
    busy = (after.sys_busy - before.sys_busy) / sys_total if sys_total else None

    def per_flow(seconds: float) -> float:
        return round(seconds / flows * 1000, 2) if flows else math.nan

    def ms(values: list[float], q: float) -> float:
        return round(percentile(values, q) * 1000, 2)

    cpu: dict[str, Any] = {
        "server_s": round(server_cpu, 2),
        "server_ms_per_flow": per_flow(server_cpu),
        "server_cores": round(server_cpu / cpu_window, 2),
        "server_cores_by_process": {
            name: round((cpu - before.per_server.get(name, 0.0)) / cpu_window, 2)
            for name, cpu in after.per_server.items()
        },
        "loadgen_s": round(bench_cpu, 2),
        "loadgen_ms_per_flow": per_flow(bench_cpu),
        "loadgen_cores": round(bench_cpu / cpu_window, 2),
    }
    if after.db_cpu:
        cpu["db_s"] = round(db_cpu, 2)
        cpu["db_ms_per_flow"] = per_flow(db_cpu)
        cpu["db_cores"] = round(db_cpu / cpu_window, 2)
    cpu["machine_busy_pct"] = round(100 * busy, 1) if busy is not None else None
    # CPU used by everything else on the machine (other workloads) during the window.
    cpu["other_cores"] = (
        round(busy * NCPU - (server_cpu + bench_cpu + db_cpu) / cpu_window, 2)
        if busy is not None
        else None
    )
    return {
        "duration_s": round(window, 3),
        "flows": flows,
        "flows_per_s": round(flows / window, 1),
        "requests_per_s": round(3 * flows / window, 1),
        "flows_completed_incl_tail": len(phase.records),
        "latency_ms": {
            "p50": ms(latencies, 50),
            "p90": ms(latencies, 90),
            "p99": ms(latencies, 99),
            "max": ms(latencies, 100),
            "mean": round(sum(latencies) / len(latencies) * 1000, 2) if latencies else None,
        },
        "step_latency_ms": {n: {"p50": ms(v, 50), "p99": ms(v, 99)} for n, v in steps.items()},
        "errors": sum(phase.errors.values()),
        "error_kinds": dict(phase.errors),
        "cpu": cpu,
    }


async def measured(
    gen: LoadGenerator,
    servers: list[Server],
    db_pids: Callable[[], Awaitable[list[int]]],
    *,
    duration: float,
    concurrency: int,
    rate: float | None = None,
    flows_out: Path | None = None,
) -> dict[str, Any]:
    """One measurement window with CPU accounting (sampled when the window closes); with
    ``flows_out``, each flow's due time and latency as JSON lines (when the slow ones came)."""
    before = Sample.take(servers, await db_pids())
    task = asyncio.ensure_future(gen.run(duration, concurrency, rate=rate))
    await asyncio.wait({task}, timeout=duration)
    pids = await db_pids()
    after = Sample.take(servers, pids)
    phase = await task
    if flows_out is not None:
        with flows_out.open("w") as out:
            for r in sorted(phase.records, key=lambda r: r.started):
                due, took = r.started - phase.t0, r.ended - r.started
                out.write(json.dumps({"due_s": round(due, 4), "ms": round(took * 1000, 2)}))
                out.write("\n")
    return summarize(phase, before, after, paced=rate is not None)


async def exercise(
    core_url: str,
    servers: list[Server],
    db_pids: Callable[[], Awaitable[list[int]]],
    args: argparse.Namespace,
    rate: float | None = None,
    scenario: int = 0,
) -> dict[str, Any]:
    """Warm up, probe with one client, measure at full concurrency back to back, then (given
    a ``rate``) with the same clients paced to that rate together."""
    out: dict[str, Any] = {}
    async with LoadGenerator(core_url, args.concurrency, args.client) as gen:
        log(f"  warm-up {args.warmup:g} s at {args.concurrency} clients ...")
        warm = await gen.run(args.warmup, args.concurrency)
        out["warmup"] = {
            "flows": len(warm.records),
            "errors": sum(warm.errors.values()),
            "error_kinds": dict(warm.errors),
        }
        if args.serial > 0:
            log(f"  one client, {args.serial:g} s (unloaded service time) ...")
            out["one_client"] = await measured(
                gen, servers, db_pids, duration=args.serial, concurrency=1
            )
        log(f"  measuring {args.duration:g} s at {args.concurrency} clients ...")
        out.update(
            await measured(
                gen, servers, db_pids, duration=args.duration, concurrency=args.concurrency
            )
        )
        if rate and args.paced > 0:
            log(
                f"  paced: {args.concurrency} clients, {rate:g} flows/s together, "
                f"{args.paced:g} s ..."
            )
            out["paced"] = await measured(
                gen,
                servers,
                db_pids,
                duration=args.paced,
                concurrency=args.concurrency,
                rate=rate,
                flows_out=args.flows_out and Path(f"{args.flows_out}-{scenario}.jsonl"),
            )
            out["paced"]["offered_per_s"] = rate
    return out


def bottleneck(result: dict[str, Any]) -> str:
    """A rough reading of what limited throughput, from the CPU numbers of the window."""
    cpu = result.get("cpu")
    if not cpu:
        return "unknown"
    processes = result["processes"]
    by_process = cpu.get("server_cores_by_process", {})
    hot = [name for name, cores in by_process.items() if cores >= 0.85]
    if processes == 1 and hot:
        return "server CPU (one process = one event loop = one core)"
    if (cpu["machine_busy_pct"] or 0) >= 85:
        if (cpu["other_cores"] or 0) > 0.25:
            return "machine CPU (shared with other workloads)"
        return "machine CPU (server + load generator + database)"
    if hot:
        return f"server CPU in {', '.join(hot)} (one event loop = one core)"
    return "waiting (locks, I/O or the database), not CPU"


# --------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Deployment:
    core_url: str
    servers: list[Server]


def deploy(
    scenario: Scenario,
    data_dir: Path,
    database_url: str | None,
    extra_env: dict[str, str],
    profile_to: Path | None,
) -> Deployment:
    base_env = clean_env()
    base_env["IDCONTACT_KEYS__GENERATE"] = scenario.keys
    if database_url is not None:
        base_env["IDCONTACT_DATABASE_URL"] = database_url
    base_env.update(extra_env)
    logs = data_dir / "logs"
    logs.mkdir()
    servers: list[Server] = []
    try:
        if scenario.topology == "embedded":
            port = free_port()
            config = data_dir / "idcontact.toml"
            config.write_text(config_toml())
            env = {**base_env, "IDCONTACT_PUBLIC_URL": f"http://127.0.0.1:{port}"}
            servers.append(
                start_server(
                    config=config,
                    data_dir=data_dir,
                    port=port,
                    roles=(),
                    env=env,
                    log_path=logs / "server.log",
                    profile_to=profile_to,
                    workers=scenario.workers,
                )
            )
            return Deployment(servers[0].url, servers)
        # Split roles, as the original was deployed: three processes sharing the data dir.
        ports = {"core": free_port(), "auth": free_port(), "comm": free_port()}
        config = data_dir / "idcontact.toml"
        config.write_text(
            config_toml(
                auth_start=f"http://127.0.0.1:{ports['auth']}/auth/demo",
                comm_start=f"http://127.0.0.1:{ports['comm']}/comm/demo",
            )
        )
        for role in ("core", "auth", "comm"):  # one after another: keys are made by the first
            url = f"http://127.0.0.1:{ports[role]}"
            env = {**base_env, "IDCONTACT_PUBLIC_URL": url}
            if role == "comm":
                env["IDCONTACT_INTERNAL_URL"] = url
            servers.append(
                start_server(
                    config=config,
                    data_dir=data_dir,
                    port=ports[role],
                    roles=(role,),
                    env=env,
                    log_path=logs / f"{role}.log",
                    profile_to=(
                        profile_to.with_name(f"{profile_to.stem}-{role}{profile_to.suffix}")
                        if profile_to
                        else None
                    ),
                )
            )
        return Deployment(servers[0].url, servers)
    except BaseException:
        for server in reversed(servers):
            stop_server(server)
        raise


def run_scenario(
    scenario: Scenario,
    args: argparse.Namespace,
    runner: asyncio.Runner,
    postgres: Postgres | None,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "number": scenario.number,
        "id": scenario.id,
        "title": scenario.title,
        "keys": scenario.keys,
        "database": scenario.database,
        "topology": scenario.topology,
        "processes": 3 if scenario.topology == "split" else 1,
    }
    database_url: str | None = None
    db_name: str | None = None
    with tempfile.TemporaryDirectory(prefix=f"idcontact-bench-{scenario.id}-") as tmp:
        data_dir = Path(tmp)
        try:
            if scenario.database == "postgres":
                assert postgres is not None
                db_name = f"idcontact_bench_{os.getpid()}_{scenario.number}"
                database_url = runner.run(create_database(postgres.admin_url, db_name))
            result["background_busy_pct_before"] = background_busy_pct()
            t_boot = time.perf_counter()
            deployment = deploy(scenario, data_dir, database_url, args.server_env, profile_to)
            result["startup_s"] = round(time.perf_counter() - t_boot, 2)
            db_pids = _no_pids
            if db_name is not None and postgres is not None:
                db_pids = functools.partial(postgres_backend_pids, postgres.admin_url, db_name)
            try:
                result.update(
                    runner.run(
                        exercise(
                            deployment.core_url,
                            deployment.servers,
                            db_pids,
                            args,
                            args.rate or TARGET_FLOWS_PER_S[scenario.keys],
                            scenario.number,
                        )
                    )
                )
                result["limit"] = bottleneck(result)
                alive = [s.name for s in deployment.servers if s.proc.poll() is None]
                if len(alive) != len(deployment.servers):
                    result["error"] = "a server process died during the run"
            finally:
                for server in reversed(deployment.servers):
                    stop_server(server)
                for server in deployment.servers:
                    warnings = [
                        line
                        for line in log_tail(server.log_path, 100_000).splitlines()
                        if '"level": "ERROR"' in line or '"level": "WARNING"' in line
                    ]
                    if warnings:
                        result.setdefault("server_log_warnings", {})[server.name] = {
                            "count": len(warnings),
                            "last": warnings[-3:],
                        }
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if db_name is not None and postgres is not None:
                try:
                    runner.run(drop_database(postgres.admin_url, db_name))
                except Exception as exc:
                    log(f"  could not drop database {db_name}: {exc}")
    return result


# --------------------------------------------------------------------------------------------
# The crypto floor


def _time_per_call(
    fn: Callable[[], object], *, seconds: float, min_calls: int, repeats: int = 5
) -> dict[str, Any]:
    """µs per call of ``fn``: the best of ``repeats`` rounds (like timeit: the fastest round is
    the least disturbed by other processes), each of at least ``seconds / repeats`` and
    ``min_calls / repeats`` calls. The mean over all rounds is reported too."""
    fn()  # warm caches
    rounds: list[tuple[float, float]] = []
    calls_total = 0
    for _ in range(repeats):
        calls = 0
        started = time.perf_counter()
        cpu_started = time.process_time()
        while True:
            for _ in range(5):
                fn()
            calls += 5
            elapsed = time.perf_counter() - started
            if elapsed >= seconds / repeats and calls * repeats >= min_calls:
                break
        cpu = time.process_time() - cpu_started
        rounds.append((elapsed / calls, cpu / calls))
        calls_total += calls
    best_wall = min(r[0] for r in rounds)
    best_cpu = min(r[1] for r in rounds)
    mean_wall = sum(r[0] for r in rounds) / len(rounds)
    return {
        "us_per_call": round(best_wall * 1e6, 1),
        "cpu_us_per_call": round(best_cpu * 1e6, 1),
        "mean_us_per_call": round(mean_wall * 1e6, 1),
        "calls": calls_total,
    }


def crypto_floor(seconds: float) -> dict[str, Any]:
    """Per-flow cost of the cryptography alone, measured in-process without HTTP.

    Per flow: ``TokenIssuer.issue`` (ES256/RS256 sign + ECDH-ES/RSA-OAEP encrypt) and
    ``TokenReader.read`` (decrypt + verify + parse), plus the vault's AES-256-GCM encryption and
    decryption of the attribute payload with a fresh data key. Sealing of the auth plugin's
    pending state (AES-GCM) is measured too but is not part of the floor.
    """
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="idcontact-bench-keys-") as tmp:
        for kind in ("EC", "RSA"):
            keydir = Path(tmp) / kind
            keydir.mkdir()
            out[kind] = _crypto_floor_for(kind, keydir, seconds)
    return out


def _crypto_floor_for(kind: KeyType, keydir: Path, seconds: float) -> dict[str, Any]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from idcontact.keys import KeyConfig, generate_keypair, kid_for
    from idcontact.plugins.auth.demo import DEFAULT_ATTRIBUTES
    from idcontact.sealing import Sealer
    from idcontact.tokens import AuthResult, TokenIssuer, TokenReader

    attributes = {k: DEFAULT_ATTRIBUTES[k] for k in ("fullname", "bsn")}
    result = AuthResult(status="success", attributes=attributes)
    # The same files and loading code as the server's demo keys.
    sign_priv, sign_pub = generate_keypair(kind, keydir, "sign")
    enc_priv, enc_pub = generate_keypair(kind, keydir, "enc")
    signing = KeyConfig(type=kind, key_file=sign_priv).load()
    verifying = KeyConfig(type=kind, key_file=sign_pub).load()
    decryption = KeyConfig(type=kind, key_file=enc_priv).load()
    encryption = KeyConfig(type=kind, key_file=enc_pub).load()
    kid = kid_for(signing)
    issuer = TokenIssuer(signing, kid=kid)
    reader = TokenReader([decryption], {kid: verifying})
    token = issuer.issue(result, encryption)
    conversation = b"bench-conversation-id-0"

    def issue() -> None:
        issuer.issue(result, encryption)

    def read() -> None:
        reader.read(token)

    def vault_roundtrip() -> None:
        # What Vault.store and Vault.read do, without the database and key store.
        payload = {"attributes": attributes, "session_url": None, "received_at": 0.0, "kid": kid}
        plaintext = json.dumps(payload, separators=(",", ":")).encode()
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        sealed = AESGCM(key).encrypt(nonce, plaintext, conversation)
        json.loads(AESGCM(key).decrypt(nonce, sealed, conversation))

    def flow() -> None:
        reader.read(issuer.issue(result, encryption))
        vault_roundtrip()

    sealer = Sealer(os.urandom(48))
    pending = {
        "attributes": ["fullname", "bsn"],
        "continuation": "http://127.0.0.1:8000/comm/demo/c/" + "x" * 22,
        "attr_url": "http://inproc/comm/demo/attr/" + "y" * 43,
    }

    def seal_roundtrip() -> None:
        sealer.unseal("auth-demo", sealer.seal("auth-demo", pending, max_age=900))

    part = max(0.2, seconds / 3)
    parts = {
        "issue": _time_per_call(issue, seconds=part, min_calls=50),
        "read": _time_per_call(read, seconds=part, min_calls=50),
        "vault_encrypt_decrypt": _time_per_call(vault_roundtrip, seconds=part, min_calls=200),
        "seal_unseal_not_in_floor": _time_per_call(seal_roundtrip, seconds=part, min_calls=200),
    }
    total = _time_per_call(flow, seconds=seconds, min_calls=100)
    return {
        "us_per_flow": total["us_per_call"],
        "cpu_us_per_flow": total["cpu_us_per_call"],
        "max_flows_per_s_one_core": round(1e6 / total["us_per_call"], 1),
        "iterations": total["calls"],
        "token_bytes": len(token),
        "parts": parts,
    }


# --------------------------------------------------------------------------------------------
# Output


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {
            name: package_version(name)
            for name in (
                "idcontact",
                "fastapi",
                "starlette",
                "uvicorn",
                "uvloop",
                "httptools",
                "httpx",
                "joserfc",
                "cryptography",
                "sqlalchemy",
                "aiosqlite",
                "asyncpg",
            )
        },
    }


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def _f(value: float | None, spec: str = ".1f") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


def render_tables(report: dict[str, Any]) -> str:
    params = report["parameters"]
    m = report["machine"]
    lines = [
        "",
        f"idcontact full flows: {params['concurrency']} concurrent clients, "
        f"{params['duration_s']:g} s measured per scenario after {params['warmup_s']:g} s warm-up",
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}. The load "
        "generator runs in this process on the same CPUs and competes with the server(s).",
        "",
    ]
    ran = [r for r in report["scenarios"] if "flows_per_s" in r]

    head = (
        f"{'#':<2} {'scenario':<31} {'flows/s':>8} {'target':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99<=50':>7} {'errors':>6}"
    )
    lines += [head, "-" * len(head)]
    for r in report["scenarios"]:
        prefix = f"{r['number']:<2} {r['title']:<31}"
        if r.get("skipped"):
            lines.append(f"{prefix} skipped: {r['skipped']}")
            continue
        if "flows_per_s" not in r:
            lines.append(f"{prefix} FAILED: {r.get('error', '?')}")
            continue
        target = TARGET_FLOWS_PER_S[r["keys"]]
        lat = r["latency_ms"]
        errors = r["errors"] + r.get("warmup", {}).get("errors", 0)
        lines.append(
            f"{prefix} {r['flows_per_s']:>8.1f} {'>=' + format(target, '.0f'):>5} "
            f"{_mark(r['flows_per_s'] >= target):<4} {lat['p50']:>8.1f} {lat['p99']:>8.1f} "
            f"{_mark(lat['p99'] <= TARGET_P99_MS):>7} {errors:>6}"
        )
        lines.append(f"   limited by: {r.get('limit', 'unknown')}")
        for name, w in r.get("server_log_warnings", {}).items():
            lines.append(f"   !! server log ({name}): {w['count']} warning/error lines, see JSON")
        if r.get("error"):
            lines.append(f"   !! {r['error']}")
        for phase, data in (("warm-up", r.get("warmup", {})), ("measured", r)):
            if data.get("errors"):
                lines.append(f"   !! {phase} errors: {data['error_kinds']}")

    if ran:
        lines += [
            "",
            "CPU per flow (ms) and cores used during the measured window:",
        ]
        head = (
            f"{'#':<2} {'server':>8} {'db':>6} {'loadgen':>8}   {'server':>7} {'db':>5} "
            f"{'loadgen':>8} {'other':>6}   {'machine busy':>12} {'idle-busy before':>16}"
        )
        lines += [head, "-" * len(head)]
        for r in ran:
            c = r["cpu"]
            lines.append(
                f"{r['number']:<2} {_f(c['server_ms_per_flow'], '.2f'):>8} "
                f"{_f(c.get('db_ms_per_flow'), '.2f'):>6} {_f(c['loadgen_ms_per_flow'], '.2f'):>8}"
                f"   {_f(c['server_cores'], '.2f'):>7} {_f(c.get('db_cores'), '.2f'):>5} "
                f"{_f(c['loadgen_cores'], '.2f'):>8} {_f(c['other_cores'], '.2f'):>6}   "
                f"{_f(c['machine_busy_pct']):>11}% {_f(r.get('background_busy_pct_before')):>15}%"
            )
        for r in ran:
            by_process = r["cpu"].get("server_cores_by_process", {})
            if len(by_process) > 1:
                parts = ", ".join(f"{name} {cores:.2f}" for name, cores in by_process.items())
                lines.append(f"   scenario {r['number']}: server cores by process: {parts}")
        noisy = [
            str(r["number"])
            for r in ran
            if (r["cpu"]["other_cores"] or 0) > 0.25
            or (r.get("background_busy_pct_before") or 0) > 15
        ]
        if noisy:
            lines.append(
                f"   !! other workloads used the CPUs during scenario(s) {', '.join(noisy)} "
                "('other' cores, or busy before the start): their numbers are too low"
            )

        lines += [
            "",
            "one client (unloaded service time) and per-step latency at full load, p50 / p99 ms",
            "(start = POST /start; confirm = share, token delivered to the comm side; "
            "landing = the waiting room, which joins the queue):",
        ]
        head = (
            f"{'#':<2} {'1-client flows/s':>16} {'p50 ms':>7} {'srv ms/flow':>11}   "
            f"{'start':>15} {'confirm':>15} {'landing':>15}"
        )
        lines += [head, "-" * len(head)]
        for r in ran:
            one = r.get("one_client")
            st = r["step_latency_ms"]
            steps = "".join(
                f" {_f(st[n]['p50']):>7}/{_f(st[n]['p99']):<7}"
                for n in ("start", "confirm", "landing")
            )
            if one:
                lines.append(
                    f"{r['number']:<2} {one['flows_per_s']:>16.1f} "
                    f"{one['latency_ms']['p50']:>7.1f} "
                    f"{_f(one['cpu']['server_ms_per_flow'], '.2f'):>11}  {steps}"
                )
            else:
                lines.append(f"{r['number']:<2} {'-':>16} {'-':>7} {'-':>11}  {steps}")

    paced = [r for r in ran if "paced" in r]
    if paced:
        lines += [
            "",
            f"paced: the same {params['concurrency']} clients, each starting a flow on its own "
            "schedule, offering the target rate together;",
            "latency counts from when a flow was due (a late start is waiting the system caused):",
        ]
        head = (
            f"{'#':<2} {'offered':>8} {'flows/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'errors':>6} {'server cores':>12} {'all targets':>11}"
        )
        lines += [head, "-" * len(head)]
        for r in paced:
            q = r["paced"]
            lat = q["latency_ms"]
            met = (
                q["flows_per_s"] >= TARGET_FLOWS_PER_S[r["keys"]]
                and lat["p99"] <= TARGET_P99_MS
                and q["errors"] == 0
            )
            lines.append(
                f"{r['number']:<2} {q['offered_per_s']:>8g} {q['flows_per_s']:>8.1f} "
                f"{lat['p50']:>8.1f} {lat['p99']:>8.1f} {lat['max']:>8.1f} {q['errors']:>6} "
                f"{_f(q['cpu']['server_cores'], '.2f'):>12} {_mark(met):>11}"
            )

    floor = report.get("crypto_floor")
    if floor:
        lines += [
            "",
            "crypto floor, in-process without HTTP (best of 5 rounds): issue = sign + encrypt, "
            "read = decrypt + verify,",
            "vault = AES-256-GCM encrypt + decrypt of the stored attributes; sealing of the auth "
            "step's state is not in the floor",
        ]
        head = (
            f"{'keys':<9} {'us/flow':>8} {'max flows/s on 1 core':>22}   {'issue':>7} {'read':>7} "
            f"{'vault':>6}   {'sealing':>7}"
        )
        lines += [head, "-" * len(head)]
        for kind, f in floor.items():
            p = f["parts"]
            lines.append(
                f"{'EC P-256' if kind == 'EC' else 'RSA-2048':<9} {f['us_per_flow']:>8.1f} "
                f"{f['max_flows_per_s_one_core']:>22.1f}   {p['issue']['us_per_call']:>7.1f} "
                f"{p['read']['us_per_call']:>7.1f} "
                f"{p['vault_encrypt_decrypt']['us_per_call']:>6.1f}   "
                f"{p['seal_unseal_not_in_floor']['us_per_call']:>7.1f}"
            )
    lines += [
        "",
        f"targets (informational, never fail the run): >= {TARGET_FLOWS_PER_S['EC']:.0f} flows/s "
        f"with EC keys, >= {TARGET_FLOWS_PER_S['RSA']:.0f} flows/s with RSA-2048, "
        f"p99 <= {TARGET_P99_MS:.0f} ms; errors must be 0",
    ]
    concurrency = params["concurrency"]
    lines.append(
        f"note: with {concurrency} closed-loop clients, mean latency = {concurrency} / "
        f"throughput (Little's law): p99 <= {TARGET_P99_MS:.0f} ms needs more than "
        f"{concurrency / (TARGET_P99_MS / 1000):.0f} flows/s back to back; the paced run "
        "measures it at the target rate"
    )
    gen = [r["cpu"]["loadgen_ms_per_flow"] for r in ran if r["cpu"]["loadgen_ms_per_flow"] > 0]
    if gen:
        per_flow = sorted(gen)[len(gen) // 2]
        need = per_flow * TARGET_FLOWS_PER_S["EC"] / 1000
        lines.append(
            f"note: the load generator needs ~{per_flow:.1f} ms CPU per flow, so at "
            f"{TARGET_FLOWS_PER_S['EC']:.0f} flows/s it alone would use {need:.1f} of the "
            f"{NCPU} CPUs"
        )
    lines += [f"note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


def write_results(report: dict[str, Any], stamp: str, name: str = "flows") -> tuple[Path, Path]:
    """``bench/results/<name>-<stamp>.json`` and ``<name>-latest.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"
    stamped = RESULTS_DIR / f"{name}-{stamp}.json"
    latest = RESULTS_DIR / f"{name}-latest.json"
    stamped.write_text(text)
    latest.write_text(text)
    return stamped, latest


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Full-flow benchmark of idcontact (see bench/README.md)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 s per scenario, 2 s warm-up, short crypto floor"
    )
    parser.add_argument("--duration", type=float, help="measurement seconds per scenario")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per scenario")
    parser.add_argument(
        "--serial",
        type=float,
        help="seconds of the one-client probe per scenario (0 = skip; default 3, quick 1.5)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[s.id for s in SCENARIOS] + [str(s.number) for s in SCENARIOS],
        help="run only this scenario (repeatable; number or id)",
    )
    parser.add_argument(
        "--paced",
        type=float,
        help="seconds of the paced run per scenario: the same clients, each on a schedule, "
        "offering --rate flows/s together (0 = skip; default: --duration)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="flows/s the paced run offers (default: the scenario's throughput target, "
        f"{TARGET_FLOWS_PER_S['EC']:g} with EC keys, {TARGET_FLOWS_PER_S['RSA']:g} with RSA)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL scenarios")
    parser.add_argument("--no-crypto", action="store_true", help="skip the crypto floor")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the servers, e.g. IDCONTACT_LOG_LEVEL=WARNING (repeatable)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the servers under pyinstrument (needs `pip install pyinstrument`); writes "
        "bench/results/profile-<scenario>-<stamp>[-role].txt and .pstats; numbers are "
        "slower than normal, so results are not written to flows-latest.json",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; do not write bench/results/*.json"
    )
    parser.add_argument(
        "--flows-out",
        metavar="PREFIX",
        help="write each paced flow (due time, latency) to PREFIX-<scenario>.jsonl",
    )
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load generator's HTTP client: raw (lean, bench/rawhttp.py; default) or httpx "
        "(as runs before 2026-12-01)",
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (5.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 5.0)
    args.serial = args.serial if args.serial is not None else (1.5 if args.quick else 3.0)
    args.paced = args.paced if args.paced is not None else args.duration
    args.server_env = server_env(parser, args.server_env)
    return args


def server_env(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--server-env NAME=VALUE`` options as a mapping (a clear error for anything else)."""
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--server-env: expected NAME=VALUE, got {item!r}")
        env[name] = value
    return env


def selected_scenarios(args: argparse.Namespace) -> list[Scenario]:
    if not args.scenario:
        return list(SCENARIOS)
    wanted = set(args.scenario)
    return [s for s in SCENARIOS if s.id in wanted or str(s.number) in wanted]


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@contextlib.contextmanager
def postgres_for(
    scenarios: list[Scenario], args: argparse.Namespace, runner: asyncio.Runner
) -> Iterator[tuple[Postgres | None, str]]:
    """Find (or start) PostgreSQL when a scenario needs it; stop it afterwards if we started it
    and nobody else is connected."""
    if args.no_postgres:
        yield None, "--no-postgres given"
        return
    if not any(s.database == "postgres" for s in scenarios):
        yield None, "not selected"
        return
    found, reason = find_postgres()
    postgres = found
    if found is not None:
        try:
            runner.run(other_postgres_clients(found.admin_url))
        except Exception as exc:
            postgres, reason = None, f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}"
    try:
        yield postgres, reason
    finally:
        if found is not None and found.started_by_us:
            try:
                others = runner.run(other_postgres_clients(found.admin_url))
            except Exception:
                others = 0
            if others:
                log(f"PostgreSQL left running: {others} other client(s) connected")
            else:
                subprocess.run(["bash", str(POSTGRES_SCRIPT), "stop"], capture_output=True)
                log("PostgreSQL stopped again (the bench had started it)")


def render_profiles(paths: list[Path]) -> None:
    for session in paths:
        text = session.with_suffix(".txt")
        if text.exists():
            log(f"  profile: {text.relative_to(REPO)} (and .pstats)")
        else:
            log(f"  profile {text.name}: not written (did the server exit cleanly?)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    scenarios = selected_scenarios(args)
    report: dict[str, Any] = {
        "benchmark": "idcontact full flows",
        "started_utc": stamp,
        "machine": machine_info(),
        "parameters": {
            "quick": args.quick,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "one_client_probe_s": args.serial,
            "paced_s": args.paced,
            "paced_rate": args.rate or "the scenario's target",
            "purpose": PURPOSE,
            "flow": [
                "POST /start (JSON, Accept: application/json)",
                "POST auth confirm form action=share (token delivered to comm attr_url)",
                "GET comm landing page (the waiting room: joins the queue)",
            ],
            "server_env": args.server_env,
            "profiled": args.profile,
            "load_generator": (
                "one raw keep-alive HTTP/1.1 connection per client and origin (bench/rawhttp.py)"
                if args.client == "raw"
                else "one httpx.AsyncClient per client"
            )
            + ", in the bench process"
            + (" on uvloop" if loop_factory() else ""),
            "client": args.client,
        },
        "targets": {
            "flows_per_s": TARGET_FLOWS_PER_S,
            "p99_ms": TARGET_P99_MS,
            "errors": 0,
        },
        "scenarios": [],
        "notes": [],
    }
    log(f"idcontact flow benchmark ({'quick' if args.quick else 'full'}), {stamp}")
    if args.client == "httpx":
        report["parameters"]["loadgen_tweaks"] = make_loadgen_cheap()

    if not args.no_crypto:
        seconds = 0.6 if args.quick else 3.0
        log(f"crypto floor ({seconds:g} s per key type) ...")
        report["crypto_floor"] = crypto_floor(seconds)

    failed = False
    profiles: list[Path] = []
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        with postgres_for(scenarios, args, runner) as (postgres, pg_reason):
            if postgres is not None:
                report["postgres"] = {"note": postgres.note}
            elif any(s.database == "postgres" for s in scenarios):
                report["notes"].append(f"PostgreSQL scenarios skipped: {pg_reason}")
            for scenario in scenarios:
                log(f"[{scenario.number}] {scenario.title} ...")
                if scenario.database == "postgres" and postgres is None:
                    report["scenarios"].append(
                        {
                            "number": scenario.number,
                            "id": scenario.id,
                            "title": scenario.title,
                            "keys": scenario.keys,
                            "skipped": f"PostgreSQL unavailable ({pg_reason})",
                        }
                    )
                    log(f"  skipped: {pg_reason}")
                    continue
                profile_to = (
                    RESULTS_DIR / f"profile-{scenario.id}-{stamp}.txt" if args.profile else None
                )
                result = run_scenario(scenario, args, runner, postgres, profile_to)
                report["scenarios"].append(result)
                if profile_to is not None:
                    if scenario.topology == "split":
                        profiles += [
                            profile_to.with_name(f"{profile_to.stem}-{role}{profile_to.suffix}")
                            for role in ("core", "auth", "comm")
                        ]
                    else:
                        profiles.append(profile_to)
                if (
                    result.get("error")
                    or result.get("errors")
                    or result.get("warmup", {}).get("errors")
                ):
                    failed = True
                if "flows_per_s" in result:
                    log(
                        f"  {result['flows_per_s']} flows/s, p50 {result['latency_ms']['p50']} ms,"
                        f" p99 {result['latency_ms']['p99']} ms, errors {result['errors']}"
                    )
                else:
                    log(f"  FAILED: {result.get('error')}")

    report["finished_utc"] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    print(render_tables(report), flush=True)
    if profiles:
        render_profiles(profiles)
    if not args.no_write and not args.profile:
        stamped, latest = write_results(report, stamp)
        log(f"\nwrote {stamped.relative_to(REPO)} and {latest.relative_to(REPO)}")
    if failed:
        log("\nFAILED: some flows failed or a scenario could not run (see above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
