"""The ``openid4vp`` auth plugin end to end: the resident's browser is the test client, and our
test wallet (:mod:`idcontact.openid4vp.holder`) walks the real protocol over HTTP against the
in-process app — fetch the request object once, verify it, present SD-JWT VCs with key
binding, post ``direct_post`` or ``direct_post.jwt``. Every refusal is a problem+json answer
that stores nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.jwk import ECKey
from sqlalchemy import text

from idcontact.errors import ConfigError
from idcontact.openid4vp.holder import Credential, Request, Wallet
from idcontact.openid4vp.sdjwt import b64url
from tests.conftest import CANARY_BSN, PUBLIC, AppFactory, Instance, path_of
from tests.live import serve
from tests.openid4vp.support import (
    ADDRESS,
    FAMILY,
    GIVEN,
    PID,
    Pki,
    did_issuer,
    make_ca,
    make_pki,
    plugin_config,
    wallet_settings,
    x5c,
    x509_issuer,
)

pytestmark = pytest.mark.anyio

JSON = {"Accept": "application/json"}
START = {"purpose": "report_move", "auth_method": "eudi", "comm_method": "demo"}
PROBLEM = "application/problem+json"


async def begin(inst: Instance, start: dict[str, str] = START) -> tuple[str, str]:
    """The resident starts; returns the page's path and the ``openid4vp://`` link it shows."""
    started = await inst.client.post("/start", json=start, headers=JSON)
    assert started.status_code == 200, started.text
    page_url = path_of(started.json()["client_url"])
    page = await inst.client.get(page_url)
    assert page.status_code == 200, page.text
    assert "<svg" in page.text
    found = re.search(r'data-link="([^"]+)"', page.text)
    assert found, "the page shows the QR code's link"
    link = found.group(1).replace("&amp;", "&")
    assert link.startswith("openid4vp://?client_id=")
    assert f'href="{found.group(1)}"' in page.text  # the same-device button
    return page_url, link


async def opened(inst: Instance, credentials: list[Credential]) -> tuple[Wallet, Request, str]:
    page_url, link = await begin(inst)
    w = Wallet(inst.client, credentials)
    return w, await w.open(link), page_url


async def delivered(inst: Instance) -> int:
    """How many conversations got attributes (the vault holds them)."""
    db = inst.services.db
    assert db is not None

    def count(conn: Any) -> int:
        return int(
            conn.execute(
                text("SELECT count(*) FROM conversations WHERE delivered_at IS NOT NULL")
            ).scalar_one()
        )

    return await db.run(count)


