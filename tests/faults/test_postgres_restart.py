"""PostgreSQL goes away during a flow and comes back: requests fail cleanly (problem+json or a
clear page, no stack trace, no data), `/readyz` says which dependency failed, and the same step
succeeds when retried. After a crash the UNLOGGED key store is empty: the conversation is still
there, its attributes are unreadable everywhere (the resident identifies again), never exposed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from idcontact.cli import DEMO_CONFIG
from tests.conftest import CANARY_BSN
from tests.faults._services import PrivatePostgres
from tests.flows._cluster import START
from tests.flows._servers import free_port, start_server

DEMO_BSN = "999990019"  # the demo auth plugin's (plugins/auth/demo.py)
DEMO_NAME = "Demi de Demo"


def until_ready(client: httpx.Client, want: int, deadline_s: float = 30) -> httpx.Response:
    end = time.monotonic() + deadline_s
    while True:
        ready = client.get("/readyz")
        if ready.status_code == want:
            return ready
        assert time.monotonic() < end, f"/readyz stayed {ready.status_code}: {ready.text}"
        time.sleep(0.1)


def scalar(pg: PrivatePostgres, sql: str) -> int:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> int:
        engine = create_async_engine(pg.url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text(sql))).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_postgres_restart_fails_cleanly_and_the_retry_succeeds(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    pg = private_postgres
    port = free_port()
    server = start_server(
        config=DEMO_CONFIG,
        data_dir=tmp_path / "data",
        log_path=tmp_path / "server.log",
        port=port,
        env={
            "IDCONTACT_DATABASE_URL": pg.url,
            "IDCONTACT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        },
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
            assert until_ready(client, 200).json()["checks"]["database"] == "ok"
            started = client.post("/start", json=START, headers={"Accept": "application/json"})
            assert started.status_code == 200
            confirm = httpx.URL(started.json()["client_url"]).raw_path.decode()
            assert client.get(confirm).status_code == 200

            pg.stop()
            failed = client.post(confirm, data={"action": "share"})
            # A clean failure: the step ends in an error answer (the landing page of the
            # redirect, or the step itself), problem+json, no stack trace, none of the data.
            if failed.status_code == 303:
                failed = client.get(httpx.URL(failed.headers["location"]).raw_path.decode())
            assert failed.status_code == 503 and failed.headers["retry-after"]
            assert failed.headers["content-type"] == "application/problem+json"
            assert failed.json()["type"].endswith("/unavailable")
            assert "Traceback" not in failed.text and DEMO_BSN not in failed.text
            assert DEMO_NAME not in failed.text
            assert DEMO_NAME not in failed.text
            down = until_ready(client, 503)
            assert down.json()["checks"]["database"] == "fail"
            assert client.get("/healthz").status_code == 200  # alive, not ready

            pg.start()
            until_ready(client, 200)
            # The same step again: it succeeds, exactly once.
            retried = client.post(confirm, data={"action": "share"})
            assert retried.status_code == 303, retried.text
            waiting = client.get(httpx.URL(retried.headers["location"]).raw_path.decode())
            assert waiting.status_code == 200 and "U bent nummer" in waiting.text
            conversation = httpx.URL(retried.headers["location"]).path.rsplit("/", 1)[1]
            assert scalar(pg, "SELECT count(*) FROM data_keys") == 1

            # A crash of PostgreSQL: the UNLOGGED key store is emptied, by design.
            pg.stop(immediate=True)
            pg.start()
            until_ready(client, 200)
            assert scalar(pg, "SELECT count(*) FROM data_keys") == 0
            assert scalar(pg, "SELECT count(*) FROM vault_entries") == 1  # ciphertext, no key
            # The conversation itself is not lost; nothing readable is left of its data.
            page = client.get(f"/comm/demo/c/{conversation}")
            assert page.status_code == 200 and DEMO_BSN not in page.text
            assert DEMO_NAME not in page.text
        log = server.log_text()
        assert DEMO_BSN not in log and CANARY_BSN not in log
    finally:
        server.stop()
