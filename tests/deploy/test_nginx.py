"""deploy/nginx/idcontact.conf in front of two real instances on PostgreSQL and Redis: a full
flow through TLS, the agent's live stream (SSE) and the chat (WebSocket) passed through, both
instances used, and no query string or personal data in nginx's access log."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

from tests.deploy._nginx import start_nginx
from tests.flows._cluster import logged_in_agent, resident_waiting, start_cluster
from tests.flows._servers import free_ports
from tests.services import nginx_binary, postgres_url, redis_url

CHAT_CANARY = "Canary-Nginx-Chat-5Wd1"


def chat_resident(base: str, verify: object) -> str:
    """A resident identified for the chat channel, through the proxy; the chat page's path."""
    with httpx.Client(base_url=base, verify=verify, trust_env=False, timeout=20) as browser:  # type: ignore[arg-type]
        started = browser.post(
            "/start",
            json={"purpose": "report_move", "auth_method": "demo", "comm_method": "chat"},
            headers={"Accept": "application/json"},
        )
        assert started.status_code == 200, started.text
        shared = browser.post(
            httpx.URL(started.json()["client_url"]).raw_path.decode(), data={"action": "share"}
        )
        assert shared.status_code == 303
        page = httpx.URL(shared.headers["location"]).path
        assert browser.get(page).status_code == 200
        return page


def test_two_instances_behind_nginx(tmp_path: Path) -> None:
    binary = nginx_binary()
    proxy_port, *ports = free_ports(3)
    public = f"https://127.0.0.1:{proxy_port}"
    cluster = start_cluster(
        tmp_path, postgres=postgres_url(), redis=redis_url(), public_url=public, ports=ports
    )
    nginx = None
    try:
        nginx = start_nginx(binary, tmp_path, proxy_port, ports)
        tls = nginx.ssl_context()
        agent = logged_in_agent(cluster, public, "anna", verify=tls)
        seen: list[str] = []
        hello = threading.Event()

        def listen() -> None:
            try:
                with agent.stream(
                    "GET", "/agent/default/events", headers={"Accept": "text/event-stream"}
                ) as stream:
                    for line in stream.iter_lines():
                        seen.append(line)
                        hello.set()
            except (httpx.HTTPError, RuntimeError):  # closed at the end of the test
                pass

        threading.Thread(target=listen, daemon=True).start()
        assert hello.wait(10), "no event came through the proxy"
        assert any("event: hello" in line for line in seen)
        # Residents through the proxy, spread over both instances; each change is pushed to
        # the console at once (unbuffered).
        ids = [resident_waiting(public, verify=tls) for _ in range(4)]
        deadline = time.monotonic() + 5
        while not all(any(i in line for line in seen) for i in ids):
            assert time.monotonic() < deadline, "an event was held back by the proxy"
            time.sleep(0.02)
        board = agent.get("/agent/default/board")
        assert all(i in board.text for i in ids)

        # The chat's WebSocket through the proxy.
        page = chat_resident(public, tls)
        with connect(f"wss://127.0.0.1:{proxy_port}{page}/ws", ssl=tls, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "state"
            ws.send(json.dumps({"type": "message", "text": CHAT_CANARY}))
            for _ in range(10):
                frame = json.loads(ws.recv(timeout=10))
                if frame["type"] == "message":
                    assert frame["text"] == CHAT_CANARY
                    break
            else:
                raise AssertionError("no message frame came back")

        # /metrics is not served through the public name.
        assert agent.get("/metrics").status_code == 404
        agent.close()
    finally:
        if nginx is not None:
            nginx.stop()
        cluster.stop()

    # Both instances served residents.
    for server in cluster.servers:
        assert '"route": "/start"' in server.log_text(), f"{server.url} got no flow"
    log = nginx.access_log.read_text(encoding="utf-8") if nginx else ""
    assert "/start" in log and "/agent/default/events" in log
    assert "?" not in log and "result=" not in log and CHAT_CANARY not in log
    assert re.search(r'"GET /comm/chat/c/[^ ]+/ws HTTP/1.1" 101', log)
