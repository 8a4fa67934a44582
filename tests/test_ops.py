"""``/readyz``, ``/metrics`` (content and access rule) and draining, in process."""

from __future__ import annotations

import asyncio
import logging
import re
import warnings
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from idcontact.ops import Drain, Metrics
from idcontact.plugins.auth.demo import DemoAuthPlugin
from idcontact.plugins.base import INPROC_BASE, Kind
from tests.conftest import (
    CANARY_BSN,
    CANARY_NAME,
    PUBLIC,
    AppFactory,
    Instance,
    demo_settings,
    path_of,
)
from tests.flows.test_core_flows import JSON, START

pytestmark = pytest.mark.anyio

TOKEN = "metrics-token-0123456789-abcdefghijkl"


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in an exposition, ``None`` when it is absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def waiting_resident(instance: Instance) -> str:
    """A full flow up to the waiting room; returns the waiting room's path."""
    started = await instance.client.post("/start", json=START, headers=JSON)
    assert started.status_code == 200, started.text
    confirm = path_of(started.json()["client_url"])
    shared = await instance.client.post(confirm, data={"action": "share"})
    assert shared.status_code == 303
    return path_of(shared.headers["location"])


class ProbedDemo(DemoAuthPlugin):
    """The demo plugin with an outside backend that a test switches off."""

    kind: ClassVar[Kind] = "auth"
    up: ClassVar[bool] = True

    async def ready(self) -> bool:
        return ProbedDemo.up


async def test_readyz_names_each_check_and_fails_with_one(make_app: AppFactory) -> None:
    instance: Instance = await make_app(plugin_classes={("auth", "demo"): ProbedDemo})
    ProbedDemo.up = True
    ready = await instance.client.get("/readyz")
    assert ready.status_code == 200
    # The demo configuration's Yivi method uses the built-in IRMA server: ready with us.
    assert ready.json() == {
        "status": "ok",
        "checks": {"database": "ok", "auth.demo": "ok", "auth.yivi": "ok"},
    }
    ProbedDemo.up = False
    down = await instance.client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["checks"] == {"database": "ok", "auth.demo": "fail", "auth.yivi": "ok"}
    # Liveness is not readiness: the process is alive.
    assert (await instance.client.get("/healthz")).status_code == 200


