"""Operations: readiness, Prometheus metrics and draining on SIGTERM (docs/operations.md).

Metrics carry tenants, purposes, methods, queues, states and reasons: configuration tags and
fixed words. Never a conversation id, code, number or attribute: a label value is kept for
as long as the monitoring keeps its series, far beyond any retention of ours.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import ipaddress
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol, runtime_checkable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, TimeoutError as PoolTimeoutError
from starlette.types import ASGIApp, Receive, Scope, Send

from idcontact.domain.lifecycle import State
from idcontact.errors import IdContactError, SlotUsedError, TokenError
from idcontact.heap import HeapKeeper
from idcontact.settings import Ops
from idcontact.web.problem import problem
from idcontact.web.routing import Router

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0
"""Seconds one readiness check may take before it counts as failed."""
DRAIN_RETRY_AFTER = "2"

# -- readiness ------------------------------------------------------------------------------


@runtime_checkable
class ReadyProbe(Protocol):
    """A plugin with an outside backend (an IRMA server, a SAML IdP, an OpenID4VP wallet
    relay) implements this; ``/readyz`` reports it by its method's name."""

    async def ready(self) -> bool: ...


Check = Callable[[], Awaitable[bool]]


async def _run_check(check: Check) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            return bool(await check())
    except Exception:  # unreachable, refused, timed out: all "not ready"; the name says where
        return False


def database_check(run: Callable[..., Awaitable[Any]]) -> Check:
    """``SELECT 1`` through the instance's own database handle."""

    async def check() -> bool:
        await run(lambda conn: conn.execute(text("SELECT 1")).scalar_one())
        return True

    return check


# -- metrics --------------------------------------------------------------------------------

FLOW_LABELS = ("tenant", "purpose", "method")
COMPLETED: frozenset[State] = frozenset({"wrap_up", "answered"})
BEFORE_AGENT: frozenset[State] = frozenset({"created", "authenticated", "waiting", "offered"})


