"""Link codes: the rules of the threat model, one test each, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from idcontact.errors import ServiceBusyError
from idcontact.phone.codes import Caller, LinkCodes, Linked, NotLinked
from idcontact.settings import Phone
from idcontact.tokens import AuthResult, TokenIssuer
from tests.conftest import AppFactory, Instance, demo_settings
from tests.flows.test_core_flows import issue
from tests.services import postgres_url

pytestmark = pytest.mark.anyio

CALLER = Caller("+31612399887")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def app_with(
    make_app: AppFactory, tmp_path: Path, database: str, clock: Clock, **phone: Any
) -> Instance:
    overrides: dict[str, Any] = {"phone": {"number": "+31851234567", **phone}}
    if database == "postgres":
        from tests.conftest import _reset_postgres

        url = postgres_url()
        await _reset_postgres(url)
        overrides["database_url"] = url
    instance: Instance = await make_app(demo_settings(tmp_path, **overrides), clock=clock)
    return instance


def links_of(instance: Instance) -> LinkCodes:
    links = instance.services.tenants["default"].links
    assert links is not None
    return links


async def new_code(
    instance: Instance, *, deliver: bool = True, shown: bool = True, clock: Clock | None = None
) -> tuple[str, str]:
    """A phone conversation's id and code; its attributes delivered unless not ``deliver``."""
    response = await instance.client.post(
        "/comm/phone/start_communication",
        json={"purpose": "report_move", "shown_on_page": shown},
    )
    assert response.status_code == 200, response.text
    started = response.json()
    code = started["client_url"].split(",", 1)[1]
    if deliver:
        attr_path = "/" + started["attr_url"].split("://", 1)[1].split("/", 1)[1]
        delivered = await instance.client.post(
            attr_path, content=token(instance, clock), headers={"Content-Type": "application/jwt"}
        )
        assert delivered.status_code == 200
    conversations = instance.services.conversations
    assert conversations is not None
    code_hash = conversations.keyed("link-code", code)
    row = await conversations.db.run(
        lambda conn: conn.execute(
            text("SELECT id FROM conversations WHERE link_hash = :h"), {"h": code_hash}
        ).one()
    )
    return str(row.id), code


