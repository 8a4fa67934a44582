"""Phone channel benchmark (issue #4, point 8), through a real Asterisk 22 with sipp callers.

1. **Digit to data**: calls one after another; for each, the time from the last DTMF digit
   (when Asterisk reported it: the arrival of its ``ChannelDtmfReceived`` event at a second ARI
   application of this bench, on the same machine) to the attributes on the agent's console: the
   offer arrives over the console's event stream, the bench agent accepts at once and reads the
   attribute panel. Reported: p50/p99 of the whole path and of its part up to the offer.
   Target: p99 <= 150 ms.
2. **50 calls at once**: 50 conversations, each with its own name; 50 sipp callers, each with
   its own caller number, dial their code at the same moment. Afterwards, for each call
   (Asterisk's channel id, known to the bench from the PBX's own events), ``session_info``
   tells which conversation it was linked to: the name must be the one of the code that caller
   dialled. Reported: linked, wrongly linked (must be 0), not linked, and the time to link all.

Against one real ``idcontact serve`` (SQLite, fresh data dir) and the test PBX of
``scripts/services/asterisk`` (started here when it is not running, and stopped again).

    .venv/bin/python bench/phone.py                 # 30 latency samples, 50 concurrent calls
    .venv/bin/python bench/phone.py --samples 10 --concurrent 20

Results: bench/results/phone-<UTC stamp>.json and phone-latest.json (see bench/README.md).
Exit status 1 only when the run failed or a call was linked to the wrong conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import websockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/telephony: the sipp scenarios


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks
import console  # noqa: E402

import flows  # noqa: E402

log = flows.log
from tests.telephony.peers import ports, sipp_call  # noqa: E402

SERVICE = REPO / "scripts" / "services" / "asterisk"
DIALLED = "+31851234567"
WEBHOOK_SECRET = secrets.token_urlsafe(32)
TARGET_P99_MS = 150.0


def pbx_env() -> tuple[dict[str, str], bool]:
    """The test PBX's settings, starting it when it is not running (then ``True``)."""
    started = False
    if subprocess.run(["bash", str(SERVICE), "status"], capture_output=True).returncode != 0:
        subprocess.run(["bash", str(SERVICE), "start"], check=True)
        started = True
    out = subprocess.run(["bash", str(SERVICE), "env"], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line), started


class Observer:
    """A second ARI application that sees every event of the PBX (``subscribeAll``)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url.replace("http://", "ws://") + "/events?app=bench-observer&subscribeAll=true"
        self.auth = httpx.BasicAuth(user, password)
        self.last_digit: dict[str, float] = {}  # channel id → when its latest digit arrived
        self.digits: dict[str, int] = {}
        self.callers: dict[str, str] = {}  # channel id → caller number
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        header = next(self.auth.auth_flow(httpx.Request("GET", "http://x/"))).headers
        ready = asyncio.Event()

        async def read() -> None:
            async with websockets.connect(
                self.url, additional_headers={"Authorization": header["Authorization"]}
            ) as socket:
                ready.set()
                async for message in socket:
                    now = time.time()
                    event = json.loads(message)
                    info = event.get("channel") or {}
                    channel = info.get("id", "")
                    if (info.get("dialplan") or {}).get("context") == "idc-inbound":
                        self.callers[channel] = (info.get("caller") or {}).get("number", "")
                    if event.get("type") == "ChannelDtmfReceived":
                        self.last_digit[channel] = now
                        self.digits[channel] = self.digits.get(channel, 0) + 1

        self._task = asyncio.create_task(read())
        await asyncio.wait_for(ready.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class Bench:
    def __init__(self, base: str, settings: Any, workdir: Path, sip: str) -> None:
        from idcontact.keyring import load_keyring
        from idcontact.tokens import TokenIssuer

        keys = load_keyring(settings, settings.default_tenant)
        self.issuer = TokenIssuer(keys.signing, kid=keys.signing_kid)
        self.encrypt_to = keys.encryption_public
        self.base = base
        self.workdir = workdir
        self.sip = sip
        self.http = httpx.AsyncClient(base_url=base, timeout=30)

    async def conversation(self, name: str) -> str:
        """A phone conversation with its attributes delivered; its code."""
        from idcontact.tokens import AuthResult

        started = await self.http.post(
            "/comm/phone/start_communication",
            json={"purpose": "report_move", "shown_on_page": False},
        )
        started.raise_for_status()
        body = started.json()
        code = str(body["client_url"].split(",", 1)[1])
        token = self.issuer.issue(
            AuthResult(status="success", attributes={"fullname": name, "bsn": "999990019"}),
            self.encrypt_to,
        )
        # attr_url is in-process (http://inproc/...): deliver over the public path instead.
        path = "/" + body["attr_url"].split("://", 1)[1].split("/", 1)[1]
        delivered = await self.http.post(
            path, content=token, headers={"Content-Type": "application/jwt"}
        )
        delivered.raise_for_status()
        return code

    async def call(self, code: str, caller: str, name: str, hold_ms: int = 60_000) -> Any:
        sip_port, media_port = ports(2)
        return await sipp_call(
            self.sip,
            DIALLED,
            code,
            self.workdir,
            caller=caller,
            hold_ms=hold_ms,
            sip_port=sip_port,
            media_port=media_port,
            name=name,
        )


async def agent_stream(base: str, account: Any, offers: asyncio.Queue[tuple[str, float]]) -> None:
    """The console's event stream: every offer to this agent, with its arrival time."""
    headers = {"Cookie": account.cookie}
    # No read timeout: the stream is quiet between offers (heartbeats come every 15 s).
    timeout = httpx.Timeout(10.0, read=None)
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
        async with client.stream("GET", "/agent/default/events", headers=headers) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = json.loads(line[6:])
                if data.get("state") == "offered" and data.get("agent_id") == account.agent_id:
                    await offers.put((str(data["id"]), time.time()))


