"""DigiD logins per second through the SAML artifact flow, and the per-login cost of the XML
signature work (issue #9, point 5).

**Logins.** One ``idcontact serve`` (one worker, SQLite) with a ``digid`` method at level Midden;
the test IdP of ``tests/saml_idp.py`` (pysaml2, front channel over HTTP, artifact resolution
over HTTPS with a client certificate) runs in this process. ``--clients`` concurrent residents
each log in back to back for ``--seconds``: ``POST /start`` (purpose: the BSN only), the login
redirect with a signed AuthnRequest, the IdP, the ACS (our server resolves the artifact over
mutual TLS and verifies the signed assertion), the confirmation page, "pass on", the demo
channel. Reported: logins per second, the latency of a whole login, and the server's CPU time
per login (its capacity on one core is the inverse). Single logout is off here.

**Signature work.** In this process, pysaml2 with ``xmlsec1`` as the server uses it, per login:
signing the AuthnRequest (Redirect binding: a signature over the query string), signing the
ArtifactResolve (an enveloped XML signature, an ``xmlsec1`` run) and verifying the Response's
signed assertion (``xmlsec1``). The IdP's own work is not counted.

    .venv/bin/python bench/digid.py                    # 30 samples, 4 clients for 10 s
    .venv/bin/python bench/digid.py --samples 10 --clients 2 --seconds 5

Results: bench/results/digid-<UTC stamp>.json and digid-latest.json (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks

from tests.saml_idp import Idp, Pki, make_pki, running_idp  # noqa: E402

import flows  # noqa: E402
from idcontact.digid.levels import LEVELS  # noqa: E402
from idcontact.digid.saml import ServiceProvider, SpSettings  # noqa: E402

SP_ENTITY = "https://gemeente.example/digid/sp"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def config_toml(pki: Pki, metadata: Path) -> str:
    return f"""# Written by bench/digid.py
[attribute_labels]
bsn = {{ nl = "Burgerservicenummer (BSN)", en = "Citizen service number (BSN)" }}

[[auth_methods]]
tag = "digid"
name = "DigiD"
plugin = "digid"
assurance = "substantial"
provides = ["bsn"]

[plugins.auth.digid]
level = "midden"
single_logout = false
saml.entity_id = "{SP_ENTITY}"
saml.certificate_file = "{pki.sp.cert}"
saml.key_file = "{pki.sp.key}"
saml.idp_metadata_file = "{metadata}"
saml.back_channel_tls.certificate_file = "{pki.tls_client.cert}"
saml.back_channel_tls.key_file = "{pki.tls_client.key}"
saml.back_channel_tls.ca_file = "{pki.ca}"

[[comm_methods]]
tag = "demo"
name = "Demokanaal"
plugin = "demo"

[[purposes]]
tag = "question"
label = {{ nl = "Vraag", en = "Question" }}
attributes = ["bsn"]
allowed_auth = ["*"]
allowed_comm = ["*"]
min_assurance = "substantial"
"""


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(flows.percentile(ordered, 99), 2),
        "mean": round(statistics.fmean(ordered), 2),
    }


async def one_login(client: httpx.AsyncClient, base: str) -> float:
    begin = time.perf_counter()
    started = await client.post(
        f"{base}/start",
        json={"purpose": "question", "auth_method": "digid", "comm_method": "demo"},
        headers={"Accept": "application/json"},
    )
    started.raise_for_status()
    login = await client.get(started.json()["client_url"])
    to_idp = login.headers["location"]
    back = (await client.get(to_idp)).headers["location"]  # the IdP: an artifact
    acs = await client.get(back)
    if acs.status_code != 303 or not acs.headers["location"].endswith("/confirm"):
        raise RuntimeError(f"login refused: HTTP {acs.status_code}")
    await client.get(acs.headers["location"])
    shared = await client.post(acs.headers["location"], data={"action": "share"})
    landing = await client.get(shared.headers["location"])
    landing.raise_for_status()
    return (time.perf_counter() - begin) * 1000


async def logins(base: str, clients: int, seconds: float, pid: int) -> dict[str, Any]:
    async def resident(deadline: float, times: list[float]) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while time.perf_counter() < deadline:
                times.append(await one_login(client, base))

    async with httpx.AsyncClient(timeout=30) as warm:
        await one_login(warm, base)
    times: list[float] = []
    cpu_before = flows.process_cpu_seconds(pid)
    reaped_before = reaped_children_cpu(pid)
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(resident(deadline, times) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    cpu = flows.process_cpu_seconds(pid) - cpu_before
    reaped = reaped_children_cpu(pid) - reaped_before
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "logins": len(times),
        "logins_per_s": round(len(times) / elapsed, 2),
        "login_ms": summary(times),
        "server_cpu_ms_per_login": round(cpu * 1000 / max(len(times), 1), 2),
        "xmlsec1_cpu_ms_per_login": round(reaped * 1000 / max(len(times), 1), 2),
    }


def reaped_children_cpu(pid: int) -> float:
    """CPU seconds of the server's finished child processes (the ``xmlsec1`` runs)."""
    fields = flows._stat_fields(pid)
    return 0.0 if fields is None else (int(fields[13]) + int(fields[14])) / CLK_TCK


