"""End-to-end flows through the embedded app: every start form, both deliveries, both shims."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from idcontact.tokens import AuthResult, TokenIssuer, sign_jwt
from tests.conftest import (
    CANARY_BSN,
    CANARY_NAME,
    PUBLIC,
    AppFactory,
    Instance,
    demo_settings,
    path_of,
)

pytestmark = pytest.mark.anyio

START = {"purpose": "report_move", "auth_method": "demo", "comm_method": "demo"}
JSON = {"Accept": "application/json"}


async def consent(
    client: httpx.AsyncClient, client_url: str, action: str = "share"
) -> httpx.Response:
    """Open the demo auth page and press a button; returns the redirect."""
    page = await client.get(path_of(client_url))
    assert page.status_code == 200
    assert page.headers["referrer-policy"] == "no-referrer"
    response = await client.post(path_of(client_url), data={"action": action})
    assert response.status_code == 303
    return response


async def landing_text(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(path_of(url))
    assert response.status_code == 200
    return response.text


async def assert_delivered(client: httpx.AsyncClient, url: str) -> str:
    """The attributes arrived: the resident is in line, and the waiting room names the data the
    agent will see but never shows the values."""
    text = await landing_text(client, url)
    assert "U bent nummer" in text  # only an identified resident (or an unidentified one) waits
    assert "<li>Naam</li>" in text and "<li>Burgerservicenummer (BSN)</li>" in text
    assert CANARY_NAME not in text and CANARY_BSN not in text
    return text


async def test_full_json_flow_out_of_band(instance: Instance) -> None:
    response = await instance.client.post("/start", json=START, headers=JSON)
    assert response.status_code == 200
    client_url = response.json()["client_url"]
    assert client_url.startswith(f"{PUBLIC}/auth/demo/confirm/")

    page = await instance.client.get(path_of(client_url))
    # The consent page lists exactly the purpose's attributes.
    assert CANARY_NAME in page.text and CANARY_BSN in page.text
    assert "6811AA" not in page.text

    redirect = await consent(instance.client, client_url)
    landing = redirect.headers["location"]
    assert "result=" not in landing  # delivered out of band, not through the browser
    text = await assert_delivered(instance.client, landing)
    # Named in the purpose's order (fullname, then bsn), not alphabetically.
    assert text.index("<li>Naam</li>") < text.index("<li>Burgerservicenummer (BSN)</li>")


async def test_start_redirects_without_json_accept(instance: Instance) -> None:
    response = await instance.client.post("/start", json=START)
    assert response.status_code == 303
    assert response.headers["location"].startswith(f"{PUBLIC}/auth/demo/confirm/")
    assert response.headers["cache-control"] == "no-store"


async def test_form_start_flow(instance: Instance) -> None:
    response = await instance.client.post("/start", data=START)
    assert response.status_code == 303
    redirect = await consent(instance.client, response.headers["location"])
    await assert_delivered(instance.client, redirect.headers["location"])


async def test_cancel_gives_failed_result(instance: Instance) -> None:
    response = await instance.client.post("/start", json=START, headers=JSON)
    redirect = await consent(instance.client, response.json()["client_url"], "cancel")
    text = await landing_text(instance.client, redirect.headers["location"])
    assert CANARY_NAME not in text
    assert "geannuleerd of mislukt" in text


def issue(instance: Instance, attributes: dict[str, str] | None = None) -> str:
    keys = instance.services.keys
    issuer = TokenIssuer(keys.signing, kid=keys.signing_kid)
    attrs = attributes or {"fullname": CANARY_NAME, "bsn": CANARY_BSN}
    return issuer.issue(AuthResult(status="success", attributes=attrs), keys.encryption_public)


async def test_comm_only_with_auth_result(instance: Instance) -> None:
    token = issue(instance)
    body = {"purpose": "report_move", "auth_result": token, "comm_method": "demo"}
    response = await instance.client.post("/start", json=body, headers=JSON)
    assert response.status_code == 200
    await assert_delivered(instance.client, response.json()["client_url"])


async def test_replayed_token_is_refused_and_changes_nothing(instance: Instance) -> None:
    token = issue(instance)
    body = {"purpose": "report_move", "auth_result": token, "comm_method": "demo"}
    assert (await instance.client.post("/start", json=body, headers=JSON)).status_code == 200
    before = await count(instance, "conversations")
    again = await instance.client.post("/start", json=body, headers=JSON)
    assert again.status_code == 400  # the comm plugin refused the replayed auth_result
    assert again.json()["type"].endswith("/invalid-token")
    assert await count(instance, "conversations") == before


async def count(instance: Instance, table: str) -> int:
    from sqlalchemy import text

    assert instance.services.engine is not None
    async with instance.services.engine.connect() as conn:
        query = text(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed table names
        return int((await conn.execute(query)).scalar_one())


async def test_extra_attributes_are_dropped(instance: Instance) -> None:
    token = issue(
        instance, {"fullname": CANARY_NAME, "bsn": CANARY_BSN, "email": "extra@example.org"}
    )
    body = {"purpose": "report_move", "auth_result": token, "comm_method": "demo"}
    response = await instance.client.post("/start", json=body, headers=JSON)
    conversation_id = response.json()["client_url"].rsplit("/", 1)[1]
    assert instance.services.conversations is not None
    data = await instance.services.conversations.attributes(conversation_id, actor="test")
    assert data is not None and data["attributes"] == {"fullname": CANARY_NAME, "bsn": CANARY_BSN}


async def test_ineligible_resident_gets_explanation(make_app: AppFactory, tmp_path: Any) -> None:
    inst: Instance = await make_app()
    token = issue(inst, {"birthyear": "1950", "municipality": "Utrecht"})
    body = {"purpose": "senior_pass", "auth_result": token, "comm_method": "demo"}
    response = await inst.client.post("/start", json=body, headers=JSON)
    text = await landing_text(inst.client, response.json()["client_url"])
    assert "alleen voor inwoners" in text and "Utrecht" not in text
    assert await count(inst, "vault_entries") == 0


def with_methods(
    tmp_path: Any,
    *,
    auth: dict[str, Any] | None = None,
    comm: dict[str, Any] | None = None,
    **extra: Any,
) -> Any:
    settings = demo_settings(tmp_path)
    auth_methods = [m.model_dump() for m in settings.auth_methods]
    comm_methods = [m.model_dump() for m in settings.comm_methods]
    auth_methods[0].update(auth or {})
    comm_methods[0].update(comm or {})
    purposes = [p.model_dump() for p in settings.purposes]
    for p in purposes:
        p["allowed_auth"] = ["*"]
        p["allowed_comm"] = ["*"]
    return demo_settings(
        tmp_path, auth_methods=auth_methods, comm_methods=comm_methods, purposes=purposes, **extra
    )


async def test_comm_only_with_attributes_disabled_at_start_uses_attr_url(
    make_app: AppFactory, tmp_path: Any
) -> None:
    inst: Instance = await make_app(
        with_methods(tmp_path, comm={"disable_attributes_at_start": True})
    )
    body = {"purpose": "report_move", "auth_result": issue(inst), "comm_method": "demo"}
    response = await inst.client.post("/start", json=body, headers=JSON)
    url = response.json()["client_url"]
    assert "result=" not in url
    await assert_delivered(inst.client, url)


async def test_comm_only_in_band_fallback(make_app: AppFactory, tmp_path: Any) -> None:
    settings = with_methods(
        tmp_path,
        comm={"disable_attributes_at_start": True},
        plugins={
            "comm": {"demo": {"use_attr_url": False}},
            "auth": demo_settings(tmp_path).plugins["auth"],
        },
    )
    inst: Instance = await make_app(settings)
    body = {"purpose": "report_move", "auth_result": issue(inst), "comm_method": "demo"}
    response = await inst.client.post("/start", json=body, headers=JSON)
    url = response.json()["client_url"]
    assert "?result=" in url
    landing = await inst.client.get(path_of(url))
    assert landing.status_code == 303 and "result=" not in landing.headers["location"]
    await assert_delivered(inst.client, landing.headers["location"])


async def test_in_band_delivery_from_auth_plugin(make_app: AppFactory, tmp_path: Any) -> None:
    settings = with_methods(
        tmp_path,
        plugins={
            "comm": {"demo": {"use_attr_url": False}},
            "auth": demo_settings(tmp_path).plugins["auth"],
        },
    )
    inst: Instance = await make_app(settings)
    response = await inst.client.post("/start", json=START, headers=JSON)
    redirect = await consent(inst.client, response.json()["client_url"])
    assert "?result=" in redirect.headers["location"]
    landing = await inst.client.get(path_of(redirect.headers["location"]))
    assert landing.status_code == 303
    await assert_delivered(inst.client, landing.headers["location"])


async def test_attr_url_shim(make_app: AppFactory, tmp_path: Any) -> None:
    inst: Instance = await make_app(with_methods(tmp_path, auth={"disable_attr_url": True}))
    response = await inst.client.post("/start", json=START, headers=JSON)
    redirect = await consent(inst.client, response.json()["client_url"])
    shim = redirect.headers["location"]
    assert shim.startswith(f"{PUBLIC}/auth_attr_shim/") and "result=" in shim
    after = await inst.client.get(path_of(shim))
    assert after.status_code == 303
    assert after.headers["referrer-policy"] == "no-referrer"
    await assert_delivered(inst.client, after.headers["location"])


async def test_attr_url_shim_refuses_forged_state(instance: Instance) -> None:
    response = await instance.client.get(
        "/auth_attr_shim/eyJhbGciOiJIUzI1NiJ9.e30.AAAA?result=x.y.z.a.b"
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


class TelCommPlugin:
    """A phone-like comm plugin for the tel shim: answers with a tel: client URL."""

    kind = "comm"

    def __init__(self, ctx: Any, config: dict[str, Any]) -> None:
        from fastapi import APIRouter

        self.router = APIRouter(prefix=ctx.mount_path)
        assert ctx.conversations is not None
        conversations = ctx.conversations

        @self.router.post("/start_communication")
        async def start(body: dict[str, Any]) -> dict[str, str]:
            purpose = ctx.settings.purpose(body["purpose"])
            _, slot = await conversations.create(purpose, "demo", with_slot=True)
            return {
                "client_url": "tel:+31201234567,1234567890",
                "attr_url": f"{ctx.internal_base}/attr/{slot}",
            }


async def test_tel_shim_shows_number_and_code(make_app: AppFactory, tmp_path: Any) -> None:
    inst: Instance = await make_app(
        with_methods(tmp_path, auth={"shim_tel_url": True}),
        plugin_classes={("comm", "demo"): TelCommPlugin},
    )
    response = await inst.client.post("/start", json=START, headers=JSON)
    client_url = response.json()["client_url"]
    state = client_url.rsplit("/", 1)[1]
    sealed = inst.services  # the continuation is sealed inside the demo state; follow the flow
    assert sealed is not None
    redirect = await inst.client.post(path_of(client_url), data={"action": "share"})
    tel_page = redirect.headers["location"]
    assert tel_page.startswith(f"{PUBLIC}/tel/")
    page = await inst.client.get(path_of(tel_page))
    assert page.status_code == 200
    assert "+31201234567" in page.text and "1234567890" in page.text
    assert 'href="tel:+31201234567,1234567890"' in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert state  # the demo state never carries the code in clear
    assert "1234567890" not in client_url


async def test_tel_page_refuses_unsigned_token(instance: Instance) -> None:
    forged = sign_jwt(
        {"continuation": "tel:+3190000,80417326", "exp": 9999999999}, instance.services.keys.signing
    )  # signed, but by the wrong key
    response = await instance.client.get(f"/tel/{forged}")
    assert response.status_code == 400
    assert "80417326" not in response.text


def requestor_settings(tmp_path: Any) -> tuple[Any, Any]:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256")
    pem = key.as_pem(private=False).decode()
    settings = with_methods(
        tmp_path, keys={"authonly_request_keys": {"chat": {"type": "EC", "key": pem}}}
    )
    return settings, key


async def test_auth_only_start_signed_by_requestor(make_app: AppFactory, tmp_path: Any) -> None:
    settings, key = requestor_settings(tmp_path)
    inst: Instance = await make_app(settings)
    assert inst.services.conversations is not None
    purpose = settings.purpose("report_move")
    conversation_id, slot = await inst.services.conversations.create(
        purpose, "demo", with_slot=True
    )
    import time

    now = int(time.time())
    request = {
        "purpose": "report_move",
        "auth_method": "demo",
        "comm_url": f"{PUBLIC}/comm/demo/c/{conversation_id}",
        "attr_url": f"http://inproc/comm/demo/attr/{slot}",
    }
    token = sign_jwt({"request": request, "iat": now, "exp": now + 300}, key, kid="chat")
    response = await inst.client.post(
        "/start", content=token, headers={"Content-Type": "application/jwt", **JSON}
    )
    assert response.status_code == 200
    redirect = await consent(inst.client, response.json()["client_url"])
    assert redirect.headers["location"] == request["comm_url"]
    await assert_delivered(inst.client, request["comm_url"])

    # Unknown kid, expired, wrong key: all refused with problem+json.
    other = sign_jwt({"request": request, "iat": now, "exp": now + 300}, key, kid="unknown")
    expired = sign_jwt({"request": request, "iat": now - 900, "exp": now - 600}, key, kid="chat")
    from joserfc.jwk import ECKey

    forged = sign_jwt(
        {"request": request, "iat": now, "exp": now + 300}, ECKey.generate_key("P-256"), kid="chat"
    )
    for bad in (other, expired, forged, "not-a-jwt", token + "x"):
        refused = await inst.client.post(
            "/start", content=bad, headers={"Content-Type": "application/jwt", **JSON}
        )
        assert refused.status_code == 400, bad[:20]
        assert refused.headers["content-type"] == "application/problem+json"


async def test_plugin_timeout_is_a_clear_502(make_app: AppFactory, tmp_path: Any) -> None:
    import socket

    # A peer that accepts the connection and never answers.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    try:
        settings = with_methods(
            tmp_path,
            comm={"plugin": None, "start": f"http://127.0.0.1:{port}/comm/x"},
            plugin_timeout=0.5,
        )
        inst: Instance = await make_app(settings, roles=("core", "auth"))
        response = await inst.client.post("/start", json=START, headers=JSON)
        assert response.status_code == 502
        assert response.json()["type"].endswith("/plugin-timeout")
    finally:
        server.close()


async def test_an_in_process_plugin_that_hangs_or_fails_is_a_clear_502(
    make_app: AppFactory, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The core posts to an in-process plugin without httpx (app.local_post): its timeout
    and its failures still end as the same problem+json as a remote plugin's."""
    inst: Instance = await make_app(demo_settings(tmp_path, plugin_timeout=0.5))
    conversations = inst.services.conversations
    assert conversations is not None
    never = asyncio.Event()

    async def hang(*args: Any, **kwargs: Any) -> Any:
        await never.wait()

    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the comm plugin broke")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conversations, "create", hang)
        response = await inst.client.post("/start", json=START, headers=JSON)
        assert response.status_code == 502
        assert response.json()["type"].endswith("/plugin-timeout")

        patch.setattr(conversations, "create", fail)
        response = await inst.client.post("/start", json=START, headers=JSON)
        assert response.status_code == 502
        assert response.json()["type"].endswith("/plugin-error")
        assert "broke" not in response.text
        assert any(r.levelname == "ERROR" for r in caplog.records)  # the operator hears
    # And once it works again, so does the start.
    response = await inst.client.post("/start", json=START, headers=JSON)
    assert response.status_code == 200