async def latency(bench: Bench, observer: Observer, account: Any, samples: int) -> dict[str, Any]:
    offers: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    stream = asyncio.create_task(agent_stream(bench.base, account, offers))
    agent = httpx.AsyncClient(base_url=bench.base, timeout=30, headers={"Cookie": account.cookie})
    await agent.post(
        "/agent/default/presence", data={"presence": "available", "csrf": account.csrf}
    )
    to_offer: list[float] = []
    to_data: list[float] = []
    try:
        for i in range(samples):
            name = f"Latency-Caller-{i:03d}-{secrets.token_hex(3)}"
            code = await bench.conversation(name)
            caller = await bench.call(code, f"+316200{i:05d}", f"latency-{i}")
            conversation_id, offered_at = await asyncio.wait_for(offers.get(), 30)
            accepted = await agent.post(
                f"/agent/default/c/{conversation_id}/accept", data={"csrf": account.csrf}
            )
            panel = await agent.get(f"/agent/default/c/{conversation_id}")
            shown_at = time.time()
            if accepted.status_code != 303 or name not in panel.text:
                raise RuntimeError(f"sample {i}: the panel does not show the caller's data")
            channel = next(c for c, n in observer.callers.items() if n == f"+316200{i:05d}")
            last = observer.last_digit[channel]
            to_offer.append((offered_at - last) * 1000)
            to_data.append((shown_at - last) * 1000)
            await agent.post(
                f"/agent/default/c/{conversation_id}/close", data={"csrf": account.csrf}
            )
            await caller.finished(20)
    finally:
        stream.cancel()
        await agent.aclose()
    return {
        "samples": samples,
        "digit_to_offer_ms": summary(to_offer),
        "digit_to_data_ms": summary(to_data),
        "target_p99_ms": TARGET_P99_MS,
        "met": summary(to_data)["p99"] <= TARGET_P99_MS,
    }


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(flows.percentile(ordered, 50), 1),
        "p99": round(flows.percentile(ordered, 99), 1),
        "max": round(ordered[-1], 1),
        "mean": round(sum(ordered) / len(ordered), 1),
    }


