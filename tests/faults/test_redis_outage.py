"""Redis stops under two instances: flows go on (the database is the record), consoles fall
back to reloading their list, and when Redis is back events cross instances again at once.
Lost: only the live pushes while Redis was down, which the reloads replace."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.faults._services import PrivateRedis
from tests.flows._cluster import Stream, logged_in_agent, resident_waiting, start_cluster
from tests.services import postgres_url


def until(check: object, what: str, deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, f"timed out waiting for: {what}"
        time.sleep(0.05)


def test_consoles_fall_back_without_redis_and_catch_up_when_it_returns(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    cluster = start_cluster(tmp_path, postgres=postgres_url(), redis=private_redis.url)
    a, b = cluster.servers
    try:
        agent = logged_in_agent(cluster, a.url, "anna")
        stream = Stream(agent, "/agent/default/events")
        assert stream.saw("event: hello", 10)
        first = resident_waiting(b.url)
        assert stream.saw(first, 5)  # across instances, through Redis

        private_redis.stop()
        # The console's stream is ended: the browser reconnects and reloads its list.
        assert stream.ended.wait(10), "the console was not told to fall back"
        with httpx.Client(base_url=a.url, timeout=10, trust_env=False) as direct:
            until(lambda: direct.get("/readyz").status_code == 503, "/readyz reports Redis")
            assert direct.get("/readyz").json()["checks"]["redis"] == "fail"
        # Residents are served without Redis; the console's reload shows them.
        second = resident_waiting(b.url)
        fallback = Stream(agent, "/agent/default/events")
        assert fallback.saw("event: hello", 10)  # a reconnect: the console reloads its board
        assert second in agent.get("/agent/default/board").text
        # While Redis is away, streams keep being ended so consoles keep reloading.
        assert fallback.ended.wait(15)

        private_redis.start()
        with httpx.Client(base_url=a.url, timeout=10, trust_env=False) as direct:
            until(lambda: direct.get("/readyz").status_code == 200, "Redis back in /readyz")

        # Back: a live stream stays open and hears changes made at the other instance.
        def live() -> Stream:
            candidate = Stream(agent, "/agent/default/events")
            assert candidate.saw("event: hello", 10)
            return candidate

        again = live()
        if again.ended.wait(1.0):  # ended by the bus' own catch-up as Redis returned
            again = live()
        third = resident_waiting(b.url)
        assert again.saw(third, 5), "events do not cross instances after Redis returned"
        agent.close()
        for server in cluster.servers:
            assert "Traceback" not in server.log_text()
    finally:
        cluster.stop()