SLOT_RE = re.compile(r"/comm/demo/attr/([A-Za-z0-9_-]+)")


async def new_slot(instance: Instance) -> tuple[str, str]:
    assert instance.services.conversations is not None
    purpose = instance.settings.purpose("report_move")
    assert purpose is not None
    conversation_id, slot = await instance.services.conversations.create(
        purpose, "demo", with_slot=True
    )
    assert slot is not None
    return conversation_id, slot


async def test_attr_slot_is_single_use(instance: Instance) -> None:
    _, slot = await new_slot(instance)
    jwt = {"Content-Type": "application/jwt"}
    first = await instance.client.post(
        f"/comm/demo/attr/{slot}", content=issue(instance), headers=jwt
    )
    assert first.status_code == 200
    second = await instance.client.post(
        f"/comm/demo/attr/{slot}", content=issue(instance), headers=jwt
    )
    assert second.status_code == 409
    unknown = await instance.client.post(
        "/comm/demo/attr/nope", content=issue(instance), headers=jwt
    )
    assert unknown.status_code == 404


async def test_end_destroys_attributes(instance: Instance) -> None:
    body = {"purpose": "report_move", "auth_result": issue(instance), "comm_method": "demo"}
    url = (await instance.client.post("/start", json=body, headers=JSON)).json()["client_url"]
    await assert_delivered(instance.client, url)
    ended = await instance.client.post(path_of(url) + "/end")
    assert ended.status_code == 303
    text = await landing_text(instance.client, url)
    assert CANARY_NAME not in text and "gewist" in text
    assert await count(instance, "vault_entries") == 0