async def conversations_dump(instance: Instance) -> str:
    db = instance.services.db
    assert db is not None
    return str(
        await db.run(
            lambda conn: [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM conversations")]
        )
    )


def token(instance: Instance, clock: Clock | None) -> str:
    if clock is None:
        return issue(instance)
    keys = instance.services.keys
    issuer = TokenIssuer(keys.signing, kid=keys.signing_kid, clock=clock)
    attrs = {"fullname": "Canary-Fullname-8XQ2", "bsn": "999990019"}
    return issuer.issue(AuthResult(status="success", attributes=attrs), keys.encryption_public)


async def test_codes_are_digits_of_the_configured_length_and_stored_only_hashed(
    make_app: AppFactory, tmp_path: Path, database: str
) -> None:
    instance = await app_with(make_app, tmp_path, database, Clock(), code_length=12)
    _, code = await new_code(instance)
    assert len(code) == 12 and code.isdigit()
    assert code not in await conversations_dump(instance)  # only a keyed hash of it


async def test_a_code_links_once_and_only_after_its_attributes(
    make_app: AppFactory, tmp_path: Path, database: str
) -> None:
    instance = await app_with(make_app, tmp_path, database, Clock())
    links = links_of(instance)
    _, early = await new_code(instance, deliver=False)
    assert await links.link(early, CALLER, call_ref="call-1") == NotLinked("not_ready")
    conversation_id, code = await new_code(instance)
    linked = await links.link(code, CALLER, call_ref="call-2")
    assert isinstance(linked, Linked) and linked.conversation.id == conversation_id
    assert linked.conversation.state == "waiting"
    assert linked.conversation.link_detail == {
        "via": "pbx",
        "shown": True,
        "caller": "shown",
        "seconds": 0,
    }
    again = await links.link(code, Caller(None), call_ref="call-3")
    assert again == NotLinked("reused")
    conversations = instance.services.conversations
    assert conversations is not None
    flagged = await conversations.get(conversation_id)
    assert flagged.hijack_at is not None  # the first conversation is flagged to its agent
    assert flagged.state == "waiting"  # and still the first call's
    assert (await links.by_call("call-2")) == flagged
    assert await links.by_call("call-3") is None
    assert (await links.failures())[0] == 2


@pytest.mark.parametrize(("shown", "window"), [(False, 300), (True, 900)])
async def test_a_code_links_only_within_its_window(
    make_app: AppFactory, tmp_path: Path, shown: bool, window: int
) -> None:
    clock = Clock()
    instance = await app_with(make_app, tmp_path, "sqlite", clock)
    links = links_of(instance)
    _, late = await new_code(instance, shown=shown)
    _, in_time = await new_code(instance, shown=shown)
    clock.now += window - 1
    assert isinstance(await links.link(in_time, CALLER, call_ref="a"), Linked)
    clock.now += 2
    assert await links.link(late, CALLER, call_ref="b") == NotLinked("expired")


async def test_malformed_and_unknown_codes_fail_and_count(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance = await app_with(make_app, tmp_path, "sqlite", Clock())
    links = links_of(instance)
    assert await links.link("12ab", CALLER, call_ref="x") == NotLinked("malformed")
    assert await links.link("٣" * 10, CALLER, call_ref="x") == NotLinked("malformed")
    assert await links.link("0" * 10, CALLER, call_ref="x") == NotLinked("unknown")
    assert (await links.failures())[0] == 3


async def test_the_daily_budget_stops_linking_and_raises_the_alarm(
    make_app: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    instance = await app_with(
        make_app, tmp_path, "sqlite", clock, failed_link_budget=3, caller_failures_per_hour=100
    )
    links = links_of(instance)
    _, code = await new_code(instance)
    for n in range(3):
        assert await links.link("0" * 10, Caller(f"+3161000000{n}"), call_ref="x") == NotLinked(
            "unknown"
        )
    with caplog.at_level(logging.ERROR):
        refused = await links.link(code, CALLER, call_ref="y")
    assert refused == NotLinked("budget")  # even the right code: linking is off
    assert any("ALARM" in r.getMessage() for r in caplog.records)
    clock.now += 86_401  # the failures age out of the rolling day
    _, fresh = await new_code(instance, clock=clock)
    assert isinstance(await links.link(fresh, CALLER, call_ref="y"), Linked)


async def test_one_caller_is_throttled_per_hour_and_withheld_numbers_share_a_count(
    make_app: AppFactory, tmp_path: Path
) -> None:
    clock = Clock()
    instance = await app_with(make_app, tmp_path, "sqlite", clock, caller_failures_per_hour=2)
    links = links_of(instance)
    _, code = await new_code(instance)
    withheld = Caller(None)
    for _ in range(2):
        await links.link("0" * 10, withheld, call_ref="x")
    assert await links.link(code, Caller("anonymous"), call_ref="x") == NotLinked("caller")
    assert isinstance(await links.link(code, CALLER, call_ref="y"), Linked)  # others may
    db = instance.services.db
    assert db is not None
    keys = await db.run(
        lambda conn: [
            r.caller_key for r in conn.exec_driver_sql("SELECT caller_key FROM link_failures")
        ]
    )
    assert keys == ["withheld", "withheld"]
    clock.now += 3601
    assert await links.refusal(withheld) is None


async def test_another_platforms_calls_count_per_call_without_a_number(
    make_app: AppFactory, tmp_path: Path
) -> None:
    instance = await app_with(make_app, tmp_path, "sqlite", Clock(), caller_failures_per_hour=2)
    links = links_of(instance)
    conversation_id, code = await new_code(instance)
    first = Caller(None, via="webhook", session="contact-1")
    for _ in range(2):
        await links.link("0" * 10, first, call_ref="contact-1")
    assert await links.refusal(first) == "caller"
    second = Caller(None, via="webhook", session="contact-2")
    linked = await links.link(code, second, call_ref="contact-2")
    assert isinstance(linked, Linked)
    # The platform handles that call; our console shows no line state for it.
    assert linked.conversation.call_state is None
    assert linked.conversation.link_detail == {
        "via": "webhook",
        "shown": True,
        "caller": "withheld",
        "seconds": 0,
    }
    assert linked.conversation.id == conversation_id


async def test_too_many_linkable_codes_refuse_a_new_phone_conversation(
    make_app: AppFactory, tmp_path: Path
) -> None:
    clock = Clock()
    instance = await app_with(make_app, tmp_path, "sqlite", clock, max_linkable_codes=2)
    await new_code(instance)
    await new_code(instance)
    refused = await instance.client.post(
        "/comm/phone/start_communication", json={"purpose": "report_move"}
    )
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    with pytest.raises(ServiceBusyError):
        await links_of(instance).issue("nope", shown=True)
    clock.now += 901  # both windows have closed: those codes can no longer link
    assert (
        await instance.client.post(
            "/comm/phone/start_communication", json={"purpose": "report_move"}
        )
    ).status_code == 200


def test_the_chance_of_guessing_is_computed_and_bounded() -> None:
    assert Phone().hijack_chance() == pytest.approx(5.0e-7, rel=1e-3)
    assert Phone(
        code_length=12, failed_link_budget=5000, max_linkable_codes=100
    ).hijack_chance() == (pytest.approx(5.0e-7, rel=1e-3))
    with pytest.raises(ValueError, match="more than 1 in a million"):
        Phone(code_length=8)
    with pytest.raises(ValueError, match="more than 1 in a million"):
        Phone(failed_link_budget=1000)


async def test_a_code_to_identify_during_a_call_opens_once_in_time_and_counts_failures(
    make_app: AppFactory, tmp_path: Path, database: str
) -> None:
    clock = Clock()
    instance = await app_with(
        make_app, tmp_path, database, clock, identify_code_minutes=2, caller_failures_per_hour=4
    )
    links = links_of(instance)
    conversation_id, link_code = await new_code(instance)
    assert isinstance(await links.link(link_code, CALLER, call_ref="c"), Linked)  # waiting
    purpose = instance.settings.purpose("senior_pass")
    assert purpose is not None
    code = await links.identify_code(conversation_id, purpose, actor="agent:x")
    assert len(code) == 6 and code.isdigit()
    assert code not in await conversations_dump(instance)  # only a keyed hash of it

    browser = Caller(None, via="web", session="203.0.113.7")
    assert await links.open_identify("12a456", browser) == NotLinked("malformed")
    other = "0" * 6 if code != "0" * 6 else "1" * 6
    assert await links.open_identify(other, browser) == NotLinked("unknown")
    opened = await links.open_identify(" ".join((code[:3], code[3:])), browser)  # as read out
    assert not isinstance(opened, NotLinked)
    assert opened.id == conversation_id and opened.identify_state == "asked"
    assert opened.identify_purpose == "senior_pass"
    assert await links.open_identify(code, browser) == NotLinked("unknown")  # once only
    assert (await links.failures())[0] == 3  # the same budget as link codes

    late = await links.identify_code(conversation_id, purpose, actor="agent:x")
    clock.now += 121
    assert await links.open_identify(late, browser) == NotLinked("expired")
    # Four failures from this browser in the hour: it is refused, even with a right code.
    fresh = await links.identify_code(conversation_id, purpose, actor="agent:x")
    assert await links.open_identify(fresh, browser) == NotLinked("caller")
    elsewhere = Caller(None, via="web", session="198.51.100.9")
    assert not isinstance(await links.open_identify(fresh, elsewhere), NotLinked)
