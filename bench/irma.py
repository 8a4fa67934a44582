"""IRMA disclosure verification, ours and the Go reference server's, on the same proofs,
and whole disclosure sessions per second through our server (issue #5, point 7).

For each sample a session is started at the Go server (``scripts/services/yivi``); our test
wallet opens it as the app and proves its credentials for that session's nonce. Timed:

- **ours**: ``verify_disclosure`` on that disclosure, in this process (pure Python integers);
- **Go**: ``POST /irma/session/<token>/proofs`` of the same disclosure to the Go server, a
  loopback HTTP round trip that includes its JSON parsing and verification.

With 1 credential (the 1024-bit ``irma-demo.RU`` key) and with 5 credentials (three issuers,
1024- and 2048-bit keys, one of a keyshare scheme).

Whole sessions: one ``idcontact serve`` (one worker, the embedded default with ``[irma]`` and a
token requestor) and ``--clients`` processes that each run sessions back to back for
``--seconds``: start (requestor API), open and disclose one credential (app API, our test
wallet), fetch the result. Reported: sessions per second, the latency of a whole session, and
the server's CPU time per session (its capacity on one core is the inverse).

    .venv/bin/python bench/irma.py             # 30 samples each, 2 clients for 10 s
    .venv/bin/python bench/irma.py --samples 10 --clients 2 --seconds 5

Results: bench/results/irma-<UTC stamp>.json and irma-latest.json (see bench/README.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SERVICE = REPO / "scripts" / "services" / "yivi"


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks
from tests.irma import test_wallet as fixtures  # noqa: E402

import flows  # noqa: E402
from idcontact.irma.request import DisclosureRequest  # noqa: E402
from idcontact.irma.verify import verify_disclosure  # noqa: E402
from idcontact.irma.wallet import Wallet  # noqa: E402

ONE = [[["irma-demo.RU.studentCard.studentID"]]]
FIVE = [
    [["irma-demo.RU.studentCard.studentID"]],
    [["irma-demo.MijnOverheid.fullName.familyname"]],
    [["irma-demo.MijnOverheid.singleton.BSN"]],
    [["irma-demo.stemmen.stempas.election"]],
    [["test.test.email.email"]],
]


def wallet() -> Wallet:
    w = Wallet()
    fixtures.student(w)
    fixtures.name(w)
    w.add(
        fixtures.MIJN.issue(
            fixtures.ctype("irma-demo.MijnOverheid.singleton"), {"BSN": "999990019"}, w.secret
        )
    )
    stemmen_key = fixtures.SCHEMES.public_key("irma-demo.stemmen", 0)
    assert stemmen_key is not None
    stemmen = fixtures.Issuer(
        stemmen_key,
        fixtures.PrivateKey.load(fixtures.CONFIG / "irma-demo/stemmen/PrivateKeys/0.xml"),
    )
    w.add(
        stemmen.issue(
            fixtures.ctype("irma-demo.stemmen.stempas"),
            {"election": "Gemeenteraad", "votingnumber": "42"},
            w.secret,
        )
    )
    w.add(fixtures.TEST.issue(fixtures.ctype("test.test.email"), {"email": "a@b.nl"}, w.secret))
    return w


def sample(client: httpx.Client, w: Wallet, disclose: list[Any]) -> tuple[float, float]:
    started = client.post(
        "/session",
        json={"@context": "https://irma.app/ld/request/disclosure/v2", "disclose": disclose},
    ).json()
    url = started["sessionPtr"]["u"]
    binding = secrets.token_urlsafe(16)
    headers = {"X-IRMA-MinProtocolVersion": "2.8", "X-IRMA-MaxProtocolVersion": "2.8"}
    raw = client.get(url + "/", headers={**headers, "Authorization": binding}).json()["request"]
    request = DisclosureRequest.parse(raw)
    disclosure = w.disclose(request)
    t0 = time.perf_counter()
    ours = verify_disclosure(disclosure, request, fixtures.SCHEMES)
    t1 = time.perf_counter()
    theirs = client.post(url + "/proofs", json=disclosure, headers={"Authorization": binding})
    t2 = time.perf_counter()
    if not ours.valid or theirs.json().get("proofStatus") != "VALID":
        raise RuntimeError(f"not valid: ours {ours.status}, Go {theirs.text}")
    return (t1 - t0) * 1000, (t2 - t1) * 1000


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(flows.percentile(ordered, 50), 2),
        "p99": round(flows.percentile(ordered, 99), 2),
        "mean": round(sum(ordered) / len(ordered), 2),
    }


def one_session(client: httpx.Client, w: Wallet, token: str) -> None:
    """A whole disclosure session as requestor and app do it."""
    ask = {"@context": "https://irma.app/ld/request/disclosure/v2", "disclose": ONE}
    started = client.post("/yivi/session", json=ask, headers={"Authorization": token}).json()
    url, binding = started["sessionPtr"]["u"], secrets.token_urlsafe(16)
    headers = {"X-IRMA-MinProtocolVersion": "2.8", "X-IRMA-MaxProtocolVersion": "2.8"}
    raw = client.get(url + "/", headers={**headers, "Authorization": binding}).json()["request"]
    disclosure = w.disclose(DisclosureRequest.parse(raw))
    answer = client.post(url + "/proofs", json=disclosure, headers={"Authorization": binding})
    result = client.get(f"/yivi/session/{started['token']}/result").json()
    if answer.json() != {"proofStatus": "VALID"} or result["proofStatus"] != "VALID":
        raise RuntimeError(f"session not valid: {answer.text}")


def session_client(base: str, token: str, seconds: float) -> list[float]:
    """One client process: whole sessions back to back; their durations in ms."""
    w = wallet()
    took: list[float] = []
    with httpx.Client(base_url=base, timeout=30) as client:
        one_session(client, w, token)  # warm-up
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            one_session(client, w, token)
            took.append((time.perf_counter() - t0) * 1000)
    return took


def sessions(clients: int, seconds: float) -> dict[str, Any]:
    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="idc-bench-irma-") as tmp:
        work = Path(tmp)
        config = work / "idcontact.toml"
        config.write_text(
            flows.config_toml()
            + f'\n[irma]\nenabled = true\n[[irma.requestors]]\nname = "bench"\nsecret = "{token}"\n'
        )
        port = flows.free_port()
        env = {**flows.clean_env(), "IDCONTACT_PUBLIC_URL": f"http://127.0.0.1:{port}"}
        server = flows.start_server(
            config=config, data_dir=work, port=port, roles=(), env=env, log_path=work / "log"
        )
        try:
            cpu0 = flows.process_cpu_seconds(server.proc.pid)
            t0 = time.perf_counter()
            with multiprocessing.get_context("spawn").Pool(clients) as pool:
                runs = pool.starmap(session_client, [(server.url, token, seconds)] * clients)
            wall = time.perf_counter() - t0
            cpu = flows.process_cpu_seconds(server.proc.pid) - cpu0
        finally:
            flows.stop_server(server)
    took = [t for run in runs for t in run]
    return {
        "clients": clients,
        "seconds": seconds,
        "sessions": len(took),
        "sessions_per_s": round(len(took) / seconds, 1),
        "session_ms": summary(took),
        "server_cpu_ms_per_session": round(cpu * 1000 / (len(took) + clients), 2),
        "wall_s_incl_start": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    started = subprocess.run(["bash", str(SERVICE), "status"], capture_output=True).returncode != 0
    if started:
        subprocess.run(["bash", str(SERVICE), "start"], check=True)
    out = subprocess.run(["bash", str(SERVICE), "env"], capture_output=True, text=True, check=True)
    env = dict(line.split("=", 1) for line in out.stdout.split())
    url = env["IDCONTACT_TEST_YIVI_URL"]
    go_token = (Path(env["IDCONTACT_TEST_YIVI_DIR"]) / "requestor-token").read_text().strip()
    w = wallet()
    report: dict[str, Any] = {"benchmark": "irma", "machine": flows.machine_info()}
    try:
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": go_token}) as client:
            for label, disclose in (("1 credential", ONE), ("5 credentials", FIVE)):
                sample(client, w, disclose)  # warm-up
                pairs = [sample(client, w, disclose) for _ in range(args.samples)]
                report[label] = {
                    "samples": args.samples,
                    "ours_ms": summary([p[0] for p in pairs]),
                    "go_http_ms": summary([p[1] for p in pairs]),
                }
    finally:
        if started:
            subprocess.run(["bash", str(SERVICE), "stop"], check=False)
    report["sessions"] = sessions(args.clients, args.seconds)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report["at"] = stamp
    stamped, _ = flows.write_results(report, stamp, "irma")
    for label in ("1 credential", "5 credentials"):
        r = report[label]
        print(
            f"{label}: ours p50 {r['ours_ms']['p50']} ms (p99 {r['ours_ms']['p99']}), "
            f"Go server incl. HTTP p50 {r['go_http_ms']['p50']} ms (p99 {r['go_http_ms']['p99']})"
        )
    r = report["sessions"]
    print(
        f"whole sessions through our server ({r['clients']} clients, {r['seconds']} s): "
        f"{r['sessions_per_s']}/s, a session p50 {r['session_ms']['p50']} ms "
        f"(p99 {r['session_ms']['p99']}), server CPU {r['server_cpu_ms_per_session']} ms each"
    )
    print(f"results: {stamped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
