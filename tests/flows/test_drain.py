"""SIGTERM on one of two real instances: it refuses new conversations and streams (503), ends
its consoles' streams so they reconnect, serves what is under way, and stops; the agent's
console carries on at the other instance with the same view."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.flows._cluster import START, Stream, logged_in_agent, resident_waiting, start_cluster
from tests.services import postgres_url, redis_url

DRAIN_SECONDS = 3


def test_sigterm_drains_one_instance_and_the_console_carries_on_at_the_other(
    tmp_path: Path,
) -> None:
    cluster = start_cluster(
        tmp_path,
        postgres=postgres_url(),
        redis=redis_url(),
        extra_env={"IDCONTACT_OPS__DRAIN_SECONDS": str(DRAIN_SECONDS)},
    )
    a, b = cluster.servers
    try:
        agent = logged_in_agent(cluster, a.url, "anna")
        stream = Stream(agent, "/agent/default/events")
        assert stream.saw("event: hello", 10), "the console's stream did not open"
        # A change made through B reaches the console connected to A.
        conversation_id = resident_waiting(b.url)
        assert stream.saw(conversation_id, 5)
        assert conversation_id in agent.get("/agent/default/board").text

        a.process.send_signal(signal.SIGTERM)
        began = time.monotonic()
        assert stream.ended.wait(DRAIN_SECONDS), "the stream was not ended on SIGTERM"
        with httpx.Client(base_url=a.url, timeout=5, trust_env=False) as direct:
            refused = direct.post("/start", json=START, headers={"Accept": "application/json"})
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["type"].endswith("/draining")
            assert direct.get("/readyz").status_code == 503
        # Under way goes on during the drain: the agent's console page still loads there.
        assert time.monotonic() - began < DRAIN_SECONDS
        assert conversation_id in agent.get("/agent/default/board").text
        reconnect = agent.get("/agent/default/events", headers={"Accept": "text/event-stream"})
        assert reconnect.status_code == 503  # a proxy sends the browser on to another instance

        # uvicorn ends by raising the signal again after its graceful shutdown (systemd counts
        # an exit by SIGTERM as clean); what matters is that it shut down in order.
        assert a.process.wait(timeout=DRAIN_SECONDS + 10) in (0, -signal.SIGTERM)
        log = a.log_text()
        assert "Application shutdown complete" in log and "Traceback" not in log
        assert log.index("draining") < log.index("Shutting down")

        # The console at B: same session (one database, one secret), same view, live again.
        agent.base_url = httpx.URL(b.url)
        assert conversation_id in agent.get("/agent/default/board").text
        again = Stream(agent, "/agent/default/events")
        assert again.saw("event: hello", 10)
        second = resident_waiting(b.url)
        assert again.saw(second, 5)
        agent.close()
    finally:
        cluster.stop()
