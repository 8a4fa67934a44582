"""WebRTC signalling for the ``video`` channel, over the chat's WebSocket of each side.

The browsers send ``{"type": "signal", "data": …}`` frames; the server checks them, cleans
them and relays them (through the bus, never stored or logged) to the other side of the same
conversation, only while it is ``connected``. Each side gets ``{"type": "ice", "servers",
"policy"}``: the TURN servers with fresh time-limited credentials (coturn's REST scheme,
``use-auth-secret``), and ``"relay"`` as the ICE transport policy by default, so media go only
through the TURN server and resident and agent never learn each other's IP address. In that
mode the server also drops every candidate that is not ``typ relay`` and blanks addresses in
SDP, so even a modified browser cannot hand its address to the other side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from idcontact.errors import ConfigError
from idcontact.settings import Method, Tenant

MAX_SIGNAL = 32_768
"""The largest signal frame (an SDP offer of audio and video is about 6 kB)."""
MAX_SDP = 24_000
MAX_CANDIDATE = 1_000
SIGNALS_PER_MINUTE = 240
"""Per socket: a call needs a few dozen; more is a browser gone wrong, or abuse."""
TURN_URL = r"^turns?:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(\?transport=(udp|tcp))?$"
PEER_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MEDIA = frozenset({"video", "audio", "none"})
PANEL_TEXT: dict[str, dict[str, str]] = {
    "nl": {
        "title": "Video",
        "unsupported": "Video werkt niet in deze browser (of zonder JavaScript). Gebruik de chat "
        "hieronder.",
        "starting": "Camera en microfoon starten…",
        "waiting": "Wachten op de video van de medewerker…",
        "connecting": "Video verbinden…",
        "connected": "Video verbonden.",
        "failed": "De videoverbinding is mislukt. Gebruik de chat hieronder{call_us}, of "
        "probeer het opnieuw.",
        "ended": "De video is gestopt. De chat blijft open.",
        "refused": "Uw camera en microfoon zijn geweigerd of niet beschikbaar. U ziet en hoort "
        "de medewerker wel; praat met de medewerker in de chat hieronder{call_us}.",
        "audio_only": "Uw camera is geweigerd of niet beschikbaar: de medewerker hoort u wel, "
        "maar ziet u niet.",
        "other_audio": "De medewerker heeft geen camera aan: u hoort de medewerker alleen.",
        "other_none": "De medewerker heeft geen camera en microfoon aan: gebruik de chat.",
        "relay": "De video loopt via onze server: de medewerker ziet uw internetadres "
        "(IP-adres) niet.",
        "direct": "Demo: de video gaat rechtstreeks tussen de browsers, dus de medewerker kan "
        "uw internetadres (IP-adres) zien.",
        "call_us": " of bel ons op {phone}",
        "remote": "Video van de medewerker",
        "local": "Uw eigen beeld",
        "mute": "Microfoon uit",
        "unmute": "Microfoon aan",
        "camera_off": "Camera uit",
        "camera_on": "Camera aan",
        "hangup": "Video stoppen",
        "restart": "Video opnieuw starten",
        "play": "Geluid en beeld aanzetten",
    },
    "en": {
        "title": "Video",
        "unsupported": "Video does not work in this browser (or without JavaScript). Use the "
        "chat below.",
        "starting": "Starting your camera and microphone…",
        "waiting": "Waiting for the agent's video…",
        "connecting": "Connecting the video…",
        "connected": "Video connected.",
        "failed": "The video connection failed. Use the chat below{call_us}, or try again.",
        "ended": "The video has stopped. The chat stays open.",
        "refused": "Your camera and microphone were refused or are not available. You can "
        "still see and hear the agent; talk to them in the chat below{call_us}.",
        "audio_only": "Your camera was refused or is not available: the agent can hear you "
        "but not see you.",
        "other_audio": "The agent's camera is off: you can only hear them.",
        "other_none": "The agent's camera and microphone are off: use the chat.",
        "relay": "The video goes through our server: the agent does not see your internet "
        "(IP) address.",
        "direct": "Demo: the video goes directly between the browsers, so the agent can see "
        "your internet (IP) address.",
        "call_us": " or call us on {phone}",
        "remote": "The agent's video",
        "local": "Your own picture",
        "mute": "Mute microphone",
        "unmute": "Unmute microphone",
        "camera_off": "Camera off",
        "camera_on": "Camera on",
        "hangup": "Stop video",
        "restart": "Restart video",
        "play": "Turn on sound and picture",
    },
}
AGENT_TEXT: dict[str, str] = {
    **PANEL_TEXT["nl"],
    "waiting": "Wachten op de video van de inwoner…",
    "failed": "De videoverbinding is mislukt. Probeer het opnieuw, of ga verder in de chat.",
    "refused": "Uw camera en microfoon zijn geweigerd of niet beschikbaar. U ziet en hoort de "
    "inwoner wel.",
    "audio_only": "Uw camera is geweigerd of niet beschikbaar: de inwoner hoort u alleen.",
    "other_audio": "De inwoner heeft geen camera aan: u hoort de inwoner alleen.",
    "other_none": "De inwoner heeft camera en microfoon geweigerd of niet beschikbaar: ga "
    "verder in de chat.",
    "relay": "De video loopt via onze server: u en de inwoner zien elkaars IP-adres niet.",
    "direct": "Demo: de video gaat rechtstreeks tussen de browsers; u en de inwoner kunnen "
    "elkaars IP-adres zien.",
    "remote": "Video van de inwoner",
}
RELAY = re.compile(r" typ relay( |$)")
RELATED = re.compile(r" raddr \S+ rport \d+")
ADDRESS_LINE = re.compile(r"^(c=|a=rtcp:\d+ |o=\S+ \S+ \S+ )IN IP[46] \S+$")


class VideoConfig(BaseModel):
    """``[plugins.comm.<tag>]`` of a method with ``plugin = "video"``."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    turn_urls: tuple[str, ...] = ()
    """The TURN server(s), e.g. ``["turn:turn.gemeente.nl:3478?transport=udp",
    "turns:turn.gemeente.nl:5349?transport=tcp"]``."""
    turn_secret: SecretStr | None = None
    """coturn's ``static-auth-secret`` (or ``turn_secret_file``)."""
    turn_secret_file: Path | None = None
    """A file holding that secret (readable by its owner only)."""
    credential_seconds: int = Field(default=600, ge=60, le=24 * 3600)
    """How long a TURN credential may start a relay (a call in progress keeps its relay)."""
    relay_only: bool = True
    """Media only through TURN (``iceTransportPolicy: relay``): neither side learns the other's
    IP address. ``false`` lets browsers connect directly (demo only)."""


