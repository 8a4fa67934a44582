"""The real Asterisk of the phone tests, started by ``scripts/services/asterisk``.

``scripts/test`` starts it and exports ``IDCONTACT_TEST_ASTERISK_*``. When they are missing,
a test that needs the PBX skips locally and fails under ``CI=true``, like every real-service
test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.services import _unavailable


@dataclass(frozen=True)
class Pbx:
    ari_url: str
    user: str
    password: str
    sip: str
    root: Path

    @property
    def log_dir(self) -> Path:
        return self.root / "var" / "log" / "asterisk"

    def telephony(self) -> dict[str, Any]:
        """The ``[telephony]`` settings for an app under test."""
        return {"ari_url": self.ari_url, "ari_user": self.user, "ari_password": self.password}

    async def hang_up_everything(self) -> None:
        async with httpx.AsyncClient(auth=(self.user, self.password), timeout=5) as client:
            channels = (await client.get(f"{self.ari_url}/channels")).json()
            for channel in channels:
                await client.delete(f"{self.ari_url}/channels/{channel['id']}")

    async def get(self, path: str) -> Any:
        async with httpx.AsyncClient(auth=(self.user, self.password), timeout=5) as client:
            response = await client.get(f"{self.ari_url}{path}")
            response.raise_for_status()
            return response.json()


_PBX: Pbx | None = None


def pbx() -> Pbx:
    """The running test PBX, with this configuration's prompts rendered into it (once)."""
    global _PBX
    if _PBX is not None:
        return _PBX
    if os.environ.get("IDC_NO_ASTERISK"):
        _unavailable(f"Asterisk unavailable: {os.environ['IDC_NO_ASTERISK']}")
    env = {k: v for k, v in os.environ.items() if k.startswith("IDCONTACT_TEST_ASTERISK_")}
    if "IDCONTACT_TEST_ASTERISK_ARI_URL" not in env:
        _unavailable(
            "Asterisk not configured: IDCONTACT_TEST_ASTERISK_* are not set; run `bash "
            "scripts/test`, or `bash scripts/services/asterisk start` and export the lines of "
            "`bash scripts/services/asterisk env`"
        )
    password_file = Path(env["IDCONTACT_TEST_ASTERISK_ARI_PASSWORD_FILE"])
    result = Pbx(
        ari_url=env["IDCONTACT_TEST_ASTERISK_ARI_URL"],
        user=env["IDCONTACT_TEST_ASTERISK_ARI_USER"],
        password=password_file.read_text().strip(),
        sip=env["IDCONTACT_TEST_ASTERISK_SIP"],
        root=Path(env["IDCONTACT_TEST_ASTERISK_ROOT"]),
    )
    try:
        httpx.get(
            f"{result.ari_url}/asterisk/ping", auth=(result.user, result.password), timeout=3
        ).raise_for_status()
    except httpx.HTTPError as exc:
        _unavailable(f"Asterisk ARI not answering at {result.ari_url}: {type(exc).__name__}")
    sounds = result.root / "usr" / "share" / "asterisk" / "sounds" / "idcontact"
    if not (sounds / "nl" / "welcome.wav").exists():
        rendered = subprocess.run(
            [sys.executable, "-m", "idcontact", "phone", "prompts", "--out", str(sounds)],
            capture_output=True,
            text=True,
        )
        if rendered.returncode != 0:
            _unavailable(f"phone prompts could not be rendered: {rendered.stderr.strip()}")
    _PBX = result
    return result


@dataclass
class Observer:
    """A second ARI application that sees every event of the PBX (``subscribeAll``): what
    callers hear is checked from Asterisk's own playback events, not from our logs."""

    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            self.changed.clear()
            left = end - loop.time()
            if left <= 0:
                raise TimeoutError("the PBX did not report the expected event")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass

    def played(self, channel: str) -> list[str]:
        """Media URIs of every playback that started on ``channel``."""
        return [
            str(e["playback"].get("media_uri", ""))
            for e in self.events
            if e.get("type") == "PlaybackStarted"
            and e["playback"].get("target_uri") == f"channel:{channel}"
        ]


@asynccontextmanager
async def observe(p: Pbx) -> AsyncIterator[Observer]:
    url = p.ari_url.replace("http://", "ws://") + "/events?app=idc-observer&subscribeAll=true"
    auth = httpx.BasicAuth(p.user, p.password)
    header = next(auth.auth_flow(httpx.Request("GET", url.replace("ws://", "http://"))))
    observer = Observer()
    async with websockets.connect(
        url, additional_headers={"Authorization": header.headers["Authorization"]}
    ) as socket:

        async def read() -> None:
            async for message in socket:
                observer.events.append(json.loads(message))
                observer.changed.set()

        task = asyncio.create_task(read())
        try:
            yield observer
        finally:
            task.cancel()
