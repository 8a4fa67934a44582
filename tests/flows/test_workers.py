"""``serve --workers 2``: several processes on one port and one SQLite file, every flow intact."""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path

import httpx

from idcontact.cli import DEMO_CONFIG
from tests.flows._servers import free_port, start_server

START = {"purpose": "report_move", "auth_method": "demo", "comm_method": "demo"}


def one_flow(base: str) -> str:
    with httpx.Client(base_url=base, timeout=20) as client:
        started = client.post("/start", json=START, headers={"Accept": "application/json"})
        assert started.status_code == 200, started.text
        confirm = started.json()["client_url"].removeprefix(base)
        shared = client.post(confirm, data={"action": "share"})
        assert shared.status_code == 303
        landing = client.get(shared.headers["location"].removeprefix(base))
        assert landing.status_code == 200
        return landing.text


def test_two_workers_share_one_sqlite_database(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(
        config=DEMO_CONFIG,
        data_dir=tmp_path / "data",
        log_path=tmp_path / "server.log",
        port=port,
        env={"IDCONTACT_PUBLIC_URL": f"http://127.0.0.1:{port}"},
        workers=2,
    )
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            pages = list(pool.map(one_flow, [server.url] * 40))
        # Every resident is in line: no delivery was lost between the workers (the waiting
        # room names the data but never shows it).
        assert all("U bent nummer" in page for page in pages)
        assert not any("Demi de Demo" in page for page in pages)
        log = server.log_text()
        assert "Traceback" not in log and '"level": "ERROR"' not in log
        # Two worker processes really served (uvicorn logs each one's start).
        assert len(re.findall(r"Started server process", log)) >= 2
    finally:
        server.stop()
