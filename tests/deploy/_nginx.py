"""A private nginx with deploy/nginx/idcontact.conf in front of test instances.

The shipped configuration is used as it is; only the lines marked ``# adapt`` are rewritten
(listen address, certificate, upstream servers, access log), and it is wrapped in a main
configuration whose every path is under the test's directory. Stopped by its PID.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.certs import self_signed

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "nginx" / "idcontact.conf"
HOST = "127.0.0.1"


def site_config(port: int, upstreams: list[int], cert: Path, key: Path, access_log: Path) -> str:
    text = SHIPPED.read_text(encoding="utf-8")
    servers = "".join(f"    server {HOST}:{p} max_fails=1 fail_timeout=5s;\n" for p in upstreams)
    text = re.sub(r"(    server 127\.0\.0\.1:\d+ [^\n]*# adapt\n)+", servers, text)
    text = re.sub(r"listen 443 ssl;[^\n]*", f"listen {HOST}:{port} ssl;", text)
    text = re.sub(r"ssl_certificate     [^;]+;", f"ssl_certificate {cert};", text)
    text = re.sub(r"ssl_certificate_key [^;]+;", f"ssl_certificate_key {key};", text)
    text = re.sub(r"access_log [^ ]+ idcontact;", f"access_log {access_log} idcontact;", text)
    return text


@dataclass
class Nginx:
    port: int
    prefix: Path
    process: subprocess.Popen[bytes]
    cert: Path
    access_log: Path

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish what is open
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_nginx(binary: str, workdir: Path, port: int, upstreams: list[int]) -> Nginx:
    prefix = workdir / "nginx"
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(prefix, HOST, "cert.pem", "key.pem")
    access_log = prefix / "logs" / "access.log"
    (prefix / "idcontact.conf").write_text(
        site_config(port, upstreams, cert, key, access_log), encoding="utf-8"
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    tmp = prefix / "tmp"
    (prefix / "nginx.conf").write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    access_log off;
    include {prefix}/idcontact.conf;
}}
""",
        encoding="utf-8",
    )
    check = subprocess.run(
        [binary, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    with (prefix / "logs" / "stderr.log").open("wb") as stderr:  # the child keeps its own
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    nginx = Nginx(port, prefix, process, cert, access_log)
    deadline = time.monotonic() + 15
    with httpx.Client(verify=nginx.ssl_context(), trust_env=False, timeout=2) as client:
        while True:
            try:
                if client.get(f"{nginx.url}/healthz").status_code == 200:
                    return nginx
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                nginx.stop()
                raise RuntimeError(
                    "nginx did not come up: "
                    + (prefix / "logs" / "error.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.05)