def signatures(pki: Pki, idp: Idp, samples: int) -> dict[str, Any]:
    """Our SP's signature work per login, timed alone (the IdP's answers made untimed)."""
    sp = ServiceProvider(
        SpSettings(
            SP_ENTITY,
            "http://127.0.0.1/acs",
            "http://127.0.0.1/slo",
            pki.sp.cert,
            pki.sp.key,
            "artifact",
            LEVELS["midden"],
        ),
        idp.metadata(),
    )
    idp.trust(sp.metadata())
    timings: dict[str, list[float]] = {"authn_request": [], "artifact_resolve": [], "verify": []}
    with httpx.Client(timeout=30) as browser:
        for i in range(samples + 1):
            t0 = time.perf_counter()
            request_id, url = sp.login("bench")
            t1 = time.perf_counter()
            artifact = parse_qs(urlsplit(browser.get(url).headers["location"]).query)["SAMLart"][0]
            t2 = time.perf_counter()
            sp.artifact_resolve(artifact)
            t3 = time.perf_counter()
            encoded = base64.b64encode(idp.last_response.encode()).decode()
            t4 = time.perf_counter()
            sp.response(encoded, "artifact", request_id)
            t5 = time.perf_counter()
            if i:  # the first is a warm-up
                timings["authn_request"].append((t1 - t0) * 1000)
                timings["artifact_resolve"].append((t3 - t2) * 1000)
                timings["verify"].append((t5 - t4) * 1000)
    per_login = [sum(v) for v in zip(*timings.values(), strict=True)]
    return {
        "samples": samples,
        **{k: summary(v) for k, v in timings.items()},
        "total": summary(per_login),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"benchmark": "digid", "machine": flows.machine_info()}
    with tempfile.TemporaryDirectory(prefix="idc-digid-bench-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        with running_idp(pki) as idp:
            report["signatures_ms"] = signatures(pki, idp, args.samples)
            metadata = work / "idp-metadata.xml"
            metadata.write_text(idp.metadata())
            config = work / "idcontact.toml"
            config.write_text(config_toml(pki, metadata))
            data = work / "data"
            data.mkdir()
            server = flows.start_server(
                config=config,
                data_dir=data,
                port=flows.free_port(),
                roles=(),
                env=flows.clean_env(),
                log_path=work / "server.log",
            )
            try:
                with httpx.Client(timeout=30) as client:
                    idp.trust(client.get(f"{server.url}/auth/digid/metadata").text)
                report["logins"] = asyncio.run(
                    logins(server.url, args.clients, args.seconds, server.proc.pid)
                )
                report["idp_resolves"] = idp.resolves
            finally:
                flows.stop_server(server)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report["at"] = stamp
    s = report["signatures_ms"]
    print(
        f"signature work per login (ours, {s['samples']} samples): AuthnRequest "
        f"p50 {s['authn_request']['p50']} ms, ArtifactResolve p50 {s['artifact_resolve']['p50']} "
        f"ms, assertion verify p50 {s['verify']['p50']} ms; total p50 {s['total']['p50']} ms "
        f"(p99 {s['total']['p99']})"
    )
    r = report["logins"]
    print(
        f"logins through the artifact flow ({r['clients']} clients, {r['seconds']} s): "
        f"{r['logins_per_s']}/s, a login p50 {r['login_ms']['p50']} ms "
        f"(p99 {r['login_ms']['p99']}), server CPU {r['server_cpu_ms_per_login']} ms each "
        f"+ {r['xmlsec1_cpu_ms_per_login']} ms in its xmlsec1 runs"
    )
    if not args.no_write:
        stamped, _ = flows.write_results(report, stamp, "digid")
        print(f"results: {stamped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