async def test_metrics_count_flows_and_refusals_without_personal_data(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance: Instance = await make_app()
    room = await waiting_resident(instance)
    conversation_id = room.rsplit("/", 1)[1]
    ended = await instance.client.post(f"{room}/end")
    assert ended.status_code == 303
    bad = await instance.client.post(
        "/comm/demo/attr/no-such-slot",
        content=b"not.a.token",
        headers={"Content-Type": "application/jwt"},
    )
    assert bad.status_code in (400, 404)
    refused = await instance.client.post(
        "/start", json={**START, "auth_result": "x.y.z", "auth_method": None}, headers=JSON
    )
    assert refused.status_code == 400

    page = await instance.client.get("/metrics")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    text = page.text
    flow = {"tenant": "default", "purpose": "report_move", "method": "demo"}
    assert sample(text, "idcontact_flows_started_total", **flow) == 1.0  # not the refused one
    assert sample(text, "idcontact_flows_failed_total", **flow, reason="abandoned") == 1.0
    assert sample(text, "idcontact_conversation_transitions_total", **flow, state="authenticated")
    assert sample(text, "idcontact_token_rejections_total", reason="malformed-token") == 1.0
    assert sample(text, "idcontact_queue_waiting", tenant="default", queue="general") == 0.0
    assert sample(text, "idcontact_purge_lag_seconds", tenant="default") == 0.0
    assert sample(text, "idcontact_push_latency_seconds_count") is not None
    for secret in (CANARY_NAME, CANARY_BSN, conversation_id):
        assert secret not in text


async def test_metrics_access_rule(tmp_path: Path, make_app: AppFactory) -> None:
    settings = demo_settings(tmp_path, ops={"metrics_token": TOKEN})
    instance: Instance = await make_app(settings)
    transport = httpx.ASGITransport(app=instance.app, client=("203.0.113.7", 4711))
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as outside:
        denied = await outside.get("/metrics")
        assert denied.status_code == 403
        assert denied.headers["content-type"] == "application/problem+json"
        wrong = await outside.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        allowed = await outside.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200 and "idcontact_flows_started" in allowed.text
    # Loopback is allowed, but not when a proxy forwarded the request from elsewhere.
    assert (await instance.client.get("/metrics")).status_code == 200
    proxied = await instance.client.get("/metrics", headers={"X-Forwarded-For": "198.51.100.1"})
    assert proxied.status_code == 403


async def test_drain_refuses_new_work_ends_streams_and_serves_the_rest(
    make_app: AppFactory,
) -> None:
    instance: Instance = await make_app()
    room = await waiting_resident(instance)
    stream_headers = {"Accept": "text/event-stream"}
    # A live stream (the waiting room's) that would stay open for many minutes.
    stream = asyncio.create_task(instance.client.get(f"{room}/events", headers=stream_headers))
    await asyncio.sleep(0)
    bus = instance.services.bus
    for _ in range(200):  # until the stream has subscribed
        if bus.has_subscribers("default", "conversation"):
            break
        await asyncio.sleep(0.01)
    assert not stream.done()

    drain: Drain = instance.app.state.drain
    await drain.begin()
    ended = await asyncio.wait_for(stream, timeout=5)
    assert ended.status_code == 200 and "data:" in ended.text  # ended: the browser reconnects

    new = await instance.client.post("/start", json=START, headers=JSON)
    assert new.status_code == 503
    assert new.headers["content-type"] == "application/problem+json"
    assert new.json()["type"].endswith("/draining")
    assert new.headers["retry-after"]
    again = await instance.client.get(f"{room}/events", headers=stream_headers)
    assert again.status_code == 503
    # What is under way goes on: the resident's page still loads.
    assert (await instance.client.get(room)).status_code == 200
    ready = await instance.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    metrics = await instance.client.get("/metrics")
    assert sample(metrics.text, "idcontact_draining") == 1.0


def test_step_counts_outcomes() -> None:
    metrics = Metrics()
    labels: dict[str, Any] = {"tenant": "t", "purpose": "p", "method": "m"}
    metrics.step("t", "p", "m", "created", None)
    metrics.step("t", "p", "m", "authenticated", "created")
    metrics.step("t", "p", "m", "wrap_up", "connected")
    metrics.step("t", "p", "m", "ended", "connected")
    metrics.step("t", "p", "m", "ineligible", "created")
    metrics.step("t", "p", "m", "ended", "wrap_up")  # the end of a wrap-up: counted once
    started = metrics.registry.get_sample_value("idcontact_flows_started_total", labels)
    completed = metrics.registry.get_sample_value("idcontact_flows_completed_total", labels)
    failed = metrics.registry.get_sample_value(
        "idcontact_flows_failed_total", {**labels, "reason": "ineligible"}
    )
    assert (started, completed, failed) == (1.0, 2.0, 1.0)


def test_draining_refuses_a_websocket_handshake_with_503(tmp_path: Path) -> None:
    from idcontact.app import create_app
    from tests.plugins.test_chat import TestClient, resident_in_line

    with warnings.catch_warnings():  # as tests/plugins/test_chat.py: the httpx test client
        warnings.simplefilter("ignore")
        from starlette.testclient import WebSocketDenialResponse

    app = create_app(demo_settings(tmp_path))
    with TestClient(app, base_url=PUBLIC) as client:
        page = resident_in_line(client)
        with client.websocket_connect(page + "/ws") as ws:
            assert ws.receive_json()["type"] == "state"
        client.portal.call(app.state.drain.begin)  # type: ignore[union-attr]
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            client.websocket_connect(page + "/ws"),
        ):
            pass
        assert denied.value.status_code == 503
        assert denied.value.json()["type"].endswith("/draining")


async def test_a_hop_within_the_process_skips_the_edge_but_keeps_the_error_mapping(
    instance: Instance, caplog: pytest.LogCaptureFixture
) -> None:
    """Server-side calls between the roles of one process (``http://inproc``) are part of a
    request already let in: served while draining, with no access log line of their own, and
    errors still answered as problem+json."""
    http = instance.services.http
    drain: Drain = instance.app.state.drain
    await drain.begin()
    with caplog.at_level(logging.INFO, logger="idcontact.access"):
        started = await http.post(f"{INPROC_BASE}/start", json=START, headers=JSON)
        refused = await http.post(f"{INPROC_BASE}/start", json={"purpose": "nope"}, headers=JSON)
        missing = await http.get(f"{INPROC_BASE}/no/such/route")
    assert started.status_code == 200 and "client_url" in started.json()
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert missing.status_code == 404 and missing.json()["type"].endswith("/not-found")
    assert [r for r in caplog.records if r.name == "idcontact.access"] == []
    outside = await instance.client.post("/start", json=START, headers=JSON)
    assert outside.status_code == 503  # the same request from outside is refused