def test_query_helper() -> None:
    # Guard for the helpers above: parse a landing URL the way a browser would.
    assert parse_qs(urlsplit("http://x/c/1?result=a.b").query)["result"] == ["a.b"]


async def test_original_tokens_without_kid_use_each_remote_plugins_key(
    make_app: AppFactory, tmp_path: Any
) -> None:
    """Two remote auth plugins sign without kid; each has its own key in the config."""
    from joserfc.jwk import ECKey, RSAKey

    plugin_a, plugin_b, stranger = (
        RSAKey.generate_key(2048),
        ECKey.generate_key("P-256"),
        ECKey.generate_key("P-256"),
    )
    settings = demo_settings(tmp_path)
    auth_methods = [m.model_dump() for m in settings.auth_methods]
    for tag, key, kind in (("irma_a", plugin_a, "RSA"), ("digid_b", plugin_b, "EC")):
        auth_methods.append(
            {
                "tag": tag,
                "name": tag,
                "start": f"http://127.0.0.1:9/{tag}",
                "assurance": "substantial",
                "signature_key": {"type": kind, "key": key.as_pem(private=False).decode()},
            }
        )
    inst: Instance = await make_app(demo_settings(tmp_path, auth_methods=auth_methods))
    keys = inst.services.keys
    for signer, accepted in ((plugin_a, True), (plugin_b, True), (stranger, False)):
        token = TokenIssuer(signer, kid=None).issue(  # no kid, like the original
            AuthResult(status="success", attributes={"fullname": CANARY_NAME, "bsn": CANARY_BSN}),
            keys.encryption_public,
        )
        body = {"purpose": "report_move", "auth_result": token, "comm_method": "demo"}
        response = await inst.client.post("/start", json=body, headers=JSON)
        assert response.status_code == (200 if accepted else 400), response.text


async def test_refused_auth_result_at_attr_url_is_the_callers_error(
    make_app: AppFactory, tmp_path: Any
) -> None:
    inst: Instance = await make_app(
        with_methods(tmp_path, comm={"disable_attributes_at_start": True})
    )
    body = {"purpose": "report_move", "auth_result": "a.b.c.d.e", "comm_method": "demo"}
    response = await inst.client.post("/start", json=body, headers=JSON)
    assert response.status_code == 400
    assert response.json()["type"].endswith("/invalid-token")
