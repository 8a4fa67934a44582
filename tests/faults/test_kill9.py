"""kill -9 of one of two instances in the middle of flows: no conversation is lost (each
continues at the other instance, from the step it was at), and no attribute outlives its
retention (the survivor's sweeper takes over the sweeper's lease and purges them, keys and
ciphertext). Lost: the killed instance's in-memory state only (open streams, which browsers
reopen elsewhere)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import create_async_engine

from idcontact.app import SWEEP_INTERVAL, SWEEP_LEASE
from idcontact.cli import DEMO_CONFIG
from tests.flows._cluster import START, logged_in_agent, start_cluster
from tests.services import postgres_url, redis_url

RETENTION_MINUTES = 1


def query(url: str, sql: str, ids: list[str]) -> list[tuple[object, ...]]:
    """``sql`` with ``:ids`` bound to the conversation ids."""
    statement = text(sql).bindparams(bindparam("ids", expanding=True))

    async def run() -> list[tuple[object, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(statement, {"ids": ids})).all()
                return [tuple(r) for r in rows]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def path(url: str) -> str:
    return httpx.URL(url).raw_path.decode()


def sweeper_lease(base: str) -> float:
    """The instance's ``idcontact_sweeper_lease`` gauge: 1 while it is the one that sweeps."""
    text_ = httpx.get(f"{base}/metrics", timeout=10, trust_env=False).text
    found = re.search(r"^idcontact_sweeper_lease (\S+)$", text_, re.M)
    assert found, "no sweeper lease gauge"
    return float(found.group(1))


def test_kill_9_loses_no_conversation_and_retention_still_holds(tmp_path: Path) -> None:
    config = tmp_path / "idcontact.toml"
    config.write_text(
        DEMO_CONFIG.read_text(encoding="utf-8").replace(
            "retention_minutes = 120", f"retention_minutes = {RETENTION_MINUTES}", 1
        ),
        encoding="utf-8",
    )
    pg = postgres_url()
    cluster = start_cluster(tmp_path, postgres=pg, redis=redis_url(), config=config)
    try:
        # The sweeper runs once: exactly one instance holds its lease; that one is killed.
        deadline = time.time() + 20
        while sorted(held := [sweeper_lease(s.url) for s in cluster.servers]) != [0.0, 1.0]:
            assert time.time() < deadline, f"sweeper leases {held}"
            time.sleep(0.2)
        a, b = (cluster.servers[held.index(1.0)], cluster.servers[held.index(0.0)])
        json_accept = {"Accept": "application/json"}
        with httpx.Client(base_url=a.url, timeout=20, trust_env=False) as at_a:
            # One resident identified and waiting, one between start and consent: both at A.
            started = at_a.post("/start", json=START, headers=json_accept).json()
            shared = at_a.post(path(started["client_url"]), data={"action": "share"})
            waiting = path(shared.headers["location"])
            pending = at_a.post("/start", json=START, headers=json_accept).json()
            assert at_a.get(path(pending["client_url"])).status_code == 200

        a.process.kill()  # SIGKILL: no shutdown, no drain, no release of the lease
        a.process.wait(timeout=10)
        killed_at = time.time()

        with httpx.Client(base_url=b.url, timeout=20, trust_env=False) as at_b:
            # Each resident carries on at B from where they were.
            assert "U bent nummer" in at_b.get(waiting).text
            resumed = at_b.post(path(pending["client_url"]), data={"action": "share"})
            assert resumed.status_code == 303, resumed.text
            second = path(resumed.headers["location"])
            assert "U bent nummer" in at_b.get(second).text
        ids = [waiting.rsplit("/", 1)[1], second.rsplit("/", 1)[1]]
        agent = logged_in_agent(cluster, b.url, "bert")
        board = agent.get("/agent/default/board").text
        assert all(i in board for i in ids), "a conversation is missing from the console"
        agent.close()

        # Retention: the survivor's sweeper destroys both, data keys and ciphertext.
        purge_at = max(
            float(str(r[0]))
            for r in query(pg, "SELECT purge_at FROM conversations WHERE id IN :ids", ids)
        )
        # The killed holder's lease runs out (SWEEP_LEASE), then the survivor's next pass.
        deadline = max(purge_at, killed_at + SWEEP_LEASE) + SWEEP_INTERVAL + 10
        while True:
            states = {
                str(r[0])
                for r in query(pg, "SELECT state FROM conversations WHERE id IN :ids", ids)
            }
            if states == {"purged"}:
                break
            assert time.time() < deadline, (
                f"still {states} {time.time() - purge_at:.0f} s after retention"
            )
            time.sleep(1)
        lag = time.time() - purge_at
        assert sweeper_lease(b.url) == 1.0  # the survivor took the lease over
        assert query(
            pg, "SELECT count(*) FROM vault_entries WHERE conversation_id IN :ids", ids
        ) == [(0,)]
        assert query(pg, "SELECT count(*) FROM data_keys WHERE conversation_id IN :ids", ids) == [
            (0,)
        ]
        print(f"purged {lag:.1f} s after the end of retention (sweep interval {SWEEP_INTERVAL} s)")
    finally:
        cluster.stop()
