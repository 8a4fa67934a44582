"""Sustained load: two instances behind nginx (TLS), full resident flows for ``--minutes``.

1. Starts two ``idcontact serve`` instances on PostgreSQL and Redis with a 1-minute retention
   (so the sweepers purge throughout the run), and nginx with deploy/nginx/idcontact.conf and a
   self-signed certificate in front of them, all on 127.0.0.1 (tests/flows/_cluster.py,
   tests/deploy/_nginx.py).
2. Measures the peak: ``--concurrency`` clients run flows back to back for ``--peak-seconds``
   (default 180), and the peak is the rate of the last ``--peak-window`` (60) seconds: by then
   the conversations of the first minute are past their retention and being purged, so the
   peak includes the sweeper's work, as the sustained phase does.
3. Runs flows at ``--fraction`` (default 80 %) of that peak, open loop (a flow starts every
   1/rate seconds whether or not earlier ones finished), for ``--minutes`` (default 10).
4. Reports throughput, latency percentiles of whole flows, the error rate, each instance's
   memory (RSS) over the run, the purge lag and purges (scraped from ``/metrics`` of each
   instance) and the push latency histogram.
5. Measures cross-instance push from outside, before the load and all through it: an agent's
   console stream is open at the second instance; once a second a resident opens the waiting
   room at the first (which puts the conversation in the queue), and the probe times from
   sending that request to the conversation's id arriving on the console stream.

    .venv/bin/python bench/load.py --minutes 10
    .venv/bin/python bench/load.py --minutes 1 --peak-seconds 20 --peak-window 10  # a look

PostgreSQL and Redis: ``$IDCONTACT_TEST_POSTGRES_URL`` (the run creates a database of its own
there, ``idcontact_load_<pid>``, and drops it at the end) and
``$IDCONTACT_TEST_REDIS_URL``; nginx: ``$IDCONTACT_TEST_NGINX`` or /usr/sbin/nginx
(``bash scripts/services/nginx install``). A benchmark, not a test: targets missed are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from tests.deploy._nginx import start_nginx  # noqa: E402
from tests.flows._cluster import (  # noqa: E402
    START,
    Cluster,
    Stream,
    logged_in_agent,
    start_cluster,
)
from tests.flows._servers import free_ports  # noqa: E402

from flows import (  # noqa: E402
    EXPECTED_ON_LANDING,
    START_BODY,
    FlowError,
    create_database,
    drop_database,
    machine_info,
    percentile,
)
from idcontact.cli import DEMO_CONFIG  # noqa: E402

RETENTION_MINUTES = 1
SAMPLE_SECONDS = 10.0
PUSH_TARGET_MS = 100.0


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", flush=True)


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else math.nan


def metric(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            out.append((labels, float(line.rsplit(" ", 1)[1])))
    return out


async def one_flow(client: httpx.AsyncClient, url: str) -> None:
    """A resident's whole flow (bench/flows.py) with the demo configuration: start, share,
    and the waiting room (which names the data and never shows it)."""
    r = await client.post(f"{url}/start", json=START_BODY, headers={"Accept": "application/json"})
    if r.status_code != 200:
        raise FlowError(f"start: HTTP {r.status_code}")
    r = await client.post(r.json()["client_url"], data={"action": "share"})
    if r.status_code != 303 or "location" not in r.headers:
        raise FlowError(f"confirm: HTTP {r.status_code}")
    r = await client.get(r.headers["location"])
    if r.status_code != 200 or "U bent nummer" not in r.text:
        raise FlowError(f"waiting room: HTTP {r.status_code}")


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)  # monotonic, one per latency
    failures: list[tuple[float, str]] = field(default_factory=list)  # monotonic, kind
    started: int = 0

    @property
    def errors(self) -> Counter[str]:
        return Counter(kind for _, kind in self.failures)

    async def flow(self, http: httpx.AsyncClient, url: str) -> None:
        """One flow, timed and counted."""
        self.started += 1
        t0 = time.perf_counter()
        try:
            await one_flow(http, url)
            self.latencies.append(time.perf_counter() - t0)
            self.finished.append(time.monotonic())
        except (FlowError, httpx.HTTPError) as exc:
            self.failures.append((time.monotonic(), str(exc) or type(exc).__name__))

    def between(self, start: float, end: float) -> Run:
        """The flows that ended in [start, end): the measured window of a longer run."""
        kept = [i for i, t in enumerate(self.finished) if start <= t < end]
        return Run(
            latencies=[self.latencies[i] for i in kept],
            finished=[self.finished[i] for i in kept],
            failures=[f for f in self.failures if start <= f[0] < end],
        )


async def closed_loop(url: str, verify: Any, concurrency: int, seconds: float) -> Run:
    """``concurrency`` clients back to back: the peak."""
    run = Run()
    end = time.monotonic() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(verify=verify, timeout=60, trust_env=False) as http:
            while time.monotonic() < end:
                await run.flow(http, url)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return run


async def open_loop(url: str, verify: Any, rate: float, seconds: float, pool: int) -> Run:
    """A flow every 1/``rate`` s for ``seconds``, on ``pool`` clients (at most that many at
    once)."""
    run = Run()
    clients = [httpx.AsyncClient(verify=verify, timeout=60, trust_env=False) for _ in range(pool)]
    free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
    for c in clients:
        free.put_nowait(c)
    tasks: set[asyncio.Task[None]] = set()

    async def flow() -> None:
        http = await free.get()
        try:
            await run.flow(http, url)
        finally:
            free.put_nowait(http)

    start = time.monotonic()
    n = 0
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        due = start + n / rate
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(flow())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)
    for c in clients:
        await c.aclose()
    return run


def summary(run: Run, seconds: float) -> dict[str, Any]:
    lat = sorted(run.latencies)
    done = len(lat)
    failed = sum(run.errors.values())
    return {
        "flows": done,
        "errors": failed,
        "error_rate": failed / max(1, done + failed),
        "flows_per_s": done / seconds,
        "p50_ms": percentile(lat, 50) * 1000,
        "p95_ms": percentile(lat, 95) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": (lat[-1] * 1000) if lat else math.nan,
        "error_kinds": dict(run.errors.most_common(5)),
    }


def direct_client(base: str, cookies: httpx.Cookies | None = None) -> httpx.Client:
    """A client for one instance's own http:// port that still sends the Secure cookies an
    https public URL makes (httpx, like browsers, would keep them off plain http)."""
    client = httpx.Client(base_url=base, timeout=60, trust_env=False, cookies=cookies)

    def carry(request: httpx.Request) -> None:
        jar = client.cookies.jar
        if len(jar):
            request.headers["Cookie"] = "; ".join(f"{c.name}={c.value}" for c in jar)

    client.event_hooks["request"].append(carry)
    return client


class PushProbe:
    """Cross-instance push timed from outside (issue #11.1: ≤ 100 ms): a console stream at
    ``cluster.servers[1]``, changes made at ``cluster.servers[0]``, in a thread of its own so
    the load generator's event loop does not delay the clock."""

    def __init__(self, cluster: Cluster, verify: Any) -> None:
        self.at, self.console = cluster.servers[0], cluster.servers[1]
        # Logged in through nginx (the cookies are Secure: the public URL is https), then
        # straight to the second instance with those cookies.
        self.agent = logged_in_agent(cluster, cluster.public_url, "probe", verify=verify)
        self.stream = self._open()
        self.reopened: dict[str, int] = {}
        # Probes not heard in time: (phase, conversation id, sent at); the report looks for
        # them again at the end, to tell a late push from one that never came.
        self.unheard: list[tuple[str, str, float]] = []
        self.samples: dict[str, list[float]] = {}
        self.missed: dict[str, int] = {}
        self.pushed: dict[str, list[float]] = {}
        self.why: dict[str, Counter[str]] = {}
        self._phase = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _open(self) -> Stream:
        stream = Stream(
            direct_client(self.console.url, self.agent.cookies), "/agent/default/events"
        )
        if not stream.saw("event: hello", 20):
            raise SystemExit("load: the probe's console stream did not open")
        return stream

    def probe(self, http: httpx.Client) -> float | str:
        """One change at the first instance; ms until the console at the second heard of it,
        or why it did not. A stream the server ended (a console that fell behind is told to
        reconnect and reload) is opened again first, as the browser's EventSource does."""
        if self.stream.ended.is_set():
            self.reopened[self._phase] = self.reopened.get(self._phase, 0) + 1
            self.stream = self._open()
        started = http.post("/start", json=START, headers={"Accept": "application/json"})
        started.raise_for_status()
        shared = http.post(
            httpx.URL(started.json()["client_url"]).raw_path.decode(), data={"action": "share"}
        )
        landing = httpx.URL(shared.headers["location"]).raw_path.decode()
        conversation_id = landing.rsplit("/", 1)[1]
        t0 = time.perf_counter()
        page = http.get(landing)  # joins the queue: the event to every console
        page.raise_for_status()
        index = self.stream.find(conversation_id, 10)
        if index is None:
            if self.stream.ended.is_set():
                return "console stream ended"
            queued = EXPECTED_ON_LANDING in page.text
            self.unheard.append((self._phase, conversation_id, t0))
            return f"not heard in 10 s ({'queued' if queued else 'landing: not in the queue'})"
        # The event's own "at" is when the first instance published the committed change:
        # from there to the console at the second is the push itself (one clock: one machine).
        at = json.loads(self.stream.lines[index].removeprefix("data: "))["at"]
        self.pushed.setdefault(self._phase, []).append((self.stream.clock[index] - at) * 1000)
        return (self.stream.arrived[index] - t0) * 1000

    def run(self, phase: str, count: int | None = None, every: float = 1.0) -> None:
        """Probe every ``every`` s: ``count`` times now, or in the background until stopped."""
        self._phase = phase
        self.samples.setdefault(phase, [])
        self.missed.setdefault(phase, 0)
        self.why.setdefault(phase, Counter())
        if count is not None:
            self._loop(count, every)
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(None, every), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self, count: int | None, every: float) -> None:
        with direct_client(self.at.url) as http:
            n = 0
            while (count is None or n < count) and not self._stop.is_set():
                try:
                    ms = self.probe(http)
                except httpx.HTTPError as exc:
                    ms = f"{type(exc).__name__}: {exc}"[:120]
                if isinstance(ms, str):
                    self.missed[self._phase] += 1
                    self.why[self._phase][ms] += 1
                else:
                    self.samples[self._phase].append(ms)
                n += 1
                self._stop.wait(every)

    def _later(self, phase: str) -> list[float | None]:
        """For each probe of ``phase`` not heard in time: seconds until it was heard after all,
        or ``None`` if it never was (by the end of the run, on the stream open then)."""
        out: list[float | None] = []
        for was, conversation_id, t0 in self.unheard:
            if was == phase:
                index = self.stream.find(conversation_id, 0)
                out.append(None if index is None else self.stream.arrived[index] - t0)
        return out

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target_ms": PUSH_TARGET_MS}
        for phase, values in self.samples.items():
            ordered = sorted(values)
            out[phase] = {
                "probes": len(ordered),
                "missed": self.missed[phase],
                "missed_why": dict(self.why[phase]),
                "stream_reopened": self.reopened.get(phase, 0),
                "unheard_later": self._later(phase),
                "p50_ms": percentile(ordered, 50),
                "p99_ms": percentile(ordered, 99),
                "max_ms": ordered[-1] if ordered else math.nan,
                "within_target": sum(v <= PUSH_TARGET_MS for v in ordered),
                # From the change's event (published after the commit) to the console.
                "push_p50_ms": percentile(sorted(self.pushed.get(phase, [])), 50),
                "push_p99_ms": percentile(sorted(self.pushed.get(phase, [])), 99),
                "push_max_ms": max(self.pushed.get(phase, [math.nan])),
            }
        return out


