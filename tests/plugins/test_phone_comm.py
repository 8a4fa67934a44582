"""The ``phone`` comm plugin's HTTP side: the start answer, the tel page bound to the browser,
the authenticated webhooks of the original (``/link_phone``, ``/session_info``) and the demo
page that plays a phone system's part."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from idcontact.plugins.comm.phone import signature, tel_uri
from tests.conftest import CANARY_BSN, CANARY_NAME, PUBLIC, AppFactory, Instance, demo_settings
from tests.phone.test_codes import new_code

pytestmark = pytest.mark.anyio

SECRET = "webhook-secret-for-tests-0123456789abcdef"


async def phone_app(make_app: AppFactory, tmp_path: Path, **phone: Any) -> Instance:
    settings = demo_settings(tmp_path, phone={"webhook_secret": SECRET, **phone})
    instance: Instance = await make_app(settings)
    return instance


def test_tel_uris_keep_digits_and_a_leading_plus_only() -> None:
    assert tel_uri("+31 85 123 4567", "0123456789") == "tel:+31851234567,0123456789"
    assert tel_uri("14 026") == "tel:14026"
    assert tel_uri("(020) 555-0100", "1") == "tel:0205550100,1"


async def test_start_answers_the_original_tel_shape_and_unidentified_gets_the_number_only(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance = await phone_app(make_app, tmp_path)
    started = await instance.client.post(
        "/comm/phone/start_communication", json={"purpose": "report_move"}
    )
    assert started.status_code == 200
    body = started.json()
    assert re.fullmatch(r"tel:\+31851234567,[0-9]{10}", body["client_url"])
    assert body["attr_url"].startswith("http://inproc/comm/phone/attr/")
    plain = await instance.client.post(
        "/comm/phone/start_communication",
        json={"purpose": "waste_collection", "unidentified": True},
    )
    assert plain.json() == {"client_url": "tel:+31851234567"}
    refused = await instance.client.post(
        "/comm/phone/start_communication", json={"purpose": "report_move", "unidentified": True}
    )
    assert refused.status_code == 400


async def test_the_tel_page_shows_the_code_only_in_the_browser_that_started(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance = await phone_app(make_app, tmp_path)
    # The resident's browser: the topic page's form, then the demo auth plugin's confirmation.
    started = await instance.client.post(
        "/start",
        data={"purpose": "report_move", "auth_method": "demo", "comm_method": "phone"},
    )
    assert started.status_code == 303
    cookie = started.headers["set-cookie"]
    assert "idc_tel=" in cookie and "HttpOnly" in cookie and "Path=/tel/" in cookie
    confirm = await instance.client.get(started.headers["location"])
    assert confirm.status_code == 200
    form = dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', confirm.text))
    action = re.search(r'<form method="post" action="([^"]+)"', confirm.text)
    assert action
    done = await instance.client.post(action.group(1).replace(PUBLIC, ""), data=form)
    assert done.status_code in (302, 303), done.text
    tel_page = done.headers["location"]
    assert "/tel/" in tel_page
    page = await instance.client.get(tel_page)
    assert page.status_code == 200
    code = re.search(r'href="tel:\+31851234567,([0-9]{10})"', page.text)
    assert code, page.text
    assert "<svg" in page.text  # the QR code of the tel: URI, rendered here
    assert page.headers["cache-control"].startswith("no-store")
    assert code.group(1) not in tel_page  # never in the URL
    # Another browser with the same link sees no code.
    other = httpx.AsyncClient(transport=instance.client._transport, base_url=PUBLIC)
    stolen = await other.get(tel_page)
    assert stolen.status_code == 403
    assert code.group(1) not in stolen.text and "browser" in stolen.text


async def webhook(
    instance: Instance, method: str, path: str, body: bytes = b"", **headers: str
) -> httpx.Response:
    return await instance.client.request(
        method, path, content=body, headers={"Content-Type": "application/json", **headers}
    )


async def test_link_phone_and_session_info_need_the_platforms_credentials(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance = await phone_app(make_app, tmp_path)
    conversation_id, code = await new_code(instance)
    body = json.dumps({"dtmf": code, "sessionid": "contact-0001"}).encode()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-IDContact-Signature": "t=1,v1=00"}):
        refused = await webhook(instance, "POST", "/comm/phone/link_phone", body, **headers)
        assert refused.status_code == 401
        assert SECRET not in refused.text
    stamp = str(int(time.time()))
    signed = signature(SECRET, stamp, "POST", "/comm/phone/link_phone", body)
    linked = await webhook(
        instance,
        "POST",
        "/comm/phone/link_phone",
        body,
        **{"X-IDContact-Signature": f"t={stamp},v1={signed}"},
    )
    assert linked.status_code == 200, linked.text
    again = await webhook(
        instance, "POST", "/comm/phone/link_phone", body, Authorization=f"Bearer {SECRET}"
    )
    assert again.status_code == 404  # single use; the first conversation is flagged
    info = await webhook(
        instance, "GET", "/comm/phone/session_info/contact-0001", Authorization=f"Bearer {SECRET}"
    )
    assert info.status_code == 200
    assert info.json() == {
        "purpose": "report_move",
        "auth_result": {
            "status": "succes",
            "attributes": {"fullname": CANARY_NAME, "bsn": CANARY_BSN},
        },
    }
    anonymous = await webhook(instance, "GET", "/comm/phone/session_info/contact-0001")
    assert anonymous.status_code == 401 and CANARY_NAME not in anonymous.text
    unknown = await webhook(
        instance, "GET", "/comm/phone/session_info/contact-9999", Authorization=f"Bearer {SECRET}"
    )
    assert unknown.status_code == 404
    conversations = instance.services.conversations
    assert conversations is not None
    assert (await conversations.get(conversation_id)).hijack_at is not None


async def test_bad_webhook_bodies_are_clear_errors_and_change_nothing(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance = await phone_app(make_app, tmp_path)
    auth = {"Authorization": f"Bearer {SECRET}"}
    for body in (
        b"not json",
        b"[]",
        b'{"dtmf": "1"}',
        json.dumps({"dtmf": "1" * 40, "sessionid": "x" * 9}).encode(),
    ):
        response = await webhook(instance, "POST", "/comm/phone/link_phone", body, **auth)
        assert response.status_code == 400, body
        assert response.headers["content-type"].startswith("application/problem+json")
    links = instance.services.tenants["default"].links
    assert links is not None
    assert (await links.failures())[0] == 0


async def test_the_webhook_is_off_without_a_secret(make_app: AppFactory, tmp_path: Path) -> None:
    instance: Instance = await make_app(demo_settings(tmp_path))
    response = await webhook(
        instance, "POST", "/comm/phone/link_phone", b"{}", Authorization="Bearer x"
    )
    assert response.status_code == 404


async def test_the_demo_phone_system_page_links_a_code(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance = await phone_app(make_app, tmp_path)
    page = await instance.client.get("/comm/phone/demo-acd")
    assert page.status_code == 200 and "Alleen voor de demo" in page.text
    conversation_id, code = await new_code(instance)
    wrong = await instance.client.post("/comm/phone/demo-acd", data={"code": "0" * 10})
    assert wrong.status_code == 404 and 'role="alert"' in wrong.text
    linked = await instance.client.post("/comm/phone/demo-acd", data={"code": code})
    assert linked.status_code == 200 and "Gekoppeld" in linked.text
    conversations = instance.services.conversations
    assert conversations is not None
    assert (await conversations.get(conversation_id)).state == "waiting"


async def test_supervisors_see_failed_link_attempts_against_the_budget(
    make_app: AppFactory, tmp_path: Path
) -> None:
    from idcontact.agents.directory import Membership
    from idcontact.phone.codes import Caller
    from tests.flows.test_console import enrol

    instance = await phone_app(make_app, tmp_path)
    links = instance.services.tenants["default"].links
    assert links is not None
    for _ in range(2):
        await links.link("0" * 10, Caller(None), call_ref="x")
    supervisor = await enrol(instance, "sara", [Membership("default", "supervisor", ("*",))])
    assert (await supervisor.login()).status_code == 303
    stats = await supervisor.client.get("/agent/default/stats?format=json")
    assert stats.json()["phone"] == {"failed_links_24h": 2, "failed_link_budget": 100}
    page = await supervisor.client.get("/agent/default/stats")
    assert "Mislukte koppelpogingen" in page.text and "<strong>2</strong>" in page.text
