"""Each role's served OpenAPI document, and schemathesis fuzzing of each role for 5xx answers.

Core, auth and comm run as three ``idcontact serve`` processes with the configuration of the
split-role flow tests. For each role separately the test fetches ``/openapi.json``, checks its
shape and key paths, and runs the schemathesis CLI against it with the ``not_a_server_error``
check: no generated request may get a 5xx answer.

Schemathesis runs as a subprocess, in a temporary working directory, with an explicit
configuration file (so no ``schemathesis.toml`` is discovered from the repository), a fixed seed,
one worker, no example database and no reports. Schemathesis 4.x has no telemetry and no
upload service (reports are local files, and none are asked for); ``SCHEMATHESIS_TELEMETRY``
is set to ``false`` anyway for the 3.x releases that had it. The only host it talks to is the
server under test on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flows._servers import PURPOSE, Server, SplitRoles, start_split_roles

pytest.importorskip("schemathesis", minversion="4.0")

ROLES = ("core", "auth", "comm")
KEY_PATHS = {
    "core": {"/start", "/session_options/{purpose}", "/session_options"},
    "auth": {"/auth/demo/start_authentication", "/auth/demo/confirm/{state}"},
    "comm": {"/comm/demo/start_communication", "/comm/demo/c/{conversation_id}"},
}
FOREIGN_PREFIXES = {
    "core": ("/auth/", "/comm/"),
    "auth": ("/comm/", "/start", "/session_options"),
    "comm": ("/auth/", "/start", "/session_options"),
}

SEED = 20240607
MAX_EXAMPLES = 50
RUN_TIMEOUT_S = 120.0

# Dictionaries steer part of the generated values to ones the configuration knows, so the
# fuzzer also gets past "unknown purpose" into the real flows; the rest stays random.
SCHEMATHESIS_CONFIG = f"""\
[dictionaries.purposes]
values = ["{PURPOSE}"]

[dictionaries.methods]
values = ["demo"]

[dictionaries.attributes]
values = ["fullname", "bsn"]

[dictionaries.urls]
values = ["http://127.0.0.1:9/landing", "tel:+31201234567,1234", "https://example.invalid/x?y=1"]

[parameters]
"path.purpose" = {{ dictionary = "purposes", probability = 0.5 }}
"body.purpose" = {{ dictionary = "purposes", probability = 0.7 }}
"body.auth_method" = {{ dictionary = "methods", probability = 0.7 }}
"body.comm_method" = {{ dictionary = "methods", probability = 0.7 }}
"body.attributes[*]" = {{ dictionary = "attributes", probability = 0.7 }}
"body.continuation" = {{ dictionary = "urls", probability = 0.7 }}
"body.attr_url" = {{ dictionary = "urls", probability = 0.5 }}
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openapi")


@pytest.fixture(scope="module")
def roles(workdir: Path) -> Iterator[SplitRoles]:
    started = start_split_roles(workdir)
    try:
        yield started
    finally:
        started.stop()


def _server(roles: SplitRoles, role: str) -> Server:
    server: Server = getattr(roles, role)
    return server


def _schema(server: Server) -> dict[str, Any]:
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        response = client.get(f"{server.url}/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    schema = json.loads(response.text)
    assert isinstance(schema, dict)
    return schema


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolves(schema: dict[str, Any], ref: str) -> bool:
    if not ref.startswith("#/"):
        return False
    node: object = schema
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("role", ROLES)
def test_openapi_document(roles: SplitRoles, role: str) -> None:
    schema = _schema(_server(roles, role))
    assert str(schema.get("openapi", "")).startswith("3."), schema.get("openapi")
    paths = schema.get("paths")
    assert isinstance(paths, dict) and paths
    missing = KEY_PATHS[role] - set(paths)
    assert not missing, f"{role}: missing paths {sorted(missing)}; has {sorted(paths)}"
    foreign = [p for p in paths if p.startswith(FOREIGN_PREFIXES[role])]
    assert not foreign, f"{role} documents another role's paths: {foreign}"
    assert "/healthz" not in paths


@pytest.mark.parametrize("role", ROLES)
def test_openapi_references_resolve(roles: SplitRoles, role: str) -> None:
    schema = _schema(_server(roles, role))
    dangling = sorted({ref for ref in _refs(schema) if not _resolves(schema, ref)})
    assert not dangling, f"{role}: unresolvable $ref in /openapi.json: {dangling}"


def _schemathesis_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
    }
    env.update(
        {
            "NO_PROXY": "127.0.0.1,localhost",
            "SCHEMATHESIS_TELEMETRY": "false",
            "NO_COLOR": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.mark.parametrize("role", ROLES)
def test_schemathesis_finds_no_server_error(roles: SplitRoles, workdir: Path, role: str) -> None:
    server = _server(roles, role)
    config = workdir / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG, encoding="utf-8")
    args = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--url",
        server.url,
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
    ]
    log_start = len(server.log_text())
    try:
        run = subprocess.run(
            args,
            cwd=workdir,
            env=_schemathesis_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"schemathesis on {role} took over {RUN_TIMEOUT_S:.0f} s:\n{exc.stdout!r}")
    server_log = server.log_text()[log_start:]
    errors = [line for line in server_log.splitlines() if '"level": "ERROR"' in line]
    assert run.returncode == 0, (
        f"schemathesis found problems in the {role} role (exit {run.returncode}).\n"
        f"--- schemathesis stdout ---\n{run.stdout}\n--- stderr ---\n{run.stderr}\n"
        f"--- {role} server errors ---\n" + "\n".join(errors[-20:])
    )
    assert not errors, f"{role} logged errors during the run:\n" + "\n".join(errors[-20:])
    assert "generated" in run.stdout, run.stdout