def histogram_quantile(text: str, name: str, q: float) -> float:
    """The ``q`` quantile (upper bucket bound) of a Prometheus histogram, summed over series."""
    buckets: dict[float, float] = {}
    for labels, value in metric(text, name + "_bucket"):
        le = float(labels["le"]) if labels["le"] != "+Inf" else math.inf
        buckets[le] = buckets.get(le, 0.0) + value
    if not buckets:
        return math.nan
    total = buckets[math.inf]
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le
    return math.inf


def main(args: argparse.Namespace) -> int:
    postgres = os.environ.get("IDCONTACT_TEST_POSTGRES_URL")
    redis = os.environ.get("IDCONTACT_TEST_REDIS_URL")
    nginx_bin = os.environ.get("IDCONTACT_TEST_NGINX", "/usr/sbin/nginx")
    if not postgres or not redis or not Path(nginx_bin).exists():
        print("load: needs IDCONTACT_TEST_POSTGRES_URL, IDCONTACT_TEST_REDIS_URL and nginx")
        return 2
    work = Path(tempfile.mkdtemp(prefix="idc-load-"))
    config = work / "idcontact.toml"
    config.write_text(
        DEMO_CONFIG.read_text(encoding="utf-8").replace(
            "retention_minutes = 120", f"retention_minutes = {RETENTION_MINUTES}", 1
        ),
        encoding="utf-8",
    )
    proxy, *ports = free_ports(3)
    public = f"https://127.0.0.1:{proxy}"
    # A database of its own, dropped afterwards: the given one is only used to create it.
    name = f"idcontact_load_{os.getpid()}"
    database = asyncio.run(create_database(postgres, name))
    try:
        return _run(args, work, config, database, redis, nginx_bin, proxy, ports, public)
    finally:
        asyncio.run(drop_database(postgres, name))


