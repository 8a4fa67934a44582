"""An independent implementation checks us: a Node holder on the npm packages
``@sd-jwt/sd-jwt-vc`` and ``@sd-jwt/crypto-nodejs`` issues an SD-JWT VC, opens our
``openid4vp://`` link over real HTTP, checks our signed request object and presents to our
verifier (``direct_post``). The attributes must arrive exactly as a Python wallet's would."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from joserfc.jwk import ECKey

from idcontact.app import create_app, services_of
from idcontact.openid4vp.trust import did_jwk_of
from tests.live import serve
from tests.openid4vp.support import PID, make_pki, plugin_config, wallet_settings, x5c
from tests.services import node_holder

START = {"purpose": "report_move", "auth_method": "eudi", "comm_method": "demo"}
CLAIMS = {
    "given_name": "Node",
    "family_name": "Holder",
    "bsn": "999993653",
    "nationality": "NL-node-extra",
}


def _holder(stdin: dict[str, Any]) -> dict[str, Any]:
    holder = node_holder()
    done = subprocess.run(
        [holder.node, str(holder.script)],
        input=json.dumps(stdin).encode(),
        capture_output=True,
        timeout=60,
        cwd=holder.script.parent,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("issued_by", ["did:jwk", "x5c"])
def test_a_node_holder_presents_to_our_verifier(tmp_path: Path, issued_by: str) -> None:
    node_holder()  # skip (locally) or fail (CI) before starting a server
    pki = make_pki(tmp_path)
    if issued_by == "x5c":  # an issuer certificate under our configured trust anchor
        issuer, iss, chain = pki.issuer.key, pki.issuer.iss, x5c(*pki.issuer.chain)
    else:
        issuer = ECKey.generate_key("P-256")
        iss, chain = did_jwk_of(issuer), None
    config = plugin_config(
        pki,
        client_id_prefix="decentralized_identifier",
        development=True,
        response_mode="direct_post",
        trusted_dids=[iss] if chain is None else [],
        request_key=None,
        certificate_chain=None,
    )

    def make(base: str) -> Any:
        return create_app(wallet_settings(tmp_path, config, public_url=base))

    with serve(make) as base, httpx.Client(base_url=base, timeout=10) as browser:
        started = browser.post("/start", json=START, headers={"Accept": "application/json"})
        assert started.status_code == 200, started.text
        page_url = started.json()["client_url"]
        page = browser.get(page_url)
        found = re.search(r'data-link="([^"]+)"', page.text)
        assert found
        link = found.group(1).replace("&amp;", "&")
        answer = _holder(
            {
                "link": link,
                "issuer_jwk": issuer.as_dict(private=True),
                "iss": iss,
                "vct": PID,
                "claims": CLAIMS,
                "x5c": chain,
            }
        )
        assert answer["asked"] == ["given_name", "family_name", "bsn"]
        assert answer["status"] == 200, answer["body"]
        done = browser.get(page_url + "/done")
        assert done.status_code == 303
        conversation = done.headers["location"].split("?", 1)[0].rsplit("/", 1)[1]
        assert browser.get(page_url + "/status").json() == {"status": "done"}

    async def stored() -> Any:
        # The server has stopped; a new instance on the same data directory reads its store.
        app = create_app(wallet_settings(tmp_path, config, public_url=base))
        async with app.router.lifespan_context(app):
            conversations = services_of(app).tenants["default"].conversations
            assert conversations is not None
            return await conversations.attributes(conversation, actor="test")

    found_attributes = anyio.run(stored)
    assert found_attributes is not None
    assert found_attributes["attributes"] == {"fullname": "Node Holder", "bsn": "999993653"}
    assert b"NL-node-extra" not in b"".join(
        p.read_bytes() for p in (tmp_path / "data").glob("idcontact.sqlite3*")
    )
