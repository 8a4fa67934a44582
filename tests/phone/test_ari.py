"""The ARI client against a local stand-in for Asterisk's event WebSocket and REST API:
credentials in a header (never in a URL or log), reconnection with backoff, errors that name
the request shape but no ids or secrets."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from idcontact.phone.ari import CONNECTED, DISCONNECTED, AriClient, GoneError, PbxError

pytestmark = pytest.mark.anyio

PASSWORD = "ari-secret-for-tests"


async def test_events_reconnect_with_backoff_and_keep_credentials_out_of_urls_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None
        seen.append({"path": request.path, "auth": request.headers.get("Authorization")})
        await connection.send(json.dumps({"type": "StasisStart", "n": len(seen)}))
        await connection.close()  # the PBX goes away after one event

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = AriClient(
            f"http://127.0.0.1:{port}/ari", "idcontact", PASSWORD, "idcontact", backoff=(0.01, 0.05)
        )
        got: list[str] = []
        with caplog.at_level(logging.DEBUG):
            events = client.events()
            async for event in events:
                got.append(str(event["type"]))
                if got.count(CONNECTED) == 3:
                    break
            await events.aclose()
        await client.close()
    assert got[:4] == [CONNECTED, "StasisStart", DISCONNECTED, CONNECTED]
    assert all(s["path"] == "/ari/events?app=idcontact&subscribeAll=false" for s in seen)
    assert all(s["auth"] and s["auth"].startswith("Basic ") for s in seen)
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert PASSWORD not in logged and "reconnecting" in logged


async def test_rest_errors_name_the_shape_never_ids_or_secrets() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def gone(request: Request) -> Response:
        return JSONResponse({"message": "Channel not found"}, status_code=404)

    async def broken(request: Request) -> Response:
        return JSONResponse({"message": "oops"}, status_code=500)

    app = Starlette(
        routes=[
            Route("/ari/channels/{id}/moh", gone, methods=["POST"]),
            Route("/ari/bridges/{id}", broken, methods=["POST"]),
        ]
    )
    import httpx

    client = AriClient("http://ari.test/ari", "idcontact", PASSWORD, "idcontact")
    client._http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ari.test/ari"
    )
    with pytest.raises(GoneError):
        await client.request("POST", "/channels/1795999510.57/moh")
    await client.start_moh("1795999510.57")  # gone: the hang-up event follows, no error
    with pytest.raises(PbxError) as failed:
        await client.bridge("a1b2c3", ["1", "2"])
    assert str(failed.value) == "ARI POST /bridges/{id}: HTTP 500"
    assert PASSWORD not in str(failed.value)
    await client.close()