def _run(
    args: argparse.Namespace,
    work: Path,
    config: Path,
    database: str,
    redis: str,
    nginx_bin: str,
    proxy: int,
    ports: list[int],
    public: str,
) -> int:
    cluster = start_cluster(
        work,
        postgres=database,
        redis=redis,
        public_url=public,
        ports=ports,
        config=config,
        extra_env={"IDCONTACT_LOG_LEVEL": "WARNING"},  # the access log costs: bench/README.md
    )
    try:
        nginx = start_nginx(nginx_bin, work, proxy, ports)
        try:
            report = asyncio.run(measure(args, public, nginx.ssl_context(), cluster))
        finally:
            nginx.stop()
    finally:
        cluster.stop()
        shutil.rmtree(work / "data", ignore_errors=True)  # keys and secrets; the logs stay
    print(json.dumps(report, indent=2))
    if args.write:
        out = BENCH / "results" / f"load-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        (BENCH / "results" / "load-latest.json").write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {out}")
    ok = report["sustained"]["errors"] == 0
    print(f"errors: {report['sustained']['errors']} (target 0) {'OK' if ok else 'MISSED'}")
    for phase in ("quiet", "sustained"):
        push = report["push_probe"].get(phase)
        if push:
            hit = "OK" if push["push_p99_ms"] <= PUSH_TARGET_MS else "MISSED"
            print(
                f"cross-instance push ({phase}): change -> console p50 "
                f"{push['push_p50_ms']:.1f} ms, p99 {push['push_p99_ms']:.1f} ms "
                f"(target {PUSH_TARGET_MS:.0f}) {hit}; with the request that made it p50 "
                f"{push['p50_ms']:.1f} ms, p99 {push['p99_ms']:.1f} ms; "
                f"{push['missed']} not heard in 10 s"
            )
    return 0 if ok else 1