def assert_problem(answer: httpx.Response, slug: str, status: int = 400) -> None:
    """A problem+json answer of type ``slug`` that shows no value of the resident."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["type"].endswith("/" + slug)
    for value in (CANARY_BSN, GIVEN, FAMILY):
        assert value not in answer.text


def db_bytes(inst: Instance) -> bytes:
    url = inst.settings.resolved_database_url
    path = Path(url.split("///", 1)[1])
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


async def test_a_resident_presents_encrypted_and_only_the_asked_attributes_arrive(
    make_app: AppFactory, tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inst = await make_app(wallet_settings(tmp_path, plugin_config(pki)))
    w, asked, page_url = await opened(inst, [pki.issuer.credential()])
    claims = asked.claims
    assert asked.client_id == "x509_san_dns:testserver" and asked.verified_by == "x509"
    assert claims["response_mode"] == "direct_post.jwt"
    key = claims["client_metadata"]["jwks"]["keys"][0]
    assert key["kty"] == "EC" and key["alg"] == "ECDH-ES" and key["kid"] and "d" not in key
    assert claims["client_metadata"]["vp_formats_supported"]["dc+sd-jwt"] == {
        "sd-jwt_alg_values": ["ES256"],
        "kb-jwt_alg_values": ["ES256"],
    }
    assert claims["response_type"] == "vp_token" and claims["nonce"] != claims["state"]
    assert claims["dcql_query"] == {
        "credentials": [
            {
                "id": "c0",
                "format": "dc+sd-jwt",
                "meta": {"vct_values": [PID]},
                "claims": [{"path": ["given_name"]}, {"path": ["family_name"]}, {"path": ["bsn"]}],
            }
        ]
    }
    # request_uri is served once.
    request_uri = claims["response_uri"].replace("/response/", "/request/")
    assert (await inst.client.get(request_uri)).status_code == 404

    # The wallet discloses one claim more than asked: verified, then dropped.
    answer = await w.respond(asked, w.presentations(asked, extra={"c0": ["nationality"]}))
    assert answer.status_code == 200, answer.text
    assert (await inst.client.get(page_url + "/status")).json() == {"status": "done"}
    done = await inst.client.get(page_url + "/done")
    assert done.status_code == 303
    landing = done.headers["location"]
    assert "result=" not in landing  # delivered to attr_url on receipt
    conversation = landing.split("?", 1)[0].rsplit("/", 1)[1]
    conversations = inst.services.conversations
    assert conversations is not None
    stored = await conversations.attributes(conversation, actor="test")
    assert stored is not None
    assert stored["attributes"] == {"fullname": f"{GIVEN} {FAMILY}", "bsn": CANARY_BSN}
    provenance: Any = stored["provenance"]
    assert provenance["issuer"] == "Test Issuer B.V."
    assert provenance["credential"].startswith(PID + " (")
    assert provenance["method_name"] == "EU-wallet" and provenance["assurance"] == "substantial"
    # The extra claim was never stored; no value reached the log.
    assert b"NL-canary-extra" not in db_bytes(inst)
    assert CANARY_BSN.encode() not in db_bytes(inst)  # the vault encrypts the rest
    for needle in (CANARY_BSN, GIVEN, FAMILY, "NL-canary-extra", asked.nonce):
        assert needle not in caplog.text
    # The answer's state is used up.
    again = await w.respond(asked, w.presentations(asked))
    assert_problem(again, "state-used")


async def test_plain_direct_post_with_a_did_client_id_and_a_did_issuer(
    make_app: AppFactory, tmp_path: Path, pki: Pki
) -> None:
    issuer = did_issuer()
    config = plugin_config(
        pki,
        client_id_prefix="decentralized_identifier",
        development=True,
        response_mode="direct_post",
        trusted_dids=[issuer.iss],
        request_key=None,
        certificate_chain=None,
    )
    inst = await make_app(wallet_settings(tmp_path, config))
    w, asked, page_url = await opened(inst, [issuer.credential()])
    assert asked.client_id.startswith("decentralized_identifier:did:jwk:")
    assert asked.verified_by == "did" and "jwks" not in asked.claims["client_metadata"]
    answer = await w.respond(asked, w.presentations(asked))
    assert answer.status_code == 200, answer.text
    assert await delivered(inst) == 1
    done = await inst.client.get(page_url + "/done")
    assert done.status_code == 303


async def test_alternatives_are_credential_sets_and_the_second_option_is_accepted(
    make_app: AppFactory, tmp_path: Path, pki: Pki
) -> None:
    inst = await make_app(wallet_settings(tmp_path, plugin_config(pki)))
    start = {"purpose": "waste_collection", "auth_method": "eudi", "comm_method": "demo"}
    _, link = await begin(inst, start)
    address = pki.issuer.credential({"postal_code": "6511AB"}, vct=ADDRESS)
    w = Wallet(inst.client, [address])
    asked = await w.open(link)
    query = asked.claims["dcql_query"]
    assert [c["meta"]["vct_values"] for c in query["credentials"]] == [[PID], [ADDRESS]]
    assert query["credential_sets"] == [
        {"options": [["postcode_0"], ["postcode_1"]], "required": True}
    ]
    answer = await w.respond(asked, w.presentations(asked))
    assert answer.status_code == 200, answer.text
    assert await delivered(inst) == 1


# -- refusals ------------------------------------------------------------------------------


def _tamper(presentation: str) -> str:
    """Change the value inside the first disclosure (its salt and name stay)."""
    parts = presentation.split("~")
    salt, name, _ = json.loads(base64.urlsafe_b64decode(parts[1] + "=="))
    parts[1] = b64url(json.dumps([salt, name, "Mallory"]).encode())
    return "~".join(parts)


def _without(w: Wallet, asked: Request, claim: str) -> dict[str, list[str]]:
    credential, names = w.choose(asked)["c0"]
    kept = [n for n in names if n != claim]
    return {"c0": [credential.present(kept, aud=asked.client_id, nonce=asked.nonce)]}


CASES = {
    "wrong-nonce": lambda w, a: w.presentations(a, nonce="not-the-nonce"),
    "wrong-audience": lambda w, a: w.presentations(a, aud="x509_san_dns:evil.example"),
    "stale-presentation": lambda w, a: w.presentations(a, iat=int(time.time()) - 3600),
    "disclosure-invalid": lambda w, a: {q: [_tamper(p[0])] for q, p in w.presentations(a).items()},
    "claim-missing": lambda w, a: _without(w, a, "bsn"),
    "presentation-too-large": lambda w, a: {
        q: [p[0].replace("~", "~" + "A" * 40_000 + "~", 1)] for q, p in w.presentations(a).items()
    },
    "presentation-malformed": lambda w, a: {"c9": ["x~y~"]},
}


@pytest.mark.parametrize("slug", list(CASES))
async def test_a_bad_presentation_is_a_clear_problem_and_stores_nothing(
    make_app: AppFactory, tmp_path: Path, pki: Pki, slug: str
) -> None:
    inst = await make_app(
        wallet_settings(tmp_path, plugin_config(pki, response_mode="direct_post"))
    )
    w, asked, page_url = await opened(inst, [pki.issuer.credential()])
    answer = await w.respond(asked, CASES[slug](w, asked))
    assert_problem(answer, slug, 413 if slug == "presentation-too-large" else 400)
    assert asked.nonce not in answer.text
    assert await delivered(inst) == 0
    # The state is used up: a good answer after a bad one is refused too.
    retry = await w.respond(asked, w.presentations(asked))
    assert_problem(retry, "state-used")
    assert await delivered(inst) == 0
    # The resident's page says it failed, with "try again".
    failed = await inst.client.get(page_url + "/done")
    assert failed.status_code == 200 and "niet gelukt" in failed.text
    assert 'action="' + PUBLIC + page_url + '/retry"' in failed.text


@pytest.mark.parametrize(
    ("slug", "credential"),
    [
        ("untrusted-issuer", lambda pki: x509_issuer(make_ca("Other CA")).credential()),
        ("untrusted-issuer", lambda pki: did_issuer().credential()),
        ("credential-expired", lambda pki: pki.issuer.credential(exp_in=-3600)),
        ("credential-type-not-allowed", lambda pki: pki.issuer.credential(vct="urn:other")),
    ],
)
async def test_an_untrusted_or_expired_credential_is_refused(
    make_app: AppFactory, tmp_path: Path, pki: Pki, slug: str, credential: Any
) -> None:
    inst = await make_app(wallet_settings(tmp_path, plugin_config(pki)))
    _, link = await begin(inst)
    bad: Credential = credential(pki)
    w = Wallet(inst.client, [bad])
    asked = await w.open(link)
    # The wallet matches on vct; for the wrong-type case present it under the asked query.
    token = {
        "c0": [
            bad.present(
                ["given_name", "family_name", "bsn"], aud=asked.client_id, nonce=asked.nonce
            )
        ]
    }
    answer = await w.respond(asked, token)
    assert_problem(answer, slug)
    assert await delivered(inst) == 0


async def test_an_encrypted_answer_to_another_key_and_unknown_requests_are_refused(
    make_app: AppFactory, tmp_path: Path, pki: Pki
) -> None:
    inst = await make_app(wallet_settings(tmp_path, plugin_config(pki)))
    w, asked, _ = await opened(inst, [pki.issuer.credential()])
    other = dict(asked.claims)
    stranger = ECKey.generate_key("P-256").as_dict(private=False)
    other["client_metadata"] = {**other["client_metadata"], "jwks": {"keys": [stranger]}}
    forged = Request(asked.client_id, other, asked.verified_by, asked.token)
    answer = await w.respond(forged, w.presentations(asked))
    assert_problem(answer, "response-decryption-failed")
    plain = await inst.client.post(
        asked.claims["response_uri"], data={"vp_token": "{}", "state": "x"}
    )
    assert plain.status_code == 400  # this transaction wants direct_post.jwt
    unknown = await inst.client.post(
        "/auth/eudi/response/nonsense", data={"vp_token": "{}", "state": "x"}
    )
    assert_problem(unknown, "unknown-transaction")
    assert (await inst.client.get("/auth/eudi/request/nonsense")).status_code == 404
    assert await delivered(inst) == 0


async def test_a_refusal_in_the_wallet_is_a_page_with_retry_and_another_way(
    make_app: AppFactory, tmp_path: Path, pki: Pki
) -> None:
    inst = await make_app(
        wallet_settings(tmp_path, plugin_config(pki, response_mode="direct_post"))
    )
    _, asked, page_url = await opened(inst, [pki.issuer.credential()])
    refused = await inst.client.post(
        asked.claims["response_uri"],
        data={"error": "access_denied", "state": asked.claims["state"]},
    )
    assert refused.status_code == 200
    assert (await inst.client.get(page_url + "/status")).json() == {"status": "failed"}
    failed = await inst.client.get(page_url + "/done")
    assert "geweigerd" in failed.text
    retried = await inst.client.post(page_url + "/retry")
    assert retried.status_code == 303
    fresh = path_of(retried.headers["location"])
    assert (await inst.client.get(page_url)).status_code == 404
    given_up = await inst.client.post(fresh + "/give_up")
    assert given_up.status_code == 303
    landing = await inst.client.get(path_of(given_up.headers["location"]))
    assert "Identificeren is geannuleerd of mislukt" in landing.text


async def test_a_phone_conversation_ends_on_the_tel_page_in_this_browser_only(
    make_app: AppFactory, tmp_path: Path, pki: Pki
) -> None:
    inst = await make_app(wallet_settings(tmp_path, plugin_config(pki)))
    started = await inst.client.post(
        "/start", data={"purpose": "report_move", "auth_method": "eudi", "comm_method": "phone"}
    )
    assert started.status_code == 303
    page = await inst.client.get(path_of(started.headers["location"]))
    assert "het nummer om te bellen" in page.text
    found = re.search(r'data-link="([^"]+)"', page.text)
    assert found
    w = Wallet(inst.client, [pki.issuer.credential()])
    asked = await w.open(unquote(found.group(1).replace("&amp;", "&")))
    assert (await w.respond(asked, w.presentations(asked))).status_code == 200
    done = await inst.client.get(path_of(started.headers["location"]) + "/done")
    assert done.status_code == 303
    tel_page = done.headers["location"]
    assert tel_page.startswith(f"{PUBLIC}/tel/")
    shown = await inst.client.get(path_of(tel_page))
    assert shown.status_code == 200
    code = re.search(r'href="tel:\+31851234567,([0-9]{10})"', shown.text)
    assert code, shown.text
    assert code.group(1) not in tel_page
    other = httpx.AsyncClient(transport=inst.client._transport, base_url=PUBLIC)
    stolen = await other.get(path_of(tel_page))
    assert stolen.status_code == 403 and code.group(1) not in stolen.text


async def test_the_demo_wallet_walks_the_protocol_in_a_browser_tab(
    make_app: AppFactory, tmp_path: Path, pki: Pki
) -> None:
    config = plugin_config(
        pki,
        client_id_prefix="decentralized_identifier",
        development=True,
        demo_wallet=True,
        request_key=None,
        certificate_chain=None,
        trust_anchors=[],
        attributes={
            "fullname": [
                {"vct": "urn:idcontact:demo:pid:1", "claims": ["given_name", "family_name"]}
            ],
            "bsn": [{"vct": "urn:idcontact:demo:pid:1", "claims": ["bsn"]}],
            "postcode": [{"vct": "urn:idcontact:demo:pid:1", "claims": ["resident_postal_code"]}],
            "birthyear": [
                {"vct": "urn:idcontact:demo:pid:1", "claims": ["birthdate"], "take": "year"}
            ],
            "municipality": [{"vct": "urn:idcontact:demo:pid:1", "claims": ["municipality"]}],
        },
    )
    inst = await make_app(wallet_settings(tmp_path, config))
    started = await inst.client.post("/start", json=START, headers=JSON)
    page_url = path_of(started.json()["client_url"])
    page = await inst.client.get(page_url)
    found = re.search(r'id="demo-wallet" href="([^"]+)"', page.text)
    assert found, "the page links the demo wallet"
    consent = await inst.client.get(path_of(found.group(1).replace("&amp;", "&")))
    assert consent.status_code == 200, consent.text
    assert "niet geverifieerd" in consent.text and "given_name, family_name, bsn" in consent.text
    state = re.search(r'name="state" value="([^"]+)"', consent.text)
    assert state
    shared = await inst.client.post(
        "/auth/eudi/demo-wallet",
        data={"state": state.group(1), "resident": "piet", "action": "share"},
    )
    assert 'data-accepted="yes"' in shared.text, shared.text
    done = await inst.client.get(page_url + "/done")
    landing = done.headers["location"]
    conversation = landing.split("?", 1)[0].rsplit("/", 1)[1]
    conversations = inst.services.conversations
    assert conversations is not None
    stored = await conversations.attributes(conversation, actor="test")
    assert stored is not None
    assert stored["attributes"] == {"fullname": "Piet Proef", "bsn": "999991772"}


async def test_misconfigurations_stop_start_up(
    make_app: AppFactory, tmp_path: Path, pki: Pki
) -> None:
    with pytest.raises(ConfigError, match="decentralized_identifier needs development"):
        await make_app(
            wallet_settings(
                tmp_path, plugin_config(pki, client_id_prefix="decentralized_identifier")
            )
        )
    with pytest.raises(ConfigError, match="DNS names must include the host"):
        await make_app(
            wallet_settings(tmp_path, plugin_config(pki), public_url="https://elsewhere.example")
        )
    settings = wallet_settings(tmp_path, plugin_config(pki))
    no_shim = [
        m.model_copy(update={"shim_tel_url": False}) if m.tag == "eudi" else m
        for m in settings.auth_methods
    ]
    with pytest.raises(ConfigError, match="shim_tel_url"):
        await make_app(settings.model_copy(update={"auth_methods": tuple(no_shim)}))


async def test_bad_starts_are_clear_errors(make_app: AppFactory, tmp_path: Path, pki: Pki) -> None:
    inst = await make_app(wallet_settings(tmp_path, plugin_config(pki)))
    unknown = await inst.client.post(
        "/auth/eudi/start_authentication",
        json={"attributes": ["shoe_size"], "continuation": f"{PUBLIC}/x"},
    )
    assert unknown.status_code == 400 and unknown.headers["content-type"] == PROBLEM
    tel = await inst.client.post(
        "/auth/eudi/start_authentication",
        json={"attributes": ["bsn"], "continuation": "tel:+31851234567,1234567890"},
    )
    assert tel.status_code == 400 and "tel page" in tel.json()["detail"]
    assert (await inst.client.get("/auth/eudi/s/nonsense")).status_code == 404


async def test_an_x509_hash_client_id_names_our_leaf_certificate(
    make_app: AppFactory, tmp_path: Path, pki: Pki
) -> None:
    inst = await make_app(
        wallet_settings(tmp_path, plugin_config(pki, client_id_prefix="x509_hash"))
    )
    w, asked, _ = await opened(inst, [pki.issuer.credential()])
    der = pki.rp.cert.public_bytes(serialization.Encoding.DER)
    assert asked.client_id == "x509_hash:" + b64url(hashlib.sha256(der).digest())
    assert asked.verified_by == "x509"
    answer = await w.respond(asked, w.presentations(asked))
    assert answer.status_code == 200, answer.text
    assert await delivered(inst) == 1
    # A presentation bound to the x509_san_dns spelling of us is not for this client id.
    w2, asked2, _ = await opened(inst, [pki.issuer.credential()])
    # Each transaction has its own encryption key, state and nonce.
    first, second = asked.claims, asked2.claims
    assert first["client_metadata"]["jwks"] != second["client_metadata"]["jwks"]
    assert first["state"] != second["state"] and first["nonce"] != second["nonce"]
    wrong = await w2.respond(asked2, w2.presentations(asked2, aud="x509_san_dns:testserver"))
    assert_problem(wrong, "wrong-audience")


async def test_with_status_lists_a_revoked_credential_is_refused_and_a_valid_one_accepted(
    make_app: AppFactory, tmp_path: Path, pki: Pki
) -> None:
    """The issuer publishes its Token Status List over real HTTP (127.0.0.1); entry 0 is
    valid, entry 1 revoked."""
    issuer = pki.issuer
    with serve(lambda base: _status_list_app(issuer, base)) as lists:
        uri = f"{lists}/status/1"
        inst = await make_app(wallet_settings(tmp_path, plugin_config(pki, check_status=True)))
        for idx, expected in ((1, 400), (0, 200)):
            status = {"status_list": {"idx": idx, "uri": uri}}
            w, asked, _ = await opened(inst, [issuer.credential(status=status)])
            answer = await w.respond(asked, w.presentations(asked))
            assert answer.status_code == expected, answer.text
            if expected == 400:
                assert answer.json()["type"].endswith("/credential-revoked")
                assert await delivered(inst) == 0
        assert await delivered(inst) == 1


def _status_list_app(issuer: Any, base: str) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def status_list(request: Any) -> Response:
        uri = f"{base}/status/1"
        payload = {
            "iss": issuer.iss,
            "sub": uri,
            "iat": int(time.time()),
            "ttl": 60,
            # bits = 1: entry 0 valid, entry 1 revoked (0b10).
            "status_list": {"bits": 1, "lst": b64url(zlib.compress(bytes([0b10])))},
        }
        token = jws.serialize_compact(
            {"alg": "ES256", "typ": "statuslist+jwt", "x5c": x5c(*issuer.chain)},
            json.dumps(payload).encode(),
            issuer.key,
            algorithms=["ES256"],
        )
        return Response(token, media_type="application/statuslist+jwt")

    return Starlette(routes=[Route("/status/1", status_list)])


async def test_hostile_answers_are_clear_problems(
    make_app: AppFactory, tmp_path: Path, pki: Pki
) -> None:
    inst = await make_app(
        wallet_settings(tmp_path, plugin_config(pki, response_mode="direct_post"))
    )
    _, asked, _ = await opened(inst, [pki.issuer.credential()])
    uri = asked.claims["response_uri"]
    for form in (
        {"vp_token": "[" * 5_000, "state": "x"},  # a wrong state is refused before parsing
        {"vp_token": "{}", "state": "\u00e9t\u00e9"},  # not ASCII
    ):
        answer = await inst.client.post(uri, data=form)
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"] == PROBLEM
    deep = await inst.client.post(
        uri, data={"vp_token": "[" * 5_000, "state": asked.claims["state"]}
    )
    assert_problem(deep, "presentation-malformed")
    json_body = await inst.client.post(uri, json={"vp_token": {}, "state": "x"})
    assert json_body.status_code == 400
    assert await delivered(inst) == 0