class Signalling:
    """The TURN credentials and the signal checks of one video method."""

    def __init__(
        self, config: VideoConfig, secret: bytes | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.relay_only = config.relay_only
        self._config = config
        self._secret = secret
        self._clock = clock

    def credentials(self) -> tuple[str, str]:
        """coturn's REST credentials: ``<expiry>:<random id>`` and base64(HMAC-SHA1(secret,
        username)). The id is random: the TURN server's log cannot tie it to a conversation."""
        if self._secret is None:
            raise ConfigError("no TURN secret configured")
        expires = int(self._clock()) + self._config.credential_seconds
        username = f"{expires}:{secrets.token_urlsafe(9)}"
        digest = hmac.new(self._secret, username.encode(), hashlib.sha1).digest()
        return username, base64.b64encode(digest).decode()

    def ice(self) -> dict[str, object]:
        """The ``ice`` frame for one side: servers with fresh credentials, and the policy."""
        servers: list[dict[str, object]] = []
        if self._config.turn_urls:
            username, credential = self.credentials()
            servers.append(
                {
                    "urls": list(self._config.turn_urls),
                    "username": username,
                    "credential": credential,
                }
            )
        return {
            "type": "ice",
            "servers": servers,
            "policy": "relay" if self.relay_only else "all",
        }

    def clean(self, data: object) -> dict[str, object] | None:
        """The signal to relay, or ``None`` when it is malformed (or, relay-only, shows an
        address that is not the TURN server's)."""
        if not isinstance(data, dict) or len(data) != 1:
            return None
        ((kind, value),) = data.items()
        if kind == "bye" and value is True:
            return {"bye": True}
        if kind == "hello" and isinstance(value, dict):
            peer, media = value.get("peer"), value.get("media")
            if isinstance(peer, str) and PEER_ID.match(peer) and media in MEDIA:
                return {"hello": {"peer": peer, "media": media}}
            return None
        if kind == "description" and isinstance(value, dict):
            kind_, sdp = value.get("type"), value.get("sdp")
            if kind_ in ("offer", "answer") and isinstance(sdp, str) and len(sdp) <= MAX_SDP:
                return {"description": {"type": kind_, "sdp": self._clean_sdp(sdp)}}
            return None
        if kind == "candidate" and isinstance(value, dict):
            return self._clean_candidate(value)
        return None

    def _clean_candidate(self, value: dict[str, Any]) -> dict[str, object] | None:
        line, mid, index = value.get("candidate"), value.get("sdpMid"), value.get("sdpMLineIndex")
        fragment = value.get("usernameFragment")
        if not isinstance(line, str) or len(line) > MAX_CANDIDATE or "\n" in line:
            return None
        if not (mid is None or (isinstance(mid, str) and len(mid) <= 32)):
            return None
        if not (index is None or (isinstance(index, int) and 0 <= index < 64)):
            return None
        if not (fragment is None or (isinstance(fragment, str) and len(fragment) <= 256)):
            return None
        if line:  # "" marks the end of the candidates
            if self.relay_only:
                if not RELAY.search(line):
                    return None
                line = RELATED.sub(" raddr 0.0.0.0 rport 0", line)
        return {
            "candidate": {
                "candidate": line,
                "sdpMid": mid,
                "sdpMLineIndex": index,
                "usernameFragment": fragment,
            }
        }

    def _clean_sdp(self, sdp: str) -> str:
        if not self.relay_only:
            return sdp
        kept = []
        for line in sdp.split("\r\n"):
            if line.startswith("a=candidate:"):
                if not RELAY.search(line):
                    continue
                line = RELATED.sub(" raddr 0.0.0.0 rport 0", line)
            elif found := ADDRESS_LINE.match(line):
                # The origin and default addresses: with ICE nobody uses them, and they could
                # be real ones.
                blank = "127.0.0.1" if line.startswith("o=") else "0.0.0.0"  # noqa: S104
                line = f"{found.group(1)}IN IP4 {blank}"
            kept.append(line)
        return "\r\n".join(kept)


def panel(me: str, lang: str, *, relay_only: bool, phone: str | None) -> dict[str, object]:
    """What ``video_panel.html`` shows one side: who it is and every text ``video.js`` uses."""
    texts = dict(AGENT_TEXT if me == "agent" else PANEL_TEXT[lang])
    call_us = texts.pop("call_us").format(phone=phone) if phone else ""
    texts = {k: v.replace("{call_us}", call_us) for k, v in texts.items()}
    # What the page says about addresses: hidden by the relay, or (demo) not.
    texts["privacy"] = texts.pop("relay") if relay_only else texts.pop("direct")
    texts.pop("direct", None)
    return {"me": me, "texts": texts}


def video_config(tag: str, config: dict[str, Any]) -> tuple[VideoConfig, bytes | None]:
    """The validated settings of video method ``tag`` and its TURN secret; a
    :class:`ConfigError` names the setting, never the secret."""
    where = f"plugins.comm.{tag}"
    # The waiting room's own setting (attributes at an attr_url or in-band) is not ours.
    config = {k: v for k, v in config.items() if k != "use_attr_url"}
    try:
        parsed = VideoConfig.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}.{field}: {first['msg']}") from None
    for url in parsed.turn_urls:
        if not re.match(TURN_URL, url):
            raise ConfigError(
                f"{where}.turn_urls: each a turn: or turns: URL (turn:host:port?transport=udp)"
            )
    if parsed.turn_secret is not None and parsed.turn_secret_file is not None:
        raise ConfigError(f"{where}: set turn_secret or turn_secret_file, not both")
    secret = _secret(where, parsed)
    if parsed.turn_urls and secret is None:
        raise ConfigError(f"{where}.turn_secret: the TURN server's static-auth-secret is needed")
    if parsed.relay_only and not parsed.turn_urls:
        raise ConfigError(
            f"{where}.turn_urls: relay_only = true needs a TURN server (turn_urls and "
            "turn_secret or turn_secret_file); relay_only = false is for demos only"
        )
    return parsed, secret


def _secret(where: str, config: VideoConfig) -> bytes | None:
    if config.turn_secret is not None:
        value = config.turn_secret.get_secret_value().strip()
        name = "turn_secret"
    elif config.turn_secret_file is not None:
        name = "turn_secret_file"
        path = config.turn_secret_file
        try:
            mode = path.stat().st_mode
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{where}.{name}: {path} cannot be read ({type(exc).__name__})"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}.{name}: {path} is not text") from None
        if stat.S_IMODE(mode) & 0o077:
            raise ConfigError(
                f"{where}.{name}: {path} is readable by group or others (use chmod 600)"
            )
    else:
        return None
    if len(value) < 16:
        raise ConfigError(f"{where}.{name}: the secret must be at least 16 characters")
    return value.encode()


def signalling_for(tenant: Tenant, method: Method) -> Signalling:
    """The signalling of ``method`` (a ``video`` comm method of ``tenant``)."""
    config, secret = video_config(method.tag, tenant.plugins.get("comm", {}).get(method.tag, {}))
    return Signalling(config, secret)