async def concurrent(bench: Bench, observer: Observer, count: int) -> dict[str, Any]:
    names = [f"Concurrent-Caller-{i:03d}-{secrets.token_hex(3)}" for i in range(count)]
    codes = [await bench.conversation(n) for n in names]
    numbers = [f"+316300{i:05d}" for i in range(count)]
    started = time.monotonic()
    callers = await asyncio.gather(
        *(bench.call(codes[i], numbers[i], f"concurrent-{i}", 40_000) for i in range(count))
    )
    auth = {"Authorization": f"Bearer {WEBHOOK_SECRET}"}
    linked: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(linked) < count and time.monotonic() < deadline:
        for channel, number in list(observer.callers.items()):
            if number not in numbers or channel in linked:
                continue
            info = await bench.http.get(f"/comm/phone/session_info/{channel}", headers=auth)
            if info.status_code == 200:
                linked[channel] = info.json()["auth_result"]["attributes"]["fullname"]
        await asyncio.sleep(0.1)
    took = time.monotonic() - started
    wrong = sum(
        1
        for channel, name in linked.items()
        if names[numbers.index(observer.callers[channel])] != name
    )
    for caller in callers:
        caller.stop()
        await caller.process.wait()
    return {
        "calls": count,
        "linked": len(linked),
        "wrongly_linked": wrong,
        "not_linked": count - len(linked),
        "seconds_to_link_all": round(took, 2),
    }


def config_file(workdir: Path, env: dict[str, str]) -> Path:
    demo = (REPO / "src" / "idcontact" / "demo.toml").read_text()
    demo = demo.replace(
        "[phone]\n",
        "[phone]\ncode_length = 12\nmax_linkable_codes = 500\nfailed_link_budget = 100\n"
        f'webhook_secret = "{WEBHOOK_SECRET}"\n',
    )
    path = workdir / "phone-bench.toml"
    path.write_text(
        demo
        + f'\n[telephony]\nari_url = "{env["IDCONTACT_TEST_ASTERISK_ARI_URL"]}"\n'
        + 'ari_user = "idcontact"\n'
    )
    return path


async def exercise(
    args: argparse.Namespace, base: str, settings: Any, workdir: Path, env: dict[str, str]
) -> dict[str, Any]:
    password = env["ARI_PASSWORD"]
    observer = Observer(env["IDCONTACT_TEST_ASTERISK_ARI_URL"], "idcontact", password)
    await observer.start()
    bench = Bench(base, settings, workdir, env["IDCONTACT_TEST_ASTERISK_SIP"])
    try:
        (account,) = await console.create_agents(settings, 1)
        await console.login(base, account, ssl.create_default_context())
        result = {"latency": await latency(bench, observer, account, args.samples)}
        result["concurrent"] = await concurrent(bench, observer, args.concurrent)
        return result
    finally:
        await observer.stop()
        await bench.http.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=50)
    args = parser.parse_args(argv)
    env, started_pbx = pbx_env()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="idc-phone-bench-") as tmp:
        workdir = Path(tmp)
        data_dir = workdir / "data"
        data_dir.mkdir()
        config = config_file(workdir, env)
        password = Path(env["IDCONTACT_TEST_ASTERISK_ARI_PASSWORD_FILE"]).read_text().strip()
        server_env = {**flows.clean_env(), "IDCONTACT_TELEPHONY__ARI_PASSWORD": password}
        env["ARI_PASSWORD"] = password
        settings = console.settings_for(data_dir, config, None)
        port = flows.free_port()
        server = flows.start_server(
            config=config,
            data_dir=data_dir,
            port=port,
            roles=(),
            env=server_env,
            log_path=workdir / "server.log",
        )
        try:
            result = asyncio.run(exercise(args, server.url, settings, workdir, env))
        finally:
            flows.stop_server(server)
            if started_pbx:
                subprocess.run(["bash", str(SERVICE), "stop"], check=False)
        report = {"benchmark": "phone", "at": stamp, "machine": flows.machine_info(), **result}
    stamped, latest = flows.write_results(report, stamp, "phone")
    lat, conc = report["latency"], report["concurrent"]
    print(
        f"digit → data on the console: p50 {lat['digit_to_data_ms']['p50']} ms, "
        f"p99 {lat['digit_to_data_ms']['p99']} ms (target ≤ {TARGET_P99_MS:.0f}: "
        f"{'met' if lat['met'] else 'MISSED'}); digit → offer p50 "
        f"{lat['digit_to_offer_ms']['p50']} ms, p99 {lat['digit_to_offer_ms']['p99']} ms"
    )
    print(
        f"{conc['calls']} concurrent calls: {conc['linked']} linked, "
        f"{conc['wrongly_linked']} to the wrong conversation, {conc['not_linked']} not linked, "
        f"all in {conc['seconds_to_link_all']} s"
    )
    print(f"results: {stamped} (and {latest.name})")
    return 1 if conc["wrongly_linked"] else 0


if __name__ == "__main__":
    sys.exit(main())