class Metrics:
    """The instance's Prometheus registry (its own, not the process-global one: several apps
    in one test process must not share counters)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.flows_started = Counter(
            "idcontact_flows_started", "Conversations started", FLOW_LABELS, registry=r
        )
        self.flows_completed = Counter(
            "idcontact_flows_completed",
            "Conversations that reached an agent and were finished",
            FLOW_LABELS,
            registry=r,
        )
        self.flows_failed = Counter(
            "idcontact_flows_failed",
            "Conversations that failed (disclosure failed, not eligible, or ended before an "
            "agent took them: abandoned)",
            (*FLOW_LABELS, "reason"),
            registry=r,
        )
        self.transitions = Counter(
            "idcontact_conversation_transitions",
            "Lifecycle steps by target state",
            (*FLOW_LABELS, "state"),
            registry=r,
        )
        self.queue_waiting = Gauge(
            "idcontact_queue_waiting", "Residents waiting", ("tenant", "queue"), registry=r
        )
        self.queue_connected = Gauge(
            "idcontact_queue_connected",
            "Conversations with an agent",
            ("tenant", "queue"),
            registry=r,
        )
        self.queue_longest_wait = Gauge(
            "idcontact_queue_longest_wait_seconds",
            "How long the longest-waiting resident has waited",
            ("tenant", "queue"),
            registry=r,
        )
        self.queue_expected_wait = Gauge(
            "idcontact_queue_expected_wait_seconds",
            "Expected wait for someone joining now (-1: no agent available)",
            ("tenant", "queue"),
            registry=r,
        )
        self.queue_agents = Gauge(
            "idcontact_queue_agents",
            "Agents serving the queue, by state",
            ("tenant", "queue", "state"),
            registry=r,
        )
        self.push_latency = Histogram(
            "idcontact_push_latency_seconds",
            "From a change to its event reaching this instance's subscribers",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.purged = Counter(
            "idcontact_purged_conversations", "Conversations purged by the sweeper", registry=r
        )
        self.purge_lag = Gauge(
            "idcontact_purge_lag_seconds",
            "How long the oldest conversation past its retention has been waiting for the "
            "sweeper (0: none)",
            ("tenant",),
            registry=r,
        )
        self.sweeps = Counter("idcontact_sweeps", "Sweeper runs by result", ("result",), registry=r)
        self.sweeper = Gauge(
            "idcontact_sweeper_lease",
            "1 while this instance holds the sweeper's lease (one instance sweeps at a time)",
            registry=r,
        )
        self.last_sweep = Gauge(
            "idcontact_last_sweep_timestamp_seconds",
            "When this instance's sweeper last finished a run",
            registry=r,
        )
        self.token_rejections = Counter(
            "idcontact_token_rejections",
            "Attribute tokens refused, by reason",
            ("reason",),
            registry=r,
        )
        self.link_failures = Counter(
            "idcontact_link_failures",
            "Failed phone link attempts, by reason",
            ("tenant", "reason"),
            registry=r,
        )
        self.draining = Gauge(
            "idcontact_draining", "1 while this instance drains (SIGTERM)", registry=r
        )
        self.gc_frozen = Gauge(
            "idcontact_gc_frozen_objects",
            "Objects in the garbage collector's frozen generation, which no collection walks "
            "(grows with open conversations; back down after each full walk)",
            registry=r,
        )
        self.gc_full_walk = Gauge(
            "idcontact_gc_full_walk_seconds",
            "How long the last walk of everything took: every request waited that long",
            registry=r,
        )

    # The hooks the rest of the application calls (each a plain callable, no import of us).

    def step(
        self, tenant: str, purpose: str, method: str, state: State, previous: State | None
    ) -> None:
        """One lifecycle step of a conversation (``previous`` ``None``: it was just made)."""
        labels = (tenant, purpose, method)
        self.transitions.labels(*labels, state).inc()
        if previous is None:
            self.flows_started.labels(*labels).inc()
        if state in ("failed", "ineligible"):
            self.flows_failed.labels(*labels, state).inc()
        elif state in COMPLETED or (state == "ended" and previous == "connected"):
            self.flows_completed.labels(*labels).inc()
        elif state == "ended" and previous in BEFORE_AGENT:
            self.flows_failed.labels(*labels, "abandoned").inc()

    def pushed(self, seconds: float) -> None:
        self.push_latency.observe(max(seconds, 0.0))

    def link_failed(self, tenant: str, reason: str) -> None:
        self.link_failures.labels(tenant, reason).inc()

    def holds_sweeper(self, held: bool) -> None:
        self.sweeper.set(int(held))

    def swept(self, purged: int, *, ok: bool) -> None:
        self.purged.inc(purged)
        self.sweeps.labels("ok" if ok else "error").inc()
        self.last_sweep.set(time.time())


@dataclass
class Scrape:
    """Gauges read at scrape time from the database: queue lengths, waits, purge lag."""

    queues: Mapping[str, Any]
    """tenant slug → ``QueueService``"""
    stores: Mapping[str, Any]
    """tenant slug → ``Conversations``"""
    heap: HeapKeeper | None = None
    """The serving process's collector policy (none in tests that build an app)."""

    async def refresh(self, metrics: Metrics) -> None:
        for slug, queues in self.queues.items():
            for row in await queues.stats():
                tag = str(row["queue"])
                metrics.queue_waiting.labels(slug, tag).set(float(row.get("waiting", 0)))
                metrics.queue_connected.labels(slug, tag).set(float(row.get("connected", 0)))
                metrics.queue_longest_wait.labels(slug, tag).set(
                    float(row.get("longest_wait_seconds", 0))
                )
                agents = row.get("agents")
                for state, count in (agents if isinstance(agents, dict) else {}).items():
                    metrics.queue_agents.labels(slug, tag, str(state)).set(float(count))
                estimate = await queues.estimate(tag)
                expected = estimate.expected_seconds
                metrics.queue_expected_wait.labels(slug, tag).set(
                    -1.0 if expected is None else float(expected)
                )
        for slug, store in self.stores.items():
            metrics.purge_lag.labels(slug).set(await store.purge_lag())
        metrics.gc_frozen.set(gc.get_freeze_count())
        if self.heap is not None:
            metrics.gc_full_walk.set(self.heap.last_full_seconds)


# -- draining -------------------------------------------------------------------------------

STREAM_ACCEPT = b"text/event-stream"
START_SUFFIXES = ("/start", "/start_communication", "/start_authentication")
OUTAGES: tuple[type[Exception], ...] = (
    DBAPIError,
    PoolTimeoutError,
    ConnectionError,
    RedisConnectionError,
)
"""Errors that mean a dependency is unreachable (or, for the pool's timeout, overloaded):
``503 unavailable`` rather than a 500 (which would also end the client's connection)."""


@dataclass
class Drain:
    """SIGTERM's first phase: for ``seconds`` the instance refuses what would tie a resident
    or a console to it (new conversations, new live streams) with 503, so a proxy sends them
    to another instance, while open streams are told to reconnect there; then the server stops
    listening and finishes what is in flight (uvicorn's graceful shutdown)."""

    seconds: float
    on_begin: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    draining: bool = False
    _previous: Any = None

    async def begin(self) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("draining: refusing new conversations", extra={"seconds": self.seconds})
        for hook in self.on_begin:
            try:
                await hook()
            except Exception:
                log.exception("drain hook failed")

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put ourselves before the server's SIGTERM handler (main thread only: in tests with
        an in-process client there is no signal to handle)."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return
        self._previous = previous

        def handle(signum: int, frame: FrameType | None) -> None:
            if self.draining:  # a second SIGTERM: stop now
                previous(signum, frame)
                return
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._then_stop(signum)))

        signal.signal(signal.SIGTERM, handle)

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    async def _then_stop(self, signum: int) -> None:
        await self.begin()
        await asyncio.sleep(self.seconds)
        previous = self._previous
        if previous is not None:
            previous(signum, None)

    def refuses(self, scope: Scope) -> bool:
        """Whether this request would start something new that should go elsewhere."""
        if not self.draining:
            return False
        if scope["type"] == "websocket":
            return True
        path: str = scope.get("path", "")
        if scope.get("method") == "POST" and path.endswith(START_SUFFIXES):
            return True
        accept = dict(scope.get("headers", [])).get(b"accept", b"")
        return STREAM_ACCEPT in accept


