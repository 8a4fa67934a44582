"""The ``video`` channel: its settings, the TURN credentials (accepted by a real coturn), the
signalling over the two sides' real WebSockets in process (relayed to the other side only,
only while connected, checked and cleaned), and two aiortc peers that reach ``connected``
through it and the TURN relay."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from idcontact.app import create_app
from idcontact.errors import ConfigError
from idcontact.settings import Settings
from idcontact.web.video import Signalling, VideoConfig, video_config
from tests.conftest import PUBLIC, demo_settings
from tests.plugins.test_chat import agent_holding, frames_until, resident_in_line
from tests.services import Turn, turn_server

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketTestSession

SECRET = "Canary-Turn-Secret-7Qm2xZ9pLw4R"
TURN_URL = "turn:127.0.0.1:3478"
HOST_CANDIDATE = "candidate:1 1 udp 2122260223 192.0.2.10 50000 typ host generation 0"
SRFLX_CANDIDATE = (
    "candidate:2 1 udp 1686052607 198.51.100.7 41000 typ srflx raddr 192.0.2.10 rport 50000"
)
RELAY_CANDIDATE = (
    "candidate:3 1 udp 41885439 127.0.0.1 49710 typ relay raddr 198.51.100.7 rport 41000"
)


def video_settings(tmp_path: Path, **video: Any) -> Settings:
    """The demo, its ``video`` method relay-only through a TURN server (or ``video``)."""
    config = {"turn_urls": [TURN_URL], "turn_secret": SECRET, **video}
    settings = demo_settings(tmp_path)
    assert any(m.plugin == "video" for m in settings.comm_methods)
    plugins = {**settings.plugins, "comm": {**settings.plugins.get("comm", {}), "video": config}}
    return settings.model_copy(update={"plugins": plugins})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(video_settings(tmp_path)), base_url=PUBLIC) as c:
        yield c


def signal(ws: WebSocketTestSession, data: object) -> None:
    ws.send_json({"type": "signal", "data": data})


@contextmanager
def both_sockets(
    client: TestClient, page: str, conversation_id: str
) -> Iterator[tuple[WebSocketTestSession, WebSocketTestSession]]:
    """The resident's and the agent's socket of a connected video conversation."""
    with (
        client.websocket_connect(page + "/ws") as resident,
        client.websocket_connect(
            f"/agent/default/c/{conversation_id}/chat", headers={"origin": PUBLIC}
        ) as agent,
    ):
        yield resident, agent


# -- settings and credentials -------------------------------------------------------------


def test_turn_credentials_follow_coturns_rest_scheme() -> None:
    config = VideoConfig(turn_urls=(TURN_URL,), credential_seconds=900)
    signalling = Signalling(config, SECRET.encode(), clock=lambda: 1_800_000_000.5)
    username, credential = signalling.credentials()
    expires, opaque = username.split(":", 1)
    assert int(expires) == 1_800_000_900
    assert re.fullmatch(r"[A-Za-z0-9_-]{12}", opaque)
    expected = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(credential) == expected
    assert signalling.credentials()[0] != username  # a fresh random id every time
    frame = signalling.ice()
    assert frame["policy"] == "relay"
    (server,) = frame["servers"]  # type: ignore[misc]
    assert server["urls"] == [TURN_URL] and SECRET not in json.dumps(frame)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({}, "plugins.comm.video.turn_urls: relay_only = true needs a TURN server"),
        ({"turn_urls": [TURN_URL]}, "plugins.comm.video.turn_secret:"),
        ({"turn_urls": ["http://turn.example"], "turn_secret": SECRET}, ".turn_urls:"),
        ({"turn_urls": [TURN_URL], "turn_secret": SECRET[:8]}, "at least 16 characters"),
        ({"turn_urls": [TURN_URL], "turn_secret": SECRET, "credential_seconds": 5}, "seconds"),
        ({"turn_urls": [TURN_URL], "turn_secret": SECRET, "turn_secret_file": "/x"}, "not both"),
        ({"turn_urls": [TURN_URL], "turn_secret": SECRET, "secret": SECRET}, ".secret:"),
        ({"turn_urls": [TURN_URL], "turn_secret": 12345678901234567}, ".turn_secret:"),
    ],
)
def test_config_errors_name_the_setting_and_never_the_secret(
    config: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        video_config("video", config)
    assert named in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET[:8] not in str(caught.value)
    assert "12345678901234567" not in str(caught.value)


def test_a_secret_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others") as caught:
        video_config("video", {"turn_urls": [TURN_URL], "turn_secret_file": str(path)})
    assert SECRET not in str(caught.value)
    path.chmod(0o600)
    _, secret = video_config("video", {"turn_urls": [TURN_URL], "turn_secret_file": str(path)})
    assert secret == SECRET.encode()
    with pytest.raises(ConfigError, match="cannot be read"):
        video_config("video", {"turn_urls": [TURN_URL], "turn_secret_file": str(path) + ".x"})


def test_the_app_does_not_start_with_a_bad_video_setting(tmp_path: Path) -> None:
    settings = video_settings(tmp_path, turn_urls=[], turn_secret=SECRET)
    with pytest.raises(ConfigError, match="relay_only") as caught:
        create_app(settings)
    assert SECRET not in str(caught.value)


def test_without_relay_only_the_demo_needs_no_turn_server(tmp_path: Path) -> None:
    config, secret = video_config("video", {"relay_only": False})
    frame = Signalling(config, secret).ice()
    assert frame == {"type": "ice", "servers": [], "policy": "all"}
    with TestClient(create_app(demo_settings(tmp_path)), base_url=PUBLIC) as client:
        page = resident_in_line(client, "video")
        agent_holding(client, page)
        shown = client.get(page).text
        assert "Demo: de video gaat rechtstreeks tussen de browsers" in shown
        with client.websocket_connect(page + "/ws") as resident:
            assert frames_until(resident, "ice") == frame


# -- cleaning signals ---------------------------------------------------------------------


def relay_only() -> Signalling:
    return Signalling(VideoConfig(turn_urls=(TURN_URL,)), SECRET.encode())


def test_relay_only_passes_relay_candidates_without_the_related_address() -> None:
    s = relay_only()
    for line in (HOST_CANDIDATE, SRFLX_CANDIDATE):
        assert s.clean({"candidate": {"candidate": line, "sdpMid": "0"}}) is None
    cleaned = s.clean({"candidate": {"candidate": RELAY_CANDIDATE, "sdpMid": "0"}})
    assert cleaned is not None
    line = cleaned["candidate"]["candidate"]  # type: ignore[index]
    assert "typ relay" in line and "198.51.100.7" not in line and "raddr 0.0.0.0 rport 0" in line
    allowed = Signalling(VideoConfig(relay_only=False), None)
    assert allowed.clean({"candidate": {"candidate": HOST_CANDIDATE}}) is not None


def test_relay_only_strips_other_addresses_from_sdp() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "o=- 1 2 IN IP6 2001:db8::7",
            "s=-",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 192.0.2.10",
            "a=rtcp:9 IN IP4 192.0.2.10",
            "a=" + HOST_CANDIDATE,
            "a=" + SRFLX_CANDIDATE,
            "a=" + RELAY_CANDIDATE,
            "a=rtpmap:96 VP8/90000",
            "",
        ]
    )
    cleaned = relay_only().clean({"description": {"type": "offer", "sdp": sdp}})
    assert cleaned is not None
    out = cleaned["description"]["sdp"]  # type: ignore[index]
    assert "192.0.2.10" not in out and "198.51.100.7" not in out and "2001:db8" not in out
    assert out.count("a=candidate:") == 1 and "typ relay" in out
    assert "c=IN IP4 0.0.0.0" in out and "a=rtpmap:96 VP8/90000" in out
    assert "o=- 1 2 IN IP4 127.0.0.1" in out and "a=rtcp:9 IN IP4 0.0.0.0" in out


@pytest.mark.parametrize(
    "data",
    [
        None,
        "hello",
        {},
        {"hello": {"peer": "short", "media": "video"}},
        {"hello": {"peer": "a" * 16, "media": "hologram"}},
        {"description": {"type": "pranswer", "sdp": "v=0"}},
        {"description": {"type": "offer", "sdp": "v=0" + "x" * 30_000}},
        {"candidate": {"candidate": RELAY_CANDIDATE + "\na=evil"}},
        {"candidate": {"candidate": RELAY_CANDIDATE, "sdpMLineIndex": -1}},
        {"bye": False},
        {"bye": True, "hello": {"peer": "a" * 16, "media": "video"}},
    ],
)
def test_malformed_signals_are_refused(data: object) -> None:
    assert relay_only().clean(data) is None


# -- the two sockets ----------------------------------------------------------------------


def test_signals_go_to_the_other_side_only_and_only_while_connected(client: TestClient) -> None:
    page = resident_in_line(client, "video")
    assert 'id="video"' not in client.get(page).text  # waiting: the chat only
    hello = {"hello": {"peer": "resident-page-1", "media": "video"}}
    with client.websocket_connect(page + "/ws") as resident:
        assert resident.receive_json() == {"type": "state", "state": "waiting"}
        signal(resident, hello)
        assert resident.receive_json() == {"type": "error", "error": "not-connected"}

    conversation_id = agent_holding(client, page)
    shown = client.get(page)
    assert 'id="video"' in shown.text and "/static/video.js" in shown.text
    panel = client.get(f"/agent/default/c/{conversation_id}")
    assert 'id="video"' in panel.text and 'id="chat"' in panel.text
    with both_sockets(client, page, conversation_id) as (resident, agent):
        ices = [frames_until(ws, "ice") for ws in (resident, agent)]
        for ice in ices:
            assert ice["policy"] == "relay"
            (server,) = ice["servers"]
            assert server["urls"] == [TURN_URL]
            assert conversation_id not in server["username"]
        assert ices[0]["servers"][0]["username"] != ices[1]["servers"][0]["username"]

        signal(resident, hello)
        assert frames_until(agent, "signal") == {"type": "signal", "data": hello}
        # A host candidate is refused, and nothing reaches the resident.
        signal(agent, {"candidate": {"candidate": HOST_CANDIDATE, "sdpMid": "0"}})
        assert frames_until(agent, "error") == {"type": "error", "error": "bad-signal"}
        agent.send_text(json.dumps({"type": "signal", "data": {"bye": True}, "pad": "x" * 40_000}))
        assert frames_until(agent, "error") == {"type": "error", "error": "bad-frame"}
        signal(agent, {"candidate": {"candidate": RELAY_CANDIDATE, "sdpMid": "0"}})
        relayed = frames_until(resident, "signal")
        assert relayed["data"]["candidate"]["candidate"].endswith("raddr 0.0.0.0 rport 0")
        # The sender never gets its own signal back: the next frame it sees is the answer.
        signal(resident, {"bye": True})
        assert frames_until(agent, "signal") == {"type": "signal", "data": {"bye": True}}
        agent.send_json({"type": "message", "text": "Ziet u mij?"})
        assert frames_until(resident, "message")["text"] == "Ziet u mij?"
        assert frames_until(agent, "message")["text"] == "Ziet u mij?"  # no signal came first


def test_a_chat_conversation_carries_no_signals(client: TestClient) -> None:
    page = resident_in_line(client, "chat")
    conversation_id = agent_holding(client, page)
    assert 'id="video"' not in client.get(f"/agent/default/c/{conversation_id}").text
    with client.websocket_connect(page + "/ws") as resident:
        assert resident.receive_json() == {"type": "state", "state": "connected"}
        signal(resident, {"bye": True})
        assert frames_until(resident, "error") == {"type": "error", "error": "bad-frame"}


def test_too_many_signals_are_refused(client: TestClient) -> None:
    page = resident_in_line(client, "video")
    agent_holding(client, page)
    with client.websocket_connect(page + "/ws") as resident:
        frames_until(resident, "ice")
        errors = []
        for _ in range(260):
            signal(resident, {"hello": {"peer": "resident-page-1", "media": "none"}})
        resident.send_json({"type": "message", "text": "klaar"})
        while (frame := resident.receive_json())["type"] != "message":
            if frame["type"] == "error":
                errors.append(frame["error"])
        assert errors and set(errors) == {"too-many-signals"}


# -- the real TURN server -----------------------------------------------------------------


def allocate(turn: Turn, username: str, credential: str) -> int:
    """``turnutils_uclient``: allocate a relay with these credentials and send through it."""
    return subprocess.run(
        [
            *("turnutils_uclient", "-y", "-n", "1", "-m", "1", "-l", "100"),
            *("-u", username, "-w", credential, "-p", str(turn.port), "-L", turn.host, turn.host),
        ],
        capture_output=True,
        timeout=30,
        check=False,
    ).returncode


def test_our_credentials_open_a_relay_on_coturn_and_others_do_not() -> None:
    turn = turn_server()
    good = Signalling(VideoConfig(turn_urls=(turn.url,)), turn.secret.encode())
    username, credential = good.credentials()
    assert allocate(turn, username, credential) == 0
    wrong = Signalling(VideoConfig(turn_urls=(turn.url,)), b"not-the-secret-of-this-server")
    assert allocate(turn, *wrong.credentials()) != 0
    expired = Signalling(
        VideoConfig(turn_urls=(turn.url,), credential_seconds=60),
        turn.secret.encode(),
        clock=lambda: time.time() - 120,
    )
    assert allocate(turn, *expired.credentials()) != 0


# -- aiortc peers through our signalling and the relay ------------------------------------


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice leaves out 127.0.0.1 when it gathers: pin it there (nothing else is reachable
    from coturn's loopback relay)."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda ipv4, ipv6: ["127.0.0.1"])


def test_two_aiortc_peers_connect_through_our_sockets_and_the_relay(
    tmp_path: Path, loopback_ice: None
) -> None:
    from aiortc import (
        RTCConfiguration,
        RTCIceServer,
        RTCIceTransportPolicy,
        RTCPeerConnection,
        RTCSessionDescription,
        VideoStreamTrack,
    )

    turn = turn_server()
    settings = video_settings(tmp_path, turn_urls=[turn.url], turn_secret=turn.secret)
    with TestClient(create_app(settings), base_url=PUBLIC) as client:
        page = resident_in_line(client, "video")
        conversation_id = agent_holding(client, page)
        with both_sockets(client, page, conversation_id) as (resident_ws, agent_ws):
            ices = [frames_until(ws, "ice") for ws in (resident_ws, agent_ws)]

            def peer(ice: dict[str, Any]) -> RTCPeerConnection:
                servers = [RTCIceServer(**server) for server in ice["servers"]]
                return RTCPeerConnection(
                    RTCConfiguration(servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY)
                )

            async def signal_to(ws: WebSocketTestSession, pc: RTCPeerConnection) -> None:
                description = pc.localDescription
                await asyncio.to_thread(
                    signal, ws, {"description": {"type": description.type, "sdp": description.sdp}}
                )

            async def received(ws: WebSocketTestSession) -> RTCSessionDescription:
                frame = await asyncio.to_thread(frames_until, ws, "signal")
                sdp = frame["data"]["description"]["sdp"]
                candidates = re.findall(r"^a=candidate:.*$", sdp, flags=re.M)
                assert candidates and all(" typ relay " in c for c in candidates)
                return RTCSessionDescription(**frame["data"]["description"])

            async def call() -> float:
                agent, resident = peer(ices[1]), peer(ices[0])
                try:
                    started = time.perf_counter()
                    agent.addTrack(VideoStreamTrack())
                    connected = asyncio.Event()

                    @agent.on("connectionstatechange")
                    def changed() -> None:
                        if agent.connectionState == "connected":
                            connected.set()

                    tracks: asyncio.Queue[Any] = asyncio.Queue()
                    resident.on("track", tracks.put_nowait)

                    await agent.setLocalDescription(await agent.createOffer())
                    await signal_to(agent_ws, agent)
                    await resident.setRemoteDescription(await received(resident_ws))
                    await resident.setLocalDescription(await resident.createAnswer())
                    await signal_to(resident_ws, resident)
                    await agent.setRemoteDescription(await received(agent_ws))
                    async with asyncio.timeout(20):
                        await connected.wait()
                        frame = await (await tracks.get()).recv()
                    assert frame.width == 640
                    elapsed = time.perf_counter() - started
                    transport = agent.getTransceivers()[0].sender.transport.transport
                    selected = transport._connection._nominated  # aioice: the chosen pair
                    assert selected
                    for candidate_pair in selected.values():
                        assert candidate_pair.local_candidate.type == "relay"
                        assert candidate_pair.remote_candidate.type == "relay"
                    return elapsed
                finally:
                    await agent.close()
                    await resident.close()

            assert asyncio.run(call()) < 20  # about 0.6 s on the CI machine


def test_the_call_is_over_when_the_conversation_is(client: TestClient) -> None:
    page = resident_in_line(client, "video")
    conversation_id = agent_holding(client, page)
    english = client.get(page + "?lang=en").text
    assert "Waiting for the agent&#39;s video…" in english and "Stop video" in english
    panel = client.get(f"/agent/default/c/{conversation_id}").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', panel)
    assert csrf
    with both_sockets(client, page, conversation_id) as (resident, agent):
        frames_until(resident, "ice")
        frames_until(agent, "ice")
        finished = client.post(
            f"/agent/default/c/{conversation_id}/finish",
            data={"csrf": csrf.group(1)},
            follow_redirects=False,
        )
        assert finished.status_code == 303
        assert frames_until(resident, "state")["state"] == "wrap_up"
    assert 'id="video"' not in client.get(f"/agent/default/c/{conversation_id}").text
    assert 'id="video"' not in client.get(page).text
    with client.websocket_connect(
        f"/agent/default/c/{conversation_id}/chat", headers={"origin": PUBLIC}
    ) as agent:
        assert agent.receive_json() == {"type": "state", "state": "wrap_up"}
        signal(agent, {"bye": True})
        assert frames_until(agent, "error") == {"type": "error", "error": "not-connected"}
