"""Real SIP peers for the phone tests: sipp callers (RFC 4733, SIP INFO or in-band digits) and
baresip phones (an agent's desk phone that answers by itself, or a caller we hang up on cue).

Every peer binds to 127.0.0.1 only, runs as a subprocess and is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import signal
import socket
import struct
import subprocess
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

HOST = "127.0.0.1"
Mode = Literal["rfc4733", "info", "inband"]

# -- in-band tones: our own G.711 µ-law RTP capture --------------------------------------

DTMF_FREQUENCIES = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477),
}  # fmt: skip


def ulaw(sample: int) -> int:
    """One 16-bit linear sample → G.711 µ-law (ITU-T G.711, with the 0x84 bias)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone_samples(digits: str, *, tone_ms: int = 120, gap_ms: int = 120) -> bytes:
    """µ-law audio at 8 kHz: 400 ms of silence, then each digit's two tones with a gap."""
    rate = 8000
    out = bytearray(ulaw(0) for _ in range(rate * 400 // 1000))
    for digit in digits:
        low, high = DTMF_FREQUENCIES[digit]
        for n in range(rate * tone_ms // 1000):
            t = n / rate
            value = 7000 * (math.sin(2 * math.pi * low * t) + math.sin(2 * math.pi * high * t))
            out.append(ulaw(int(value)))
        out.extend(ulaw(0) for _ in range(rate * gap_ms // 1000))
    out.extend(ulaw(0) for _ in range(rate * 400 // 1000))
    return bytes(out)


RtpPacket = tuple[int, bool, int, int, bytes]
"""Send time (ms), marker, payload type, RTP timestamp, payload."""


def write_pcap(path: Path, packets: Sequence[RtpPacket]) -> None:
    """A pcap of RTP packets for sipp's ``play_pcap_audio``, which sends each payload at its
    time to the negotiated media port (addresses here are placeholders)."""
    records = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for seq, (at_ms, marker, payload_type, stamp, payload) in enumerate(packets):
        second = 0x80 * marker | payload_type
        rtp = struct.pack("!BBHII", 0x80, second, seq & 0xFFFF, stamp, 0x1D2C3B4A) + payload
        udp = struct.pack("!HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0,
            socket.inet_aton(HOST), socket.inet_aton(HOST),
        ) + udp  # fmt: skip
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        micros = at_ms * 1000
        records += struct.pack(
            "<IIII", micros // 1_000_000, micros % 1_000_000, len(frame), len(frame)
        )
        records += frame
    path.write_bytes(bytes(records))


def inband_packets(digits: str) -> list[RtpPacket]:
    """PCMU audio (PT 0) with the digits as tones, 20 ms per packet."""
    audio = tone_samples(digits)
    return [
        (i * 20, i == 0, 0, i * 160, audio[start : start + 160].ljust(160, bytes([ulaw(0)])))
        for i, start in enumerate(range(0, len(audio), 160))
    ]


def rfc4733_packets(digits: str, *, event_ms: int = 160, gap_ms: int = 240) -> list[RtpPacket]:
    """RFC 4733 telephone events (PT 101): per digit an update every 20 ms, then the end
    packet three times; each event at its own, rising timestamp (a PBX drops an event whose
    timestamp is older than the last one's)."""
    codes = {**{str(n): n for n in range(10)}, "*": 10, "#": 11}
    packets: list[RtpPacket] = []
    at = 200
    for digit in digits:
        stamp = at * 8
        steps = event_ms // 20
        for k in range(1, steps + 1):
            end = k == steps
            body = struct.pack("!BBH", codes[digit], 0x80 * end | 10, k * 160)
            for _ in range(3 if end else 1):
                packets.append((at + (k - 1) * 20, k == 1, 101, stamp, body))
        at += event_ms + gap_ms
    return packets


def silence_wav(path: Path, seconds: float = 1.0) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * int(8000 * seconds))


# -- sipp ----------------------------------------------------------------------------------

SDP_CODECS = {
    "rfc4733": (
        "0 101",
        "a=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15",
    ),
    "info": ("0", "a=rtpmap:0 PCMU/8000"),
    "inband": ("0", "a=rtpmap:0 PCMU/8000"),
}


def scenario(digits: str, mode: Mode, caller: str, *, hold_ms: int, workdir: Path) -> str:
    """A UAC that calls, sends ``digits`` once the call is up, then waits for the PBX to hang
    up — or hangs up itself after ``hold_ms`` (a caller who gives up)."""
    payload, attributes = SDP_CODECS[mode]
    steps: list[str] = ['<pause milliseconds="800"/>']
    if mode in ("rfc4733", "inband"):
        packets = rfc4733_packets(digits) if mode == "rfc4733" else inband_packets(digits)
        pcap = workdir / f"{mode}-{secrets.token_hex(4)}.pcap"
        write_pcap(pcap, packets)
        # No pause for the playback: the PBX may hang up as soon as the last digit is in
        # (a fast agent did, within the pause's last 100 ms), and a BYE that arrives during
        # a pause is "unexpected" to sipp. The recording plays on while it waits for the BYE.
        steps.append(f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>')
    else:
        for d in digits:
            steps.append(
                f"""<send><![CDATA[
INFO sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: [cseq] INFO
Contact: <sip:{caller}@[local_ip]:[local_port]>
Content-Type: application/dtmf-relay
Content-Length: [len]

Signal={d}
Duration=160
]]></send>
<recv response="200"/>
<pause milliseconds="200"/>"""
            )
    body = "\n".join(steps)
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="ID Bellen caller ({mode})">
<send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:{caller}@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=caller 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP {payload}
{attributes}
a=sendrecv
]]></send>
<recv response="100" optional="true"/>
<recv response="180" optional="true"/>
<recv response="183" optional="true"/>
<recv response="200" rtd="true"/>
<send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: <sip:{caller}@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
{body}
<recv request="BYE" timeout="{hold_ms}" ontimeout="hangup"/>
<send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
<nop next="done"/>
<label id="hangup"/>
<send><![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 3 BYE
Contact: <sip:{caller}@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
<recv response="200" optional="true" timeout="2000"/>
<label id="done"/>
</scenario>
"""


@dataclass
class SippCall:
    """One sipp caller process."""

    process: asyncio.subprocess.Process
    workdir: Path
    name: str

    async def finished(self, timeout: float = 60.0) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.returncode is None:
            with _suppress_lookup():
                self.process.kill()

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob(f"{self.name}*.log"))
        )


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
        return kind is ProcessLookupError


async def sipp_call(
    sip: str,
    dialled: str,
    digits: str,
    workdir: Path,
    *,
    mode: Mode = "rfc4733",
    caller: str = "+31612399887",
    hold_ms: int = 60_000,
    sip_port: int,
    media_port: int,
    name: str | None = None,
) -> SippCall:
    name = name or f"call-{sip_port}"
    path = workdir / f"{name}.xml"
    path.write_text(scenario(digits, mode, caller, hold_ms=hold_ms, workdir=workdir))
    process = await asyncio.create_subprocess_exec(
        "sipp", "-sf", str(path), "-s", dialled, sip,
        "-i", HOST, "-p", str(sip_port), "-mi", HOST, "-mp", str(media_port),
        "-m", "1", "-timeout", f"{hold_ms // 1000 + 60}s", "-nostdin",
        "-trace_err", "-error_file", str(workdir / f"{name}-errors.log"),
        cwd=workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return SippCall(process, workdir, name)


# -- baresip -------------------------------------------------------------------------------


@dataclass
class Baresip:
    """One baresip user agent, scripted over its ``ctrl_tcp`` interface (netstrings)."""

    process: subprocess.Popen[bytes]
    ctrl_port: int
    log: IO[bytes]
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, deadline: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while True:
            try:
                self.reader, self.writer = await asyncio.open_connection(HOST, self.ctrl_port)
                break
            except OSError:
                if loop.time() > end or self.process.poll() is not None:
                    raise
                await asyncio.sleep(0.05)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.reader is not None
        while True:
            length = await self.reader.readuntil(b":")
            data = await self.reader.readexactly(int(length[:-1]) + 1)
            self.events.append(json.loads(data[:-1]))
            self._changed.set()

    async def command(self, command: str, params: str = "") -> None:
        assert self.writer is not None
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self.writer.write(str(len(body)).encode() + b":" + body + b",")
        await self.writer.drain()

    async def dial_digits(self, digits: str, *, gap: float = 0.3) -> None:
        """Send DTMF (RFC 4733) one digit at a time, at a person's typing rhythm (baresip
        1.0 sends a whole string at once, which overlaps the events)."""
        for digit in digits:
            await self.command("sndcode", digit)
            await asyncio.sleep(gap)
        await self.command("sndcode", "")

    async def wait_for(
        self, event_type: str, timeout: float = 20.0, after: int = 0
    ) -> dict[str, Any]:
        """The first event of ``event_type`` at index ``after`` or later."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            for event in self.events[after:]:
                if event.get("type") == event_type:
                    return event
            self._changed.clear()
            left = end - loop.time()
            if left <= 0:
                raise TimeoutError(f"baresip: no {event_type} in {timeout} s: {self.events[-5:]}")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.writer is not None:
            self.writer.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.process.wait), 5)
            except TimeoutError:
                self.process.kill()
        self.log.close()


async def run_baresip(workdir: Path, account: str, attempts: int = 3) -> Baresip:
    """:func:`start_baresip` on free ports, connected to its control interface.

    Free ports are found by binding and letting go, so another process can take one before
    baresip binds it (in CI an outgoing connection took a SIP port once: "Address already in
    use", and baresip exited). Then it starts again on new ports.
    """
    for attempt in range(1, attempts + 1):
        sip_port, ctrl_port, rtp_low = ports(3)
        phone = start_baresip(
            workdir,
            account,
            sip_port=sip_port,
            ctrl_port=ctrl_port,
            rtp_ports=(rtp_low, rtp_low + 20),
        )
        try:
            await phone.connect()
            return phone
        except OSError:
            exited = phone.process.poll() is not None
            await phone.stop()
            if not exited or attempt == attempts:
                raise
    raise AssertionError("unreachable")


def start_baresip(
    workdir: Path, account: str, *, sip_port: int, ctrl_port: int, rtp_ports: tuple[int, int]
) -> Baresip:
    """``account``: the accounts line, e.g. ``<sip:agent1@127.0.0.1:55060>;auth_pass=…``."""
    workdir.mkdir(parents=True, exist_ok=True)
    silence = workdir / "silence.wav"
    # baresip ends the call when its audio source runs out: enough for any test.
    silence_wav(silence, seconds=600)
    (workdir / "config").write_text(
        "\n".join(
            [
                f"sip_listen {HOST}:{sip_port}",
                f"net_interface {HOST}",
                "audio_player aubridge,nil",
                f"audio_source aufile,{silence}",
                f"rtp_ports {rtp_ports[0]}-{rtp_ports[1]}",
                "module_path /usr/lib/baresip/modules",
                "module g711.so",
                "module aufile.so",
                "module aubridge.so",
                "module_tmp account.so",
                "module_app menu.so",
                "module_app ctrl_tcp.so",
                f"ctrl_tcp_listen {HOST}:{ctrl_port}",
                "",
            ]
        )
    )
    (workdir / "accounts").write_text(account + "\n")
    log = open(workdir / "baresip.log", "wb")
    process = subprocess.Popen(
        ["baresip", "-f", str(workdir)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env={**os.environ, "HOME": str(workdir)},
    )
    return Baresip(process, ctrl_port, log)


def ports(count: int) -> Sequence[int]:
    """``count`` free UDP ports on 127.0.0.1 (held together while picked)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
