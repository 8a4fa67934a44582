"""Bad input gets a clear problem+json error, changes nothing, and never echoes a secret."""

from __future__ import annotations

import logging

import pytest

from idcontact.tokens import AuthResult, TokenIssuer
from tests.conftest import CANARY_BSN, CANARY_NAME, Instance
from tests.flows.test_core_flows import JSON, START, consent, count, issue, new_slot

pytestmark = pytest.mark.anyio

JWT = {"Content-Type": "application/jwt"}


def assert_problem(response: object, status: int, slug: str | None = None) -> None:
    import httpx

    assert isinstance(response, httpx.Response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("https://")
    assert "Traceback" not in response.text
    if slug is not None:
        assert body["type"].endswith("/" + slug)


@pytest.mark.parametrize(
    ("body", "slug"),
    [
        ({"purpose": "nope", "auth_method": "demo", "comm_method": "demo"}, "unknown-purpose"),
        (
            {"purpose": "report_move", "auth_method": "nope", "comm_method": "demo"},
            "method-not-allowed",
        ),
        (
            {"purpose": "report_move", "auth_method": "demo", "comm_method": "nope"},
            "method-not-allowed",
        ),
        ({"purpose": "report_move"}, "invalid-start-request"),
        ([1, 2], "invalid-start-request"),
        ({"purpose": 1, "auth_method": "demo", "comm_method": "demo"}, "invalid-start-request"),
    ],
)
async def test_start_refuses_bad_requests(instance: Instance, body: object, slug: str) -> None:
    before = await count(instance, "conversations")
    assert_problem(await instance.client.post("/start", json=body, headers=JSON), 400, slug)
    assert await count(instance, "conversations") == before


async def test_start_refuses_malformed_json_and_media_types(instance: Instance) -> None:
    headers = {"Content-Type": "application/json", **JSON}
    assert_problem(await instance.client.post("/start", content=b"{nope", headers=headers), 400)
    assert_problem(await instance.client.post("/start", content=b"\xff\xfe", headers=headers), 400)
    assert_problem(
        await instance.client.post("/start", content=b"x", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported-media-type",
    )


async def test_oversized_bodies_are_refused(instance: Instance) -> None:
    big = b'{"purpose": "' + b"a" * (70 * 1024) + b'"}'
    response = await instance.client.post(
        "/start", content=big, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413, "payload-too-large")
    _, slot = await new_slot(instance)
    response = await instance.client.post(
        f"/comm/demo/attr/{slot}", content=b"a" * 70_000, headers=JWT
    )
    assert_problem(response, 413)


async def test_unknown_purpose_in_session_options(instance: Instance) -> None:
    assert_problem(await instance.client.get("/session_options/nope"), 400, "unknown-purpose")
    ok = await instance.client.get("/session_options/report_move")
    assert ok.json()["auth_methods"][0]["tag"] == "demo"


async def test_bad_tokens_at_an_attr_slot_change_nothing(instance: Instance) -> None:
    conversation_id, slot = await new_slot(instance)
    keys = instance.services.keys
    good = issue(instance)
    expired = TokenIssuer(keys.signing, kid=keys.signing_kid, clock=lambda: 1_000_000.0).issue(
        AuthResult(status="success", attributes={"fullname": CANARY_NAME}), keys.encryption_public
    )
    parts = good.split(".")
    tampered = ".".join(
        [*parts[:3], parts[3][:-2] + ("A" if parts[3][-2] != "A" else "B") + parts[3][-1], parts[4]]
    )
    cases = {
        "malformed-token": "not-a-token",
        "token-expired": expired,
        "token-decryption-failed": tampered,
    }
    for slug, token in cases.items():
        response = await instance.client.post(f"/comm/demo/attr/{slot}", content=token, headers=JWT)
        assert_problem(response, 400, slug)
        assert CANARY_NAME not in response.text and token not in response.text
    assert_problem(
        await instance.client.post(
            f"/comm/demo/attr/{slot}", content=good, headers={"Content-Type": "text/plain"}
        ),
        415,
    )
    assert instance.services.conversations is not None
    assert (await instance.services.conversations.get(conversation_id)).state == "created"
    assert await count(instance, "vault_entries") == 0
    # After all that, the right token still lands.
    response = await instance.client.post(f"/comm/demo/attr/{slot}", content=good, headers=JWT)
    assert response.status_code == 200


async def test_expired_demo_state_is_a_clear_error(instance: Instance) -> None:
    response = await instance.client.get("/auth/demo/confirm/garbage")
    assert_problem(response, 400, "invalid-state")


async def test_unknown_routes_and_methods_are_problems(instance: Instance) -> None:
    assert_problem(await instance.client.get("/nope"), 404, "not-found")
    assert_problem(await instance.client.get("/start"), 405)


async def test_no_values_tokens_or_secrets_in_logs(
    instance: Instance, caplog: pytest.LogCaptureFixture
) -> None:
    """Run whole flows with every logger at DEBUG, then look for canaries in every record."""
    caplog.set_level(logging.DEBUG)
    response = await instance.client.post("/start", json=START, headers=JSON)
    client_url = response.json()["client_url"]
    redirect = await consent(instance.client, client_url)
    landing = redirect.headers["location"]
    await instance.client.get(landing.removeprefix("http://testserver"))
    token = issue(instance)
    _, slot = await new_slot(instance)
    await instance.client.post(f"/comm/demo/attr/{slot}", content=token, headers=JWT)
    await instance.client.post(f"/comm/demo/attr/{slot}", content=token, headers=JWT)  # replay
    await instance.client.post("/comm/demo/attr/x", content="bad." + token, headers=JWT)
    secret = instance.services.keys.internal_secret.decode()
    state = client_url.rsplit("/", 1)[1]
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert caplog.records  # logging did happen
    for canary in (CANARY_NAME, CANARY_BSN, token, slot, secret, state, "result="):
        assert canary not in text
