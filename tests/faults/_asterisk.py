"""A private Asterisk for the restart test, run from the shared Asterisk root (its binaries,
modules and sounds, read only) with its own configuration, run, log, spool and database
directories inside the root's /tmp, its own SIP, ARI and RTP ports, stopped by its PID. The
shared Asterisk is never touched."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.flows._servers import free_ports
from tests.services import _unavailable
from tests.telephony.pbx import Pbx

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "tests" / "telephony" / "asterisk"
HOST = "127.0.0.1"
RTP = (43000, 43999)  # the shared one uses 41000-41999


@dataclass
class PrivateAsterisk:
    root: Path
    private: Path
    """Inside the root, as the chrooted Asterisk sees it (``/tmp/idc-fault-…``)."""
    sip_port: int
    ari_port: int
    password: str
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls) -> PrivateAsterisk:
        root = Path(os.environ.get("IDCONTACT_TEST_ASTERISK_ROOT", ""))
        if not (root / "usr" / "sbin" / "asterisk").exists():
            _unavailable(
                "Asterisk root not found (IDCONTACT_TEST_ASTERISK_ROOT; scripts/services/asterisk)"
            )
        if os.geteuid() != 0:
            _unavailable("a private Asterisk runs chrooted: root needed")
        if not os.path.ismount(root / "proc"):
            _unavailable("the Asterisk root has no /proc mounted (start scripts/services/asterisk)")
        sip_port, ari_port = free_ports(2)
        # The chrooted Asterisk's own /tmp, inside the root (not the host's).
        private = Path("/tmp") / f"idc-fault-{secrets.token_hex(4)}"  # noqa: S108
        server = cls(root, private, sip_port, ari_port, secrets.token_urlsafe(18))
        server._render()
        return server

    def _host_path(self, inside: Path) -> Path:
        return self.root / inside.relative_to("/")

    def _render(self) -> None:
        etc = self._host_path(self.private / "etc")
        for sub in ("etc", "run", "log", "spool", "lib"):
            self._host_path(self.private / sub).mkdir(parents=True, mode=0o700)
        for conf in CONF.glob("*.conf"):
            text = (
                conf.read_text(encoding="utf-8")
                .replace("@HOST@", HOST)
                .replace("@SIP_PORT@", str(self.sip_port))
                .replace("@ARI_PORT@", str(self.ari_port))
                .replace("@ARI_PASSWORD@", self.password)
            )
            if conf.name == "asterisk.conf":
                for key, sub in (
                    ("astetcdir", "etc"),
                    ("astvarlibdir", "lib"),
                    ("astdbdir", "lib"),
                    ("astkeydir", "lib"),
                    ("astspooldir", "spool"),
                    ("astrundir", "run"),
                    ("astlogdir", "log"),
                ):
                    lines = [
                        f"{key} => {self.private / sub}" if line.startswith(f"{key} =>") else line
                        for line in text.splitlines()
                    ]
                    text = "\n".join(lines) + "\n"
            if conf.name == "rtp.conf":
                text = text.replace("rtpstart = 41000", f"rtpstart = {RTP[0]}").replace(
                    "rtpend = 41999", f"rtpend = {RTP[1]}"
                )
            (etc / conf.name).write_text(text, encoding="utf-8")

    @property
    def pbx(self) -> Pbx:
        return Pbx(
            ari_url=f"http://{HOST}:{self.ari_port}/ari",
            user="idcontact",
            password=self.password,
            sip=f"{HOST}:{self.sip_port}",
            root=self.root,
        )

    def start(self) -> None:
        log = self._host_path(self.private / "asterisk.out").open("ab")
        self.process = subprocess.Popen(
            [
                "chroot",
                str(self.root),
                "/usr/sbin/asterisk",
                "-f",
                "-C",
                str(self.private / "etc" / "asterisk.conf"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ping = httpx.get(
                    f"{self.pbx.ari_url}/asterisk/ping",
                    auth=("idcontact", self.password),
                    timeout=1,
                    trust_env=False,
                )
                if ping.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the private Asterisk did not answer on ARI")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self._host_path(self.private), ignore_errors=True)