class DrainMiddleware:
    """503 problem+json (``Retry-After``) for what :meth:`Drain.refuses`; a WebSocket is
    closed with 1012 (service restart), on which the chat page reconnects."""

    def __init__(self, app: ASGIApp, *, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.drain.refuses(scope):
            if scope["type"] == "websocket":
                if "websocket.http.response" not in scope.get("extensions", {}):
                    await send({"type": "websocket.close", "code": 1012})
                    return
                # Else a 503 to the handshake (Starlette sends it as the denial response):
                # a proxy tries the next instance.
            response = problem(503, "draining", "This instance is shutting down; try again", None)
            response.headers["Retry-After"] = DRAIN_RETRY_AFTER
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# -- the routes -----------------------------------------------------------------------------


def _proxied(request: Request) -> bool:
    headers = request.headers
    return "x-forwarded-for" in headers or "forwarded" in headers or "x-real-ip" in headers


def metrics_allowed(request: Request, config: Ops) -> bool:
    """The access rule of ``/metrics``: the bearer token, or a direct (unproxied) client in
    one of ``metrics_networks``."""
    if config.metrics_token is not None:
        given = request.headers.get("authorization", "")
        expected = "Bearer " + config.metrics_token.get_secret_value()
        if hmac.compare_digest(given.encode(), expected.encode()):
            return True
    if _proxied(request) or request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(net, strict=False) for net in config.metrics_networks
    )


def ops_router(
    config: Ops,
    metrics: Metrics,
    checks: Mapping[str, Check],
    drain: Drain,
    scrape: Scrape | None,
) -> APIRouter:
    router = Router(include_in_schema=False)

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        names = sorted(checks)
        results = await asyncio.gather(*(_run_check(checks[n]) for n in names))
        report = {n: "ok" if ok else "fail" for n, ok in zip(names, results, strict=True)}
        ready = all(results) and not drain.draining
        body = {
            "status": "ok" if ready else ("draining" if drain.draining else "fail"),
            "checks": report,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics")
    async def metrics_page(request: Request) -> Response:
        if not metrics_allowed(request, config):
            response = problem(403, "forbidden", "Metrics are not available to this client")
            return response
        if scrape is not None:
            try:
                await scrape.refresh(metrics)
            except Exception:
                log.warning("metrics scrape: database gauges not refreshed", exc_info=True)
        metrics.draining.set(1 if drain.draining else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def install(
    app: FastAPI,
    config: Ops,
    metrics: Metrics,
    checks: Mapping[str, Check],
    drain: Drain,
    scrape: Scrape | None,
) -> None:
    """Mount ``/readyz`` and ``/metrics``, count refused tokens, refuse new work while
    draining."""
    app.include_router(ops_router(config, metrics, checks, drain, scrape))
    app.add_middleware(DrainMiddleware, drain=drain)

    async def on_token(_request: Request, exc: Exception) -> JSONResponse:
        # Same answer as every other error of ours (web/problem.py), counted by reason.
        if not isinstance(exc, IdContactError):  # pragma: no cover - registered for these
            raise exc
        metrics.token_rejections.labels(exc.slug).inc()
        return problem(exc.status, exc.slug, exc.title, exc.detail)

    app.add_exception_handler(TokenError, on_token)
    app.add_exception_handler(SlotUsedError, on_token)

    async def on_outage(_request: Request, exc: Exception) -> JSONResponse:
        # The database or Redis is unreachable (restarting, failing over): nothing was
        # committed, so the same request may simply be sent again.
        log.warning("a dependency is unreachable", extra={"exc_type": type(exc).__name__})
        response = problem(
            503, "unavailable", "A service this depends on is unavailable; try again shortly"
        )
        response.headers["Retry-After"] = DRAIN_RETRY_AFTER
        return response

    for outage in OUTAGES:
        app.add_exception_handler(outage, on_outage)


def plugin_checks(probes: Sequence[tuple[str, object]]) -> dict[str, Check]:
    """Readiness checks of the plugins that have an outside backend."""
    out: dict[str, Check] = {}
    for name, plugin in probes:
        if isinstance(plugin, ReadyProbe):
            out[name] = plugin.ready
    return out