async def measure(
    args: argparse.Namespace, public: str, verify: Any, cluster: Cluster
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),  # runs on other CPUs differ: compare like with like
    }
    memory: list[dict[str, float]] = []
    lags: list[float] = []

    missed = 0

    async def sample() -> None:
        nonlocal missed
        memory.append({s.url: rss_mib(s.process.pid) for s in cluster.servers})
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            for s in cluster.servers:
                try:
                    text = (await http.get(f"{s.url}/metrics")).text
                except httpx.HTTPError:
                    missed += 1  # an instance too busy to answer the scrape in time
                    continue
                lags.extend(v for _, v in metric(text, "idcontact_purge_lag_seconds"))

    async def sampler(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)

    probe = await asyncio.to_thread(PushProbe, cluster, verify)
    log(f"push probe, no load: {args.quiet_probes} changes at one instance, console at the other")
    await asyncio.to_thread(probe.run, "quiet", args.quiet_probes)
    log(
        f"peak: {args.concurrency} clients for {args.peak_seconds:.0f} s, "
        f"measured over the last {args.peak_window:.0f} s"
    )
    await closed_loop(public, verify, args.concurrency, 5)  # warm-up
    window = min(args.peak_window, args.peak_seconds)
    window_start = time.monotonic() + args.peak_seconds - window
    lags_before = len(lags)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(stop))
    peak = await closed_loop(public, verify, args.concurrency, args.peak_seconds)
    stop.set()
    await sampling
    report["peak"] = {
        "seconds": args.peak_seconds,
        "window_seconds": window,
        **summary(peak.between(window_start, window_start + window), window),
        "errors_whole_phase": sum(peak.errors.values()),
        "flows_per_s_whole_phase": len(peak.latencies) / args.peak_seconds,
        "max_purge_lag_s": max(lags[lags_before:], default=math.nan),
    }
    del lags[lags_before:]
    rate = args.fraction * report["peak"]["flows_per_s"]
    if rate <= 0:
        raise SystemExit(f"load: no flow succeeded at the peak: {report['peak']['error_kinds']}")
    log(f"peak {report['peak']['flows_per_s']:.1f} flows/s; sustaining {rate:.1f} flows/s")
    seconds = args.minutes * 60
    memory.clear()  # growth is the sustained phase's
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(stop))
    probe.run("sustained")
    sustained = await open_loop(public, verify, rate, seconds, args.pool)
    await asyncio.to_thread(probe.stop)
    stop.set()
    await sampling
    await sample()
    report["sustained"] = {"target_flows_per_s": rate, **summary(sustained, seconds)}
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        texts = [(await http.get(f"{s.url}/metrics")).text for s in cluster.servers]
    purged = sum(v for t in texts for _, v in metric(t, "idcontact_purged_conversations_total"))
    first, middle, last = memory[0], memory[len(memory) // 2], memory[-1]
    report["memory_mib"] = {
        url: {
            "start": first[url],
            "middle": middle[url],
            "end": last[url],
            "growth": last[url] - first[url],
            "growth_second_half": last[url] - middle[url],
            "samples": [round(m[url], 1) for m in memory],
        }
        for url in first
    }
    report["purge"] = {
        "purged": purged,
        "max_lag_s": max(lags) if lags else math.nan,
        "retention_minutes": RETENTION_MINUTES,
        "missed_scrapes": missed,
    }
    joined = "\n".join(texts)
    report["push_probe"] = probe.report()
    probe.agent.close()
    report["push_latency_s"] = {
        "p50_le": histogram_quantile(joined, "idcontact_push_latency_seconds", 0.5),
        "p99_le": histogram_quantile(joined, "idcontact_push_latency_seconds", 0.99),
    }
    return report


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="sustained phase (default 10)")
    p.add_argument("--peak-seconds", type=float, default=180.0, help="peak phase (180)")
    p.add_argument(
        "--peak-window",
        type=float,
        default=60.0,
        help="the peak is the rate of the phase's last this many seconds (60); the default\n"
        "phase is long enough that the first minute's conversations are purged in it",
    )
    p.add_argument("--concurrency", type=int, default=32, help="clients for the peak (32)")
    p.add_argument("--fraction", type=float, default=0.8, help="of the peak to sustain (0.8)")
    p.add_argument("--pool", type=int, default=256, help="open-loop clients at most (256)")
    p.add_argument("--quiet-probes", type=int, default=100, help="push probes before (100)")
    p.add_argument("--no-write", dest="write", action="store_false", help="print only")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main(parse_args()))
