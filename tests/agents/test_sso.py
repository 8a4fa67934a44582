"""Agent SSO against a real OpenID Connect provider on 127.0.0.1 (tests/oidc_provider.py):
login, groups to roles and queues, revocation at the next login, every refusal, no secrets in
logs or pages, and the settings' validation."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, select, text

from idcontact.app import create_app
from idcontact.errors import ConfigError
from idcontact.storage.db import agents
from tests.conftest import (
    PUBLIC,
    AppFactory,
    Instance,
    _reset_postgres as reset_postgres,
    demo_settings,
    path_of,
    postgres_url,
)
from tests.live import serve
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider

pytestmark = pytest.mark.anyio

NAME_CANARY = "Sanne SSO-Canary"
CALLBACK = f"{PUBLIC}/agent/sso/default/callback"
GROUPS = [
    {"group": "idc-agents", "role": "agent", "queues": ["burgerzaken"]},
    {"group": "idc-supervisors", "role": "supervisor"},
    {"group": "idc-nijmegen", "role": "admin"},
]


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider(redirect_uris={CALLBACK, f"{PUBLIC}/agent/sso/nijmegen/callback"})
    p.user = {"sub": "user-1", "name": NAME_CANARY, "groups": ["idc-agents"]}
    with serve(p.app):
        yield p


def sso_settings(tmp_path: Path, issuer: str, database: str, **sso: Any) -> Any:
    config = {
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "label": "Gemeente-account",
        "groups": GROUPS,
        "allow_http": True,
        **sso,
    }
    overrides: dict[str, Any] = {
        "queues": [{"tag": "general"}, {"tag": "burgerzaken"}],
        "agent_sso": config,
    }
    if database == "postgres":
        overrides["database_url"] = postgres_url()
    return demo_settings(tmp_path, **overrides)


@pytest.fixture
async def sso_instance(
    make_app: AppFactory, database: str, provider: Provider, tmp_path: Path
) -> Instance:
    if database == "postgres":
        await reset_postgres(postgres_url())
    result: Instance = await make_app(sso_settings(tmp_path, provider.issuer, database))
    return result


class Browser:
    """One browser: cookies on the instance; it follows the provider's redirects itself."""

    def __init__(self, instance: Instance) -> None:
        self.client = httpx.AsyncClient(
            transport=instance.client._transport, base_url=PUBLIC, follow_redirects=False
        )
        self.idp = httpx.AsyncClient(follow_redirects=False)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.idp.aclose()

    async def to_provider(self, slug: str = "default", popup: bool = False) -> str:
        """Start a login; returns the provider's redirect back (the callback URL)."""
        start = await self.client.get(f"/agent/sso/{slug}" + ("?popup=1" if popup else ""))
        assert start.status_code == 303, start.text
        answer = await self.idp.get(start.headers["location"])
        assert answer.status_code == 302, answer.text
        return str(answer.headers["location"])

    async def login(self, slug: str = "default", popup: bool = False) -> httpx.Response:
        return await self.client.get(path_of(await self.to_provider(slug, popup)))


@pytest.fixture
async def browser(sso_instance: Instance) -> AsyncIterator[Browser]:
    b = Browser(sso_instance)
    yield b
    await b.aclose()


async def count_agents(instance: Instance) -> int:
    conversations = instance.services.conversations
    assert conversations is not None

    def work(conn: Connection) -> int:
        return len(conn.execute(select(agents.c.id)).all())

    return await conversations.db.run(work)


async def audit_rows(instance: Instance) -> list[Any]:
    conversations = instance.services.conversations
    assert conversations is not None
    return await conversations.db.run(
        lambda conn: conn.execute(text("SELECT actor, action, detail FROM audit_events")).all()
    )


# -- logging in -----------------------------------------------------------------------------


async def test_login_page_offers_the_provider(browser: Browser) -> None:
    page = await browser.client.get("/agent/login")
    assert page.status_code == 200
    assert "Inloggen met Gemeente-account" in page.text
    assert 'href="/agent/sso/default"' in page.text
    assert 'name="password"' in page.text  # password accounts keep working beside SSO


async def test_login_maps_groups_to_an_agent_of_one_queue(
    browser: Browser, sso_instance: Instance, provider: Provider
) -> None:
    start = await browser.client.get("/agent/sso/default")
    assert start.status_code == 303
    cookie = start.headers["set-cookie"]
    assert (
        "idc_sso=" in cookie and "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    )
    assert "path=/agent/sso" in cookie.lower()
    location = start.headers["location"]
    assert location.startswith(f"{provider.issuer}/authorize?")
    assert "code_challenge_method=S256" in location and "nonce=" in location

    done = await browser.client.get(path_of((await browser.idp.get(location)).headers["location"]))
    assert done.status_code == 200, done.text
    assert 'http-equiv="refresh" content="0; url=/agent/"' in done.text
    session = done.cookies.get("idc_agent")
    assert session
    assert "samesite=strict" in done.headers["set-cookie"].lower()

    home = await browser.client.get("/agent/")
    assert home.status_code == 303 and home.headers["location"] == "/agent/default/"
    console = await browser.client.get("/agent/default/")
    assert console.status_code == 200
    directory = sso_instance.services.agents
    assert directory is not None
    agent = await directory.session(session)
    assert agent is not None
    assert agent.display_name == NAME_CANARY
    assert [(m.tenant, m.role, m.queues) for m in agent.memberships] == [
        ("default", "agent", ("burgerzaken",))
    ]
    assert agent.username.startswith("sso:")
    assert "user-1" not in agent.username
    # An agent sees no statistics; the audit names the login, never the person.
    assert (await browser.client.get("/agent/default/stats")).status_code == 403
    rows = await audit_rows(sso_instance)
    logins = [r for r in rows if r.action == "agent.login"]
    assert len(logins) == 1 and '"via":"sso"' in logins[0].detail
    assert not any(NAME_CANARY in f"{r.actor}{r.detail}" for r in rows)
    # No password or second factor here: the provider does that.
    (account,) = await directory.all()
    assert account["enrolled"] is False


async def test_supervisor_group_sees_statistics_and_the_highest_role_wins(
    browser: Browser, sso_instance: Instance, provider: Provider
) -> None:
    provider.user["groups"] = ["idc-agents", "idc-supervisors", "unrelated"]
    assert (await browser.login()).status_code == 200
    stats = await browser.client.get("/agent/default/stats?format=json")
    assert stats.status_code == 200
    directory = sso_instance.services.agents
    assert directory is not None
    agent = await directory.session(browser.client.cookies["idc_agent"])
    assert agent is not None
    assert agent.memberships[0].role == "supervisor"
    assert agent.memberships[0].queues == ("*",)  # burgerzaken + all


async def test_group_removal_revokes_at_the_next_login(
    sso_instance: Instance, provider: Provider
) -> None:
    first, second = Browser(sso_instance), Browser(sso_instance)
    try:
        provider.user["groups"] = ["idc-supervisors"]
        assert (await first.login()).status_code == 200
        assert (await first.client.get("/agent/default/stats")).status_code == 200
        provider.user["groups"] = ["idc-agents"]  # demoted at the provider
        assert (await second.login()).status_code == 200
        # The earlier session reads the membership live: demoted there too.
        assert (await first.client.get("/agent/default/stats")).status_code == 403
        provider.user["groups"] = []  # removed at the provider
        refused = await second.login()
        assert refused.status_code == 403
        assert "idc_agent" not in refused.headers.get("set-cookie", "")
        for b in (first, second):
            assert (await b.client.get("/agent/default/")).status_code == 404
        assert await count_agents(sso_instance) == 1  # the account stays, without access
        rows = await audit_rows(sso_instance)
        roles = [r.detail for r in rows if r.action == "agent.membership"]
        assert [
            ('"role":"supervisor"' in d, '"role":"agent"' in d, '"role":null' in d) for d in roles
        ] == [
            (True, False, False),
            (False, True, False),
            (False, False, True),
        ]
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_disabled_agent_is_refused(
    browser: Browser, sso_instance: Instance, provider: Provider
) -> None:
    assert (await browser.login()).status_code == 200
    directory = sso_instance.services.agents
    assert directory is not None
    (account,) = [a for a in await directory.all() if str(a["username"]).startswith("sso:")]
    await directory.set_disabled(str(account["username"]), True)
    assert (await browser.client.get("/agent/default/")).status_code == 303  # session ended
    refused = await browser.login()
    assert refused.status_code == 403
    assert "idc_agent=" not in refused.headers.get("set-cookie", "").replace('idc_agent=""', "")


async def test_a_rotated_provider_key_is_fetched_again(
    browser: Browser, provider: Provider
) -> None:
    assert (await browser.login()).status_code == 200
    fetched = provider.jwks_requests
    assert (await browser.login()).status_code == 200
    assert provider.jwks_requests == fetched  # cached
    provider.rotate()
    assert (await browser.login()).status_code == 200
    assert provider.jwks_requests == fetched + 1


@pytest.mark.parametrize(
    ("then", "goes_to"),
    [
        ("/agent/default/c/abc123", "/agent/default/c/abc123"),
        ("https://evil.example/agent/", "/agent/"),
        ("//evil.example/agent/", "/agent/"),
        ("/agent//evil.example", "/agent/"),
        ("/agent/../yivi", "/agent/"),
        ("/agent/..", "/agent/"),
        ('/agent/"><script>', "/agent/"),
    ],
)
async def test_the_login_returns_to_a_console_page_only(
    browser: Browser, then: str, goes_to: str
) -> None:
    start = await browser.client.get("/agent/sso/default", params={"then": then})
    answer = await browser.idp.get(start.headers["location"])
    done = await browser.client.get(path_of(answer.headers["location"]))
    assert done.status_code == 200
    assert f'content="0; url={goes_to}"' in done.text
    assert f'<a href="{goes_to}">' in done.text


async def test_popup_login_tells_the_opener_instead_of_redirecting(browser: Browser) -> None:
    done = await browser.login(popup=True)
    assert done.status_code == 200
    assert "/static/login-popup.js" in done.text
    assert "http-equiv" not in done.text
    assert done.cookies.get("idc_agent")
    script = await browser.client.get("/static/login-popup.js")
    assert script.status_code == 200 and "postMessage" in script.text


async def test_one_login_refreshes_every_tenant_of_the_same_provider(
    make_app: AppFactory, provider: Provider, tmp_path: Path
) -> None:
    settings = sso_settings(tmp_path, provider.issuer, "sqlite")
    nijmegen_sso = {
        **settings.agent_sso.model_dump(mode="json"),
        "client_secret": CLIENT_SECRET,
        "groups": [{"group": "idc-nijmegen", "role": "admin"}],
    }
    settings = demo_settings(
        tmp_path,
        queues=[{"tag": "general"}, {"tag": "burgerzaken"}],
        agent_sso=settings.agent_sso.model_dump(mode="json") | {"client_secret": CLIENT_SECRET},
        tenants=[{"slug": "nijmegen", "name": "Gemeente Nijmegen", "agent_sso": nijmegen_sso}],
    )
    instance: Instance = await make_app(settings)
    b = Browser(instance)
    try:
        provider.user["groups"] = ["idc-agents", "idc-nijmegen"]
        # A login started for one tenant does not finish at another's callback.
        url = await b.to_provider("default")
        crossed = await b.client.get(path_of(url).replace("/sso/default/", "/sso/nijmegen/"))
        assert crossed.status_code == 400
        assert provider.token_requests == 0
        assert (await b.login("default")).status_code == 200
        assert (await b.client.get("/agent/nijmegen/audit.csv")).status_code == 200
        provider.user["groups"] = ["idc-agents"]
        assert (await b.login("default")).status_code == 200
        assert (await b.client.get("/agent/nijmegen/")).status_code == 404
        # Logging in at nijmegen now is refused, and default stays as it was.
        assert (await b.login("nijmegen")).status_code == 403
        assert (await b.client.get("/agent/default/")).status_code == 200
    finally:
        await b.aclose()


# -- refusals -------------------------------------------------------------------------------


async def refused(browser: Browser, instance: Instance, status: int, url: str) -> httpx.Response:
    answer = await browser.client.get(path_of(url))
    assert answer.status_code == status, answer.text
    assert "Inloggen voor medewerkers" in answer.text  # the login page, with the reason
    assert 'role="alert"' in answer.text
    assert "idc_agent=" not in answer.headers.get("set-cookie", "").replace('idc_agent=""', "")
    assert await count_agents(instance) == 0
    return answer


async def test_no_mapped_group_is_refused_and_creates_nobody(
    browser: Browser, sso_instance: Instance, provider: Provider
) -> None:
    provider.user["groups"] = ["some-other-team"]
    page = await refused(browser, sso_instance, 403, await browser.to_provider())
    assert "no access" in page.text


async def test_the_provider_saying_no_is_a_clear_refusal(
    browser: Browser, sso_instance: Instance, provider: Provider
) -> None:
    provider.deny = "access_denied"
    page = await refused(browser, sso_instance, 403, await browser.to_provider())
    assert "CANARY-DESC" not in page.text
    assert provider.token_requests == 0


async def test_a_wrong_state_is_refused(
    browser: Browser, sso_instance: Instance, provider: Provider
) -> None:
    url = await browser.to_provider()
    await refused(browser, sso_instance, 400, url.replace("state=", "state=x"))
    assert provider.token_requests == 0  # the code was not even redeemed


async def test_a_callback_in_another_browser_is_refused(
    browser: Browser, sso_instance: Instance, provider: Provider
) -> None:
    url = await browser.to_provider()
    other = Browser(sso_instance)  # no sealed state cookie: login CSRF / a stolen link
    try:
        await refused(other, sso_instance, 400, url)
    finally:
        await other.aclose()
    assert provider.token_requests == 0


async def test_an_expired_login_is_refused(
    make_app: AppFactory, provider: Provider, tmp_path: Path
) -> None:
    now = [time.time()]
    instance: Instance = await make_app(
        sso_settings(tmp_path, provider.issuer, "sqlite"), clock=lambda: now[0]
    )
    b = Browser(instance)
    try:
        url = await b.to_provider()
        now[0] += 601  # more than the 10 minutes a login may take
        await refused(b, instance, 400, url)
    finally:
        await b.aclose()


async def test_a_replayed_code_is_refused(
    browser: Browser, sso_instance: Instance, provider: Provider
) -> None:
    url = await browser.to_provider()
    sealed = browser.client.cookies["idc_sso"]
    assert (await browser.client.get(path_of(url))).status_code == 200
    assert "idc_sso" not in browser.client.cookies  # spent in this browser
    thief = Browser(sso_instance)
    thief.client.cookies.set("idc_sso", sealed, path="/agent/sso")
    try:
        replay = await thief.client.get(path_of(url))
    finally:
        await thief.aclose()
    assert replay.status_code == 400
    assert "idc_agent=" not in replay.headers.get("set-cookie", "").replace('idc_agent=""', "")
    assert provider.token_requests == 2  # the provider refused the second redemption


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"aud": "someone-else"}, 400),
        ({"aud": [CLIENT_ID, "someone-else"]}, 400),  # several audiences need azp = us
        ({"nonce": "not-the-nonce"}, 400),
        ({"nonce": None}, 400),
        ({"iss": "https://evil.example"}, 400),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4000}, 400),
        ({"iat": int(time.time()) + 3600}, 400),
        ({"sub": None}, 400),
        ({"foreign_signature": True}, 400),
    ],
    ids=[
        "audience",
        "two-audiences",
        "nonce",
        "no-nonce",
        "issuer",
        "expired",
        "issued-in-future",
        "no-subject",
        "foreign-signature",
    ],
)
async def test_a_bad_id_token_is_refused(
    browser: Browser,
    sso_instance: Instance,
    provider: Provider,
    change: dict[str, Any],
    status: int,
) -> None:
    change = dict(change)  # the parameter is shared by the sqlite and postgres runs
    provider.foreign_signature = bool(change.pop("foreign_signature", False))
    provider.id_token_changes = change
    await refused(browser, sso_instance, status, await browser.to_provider())


async def test_required_acr_is_enforced(
    make_app: AppFactory, provider: Provider, tmp_path: Path
) -> None:
    instance: Instance = await make_app(
        sso_settings(tmp_path, provider.issuer, "sqlite", require_acr=["urn:mfa"])
    )
    b = Browser(instance)
    try:
        await refused(b, instance, 403, await b.to_provider())
        provider.user["acr"] = "urn:password-only"
        await refused(b, instance, 403, await b.to_provider())
        provider.user["acr"] = "urn:mfa"
        assert (await b.login()).status_code == 200
    finally:
        await b.aclose()


async def test_an_unreachable_provider_is_a_clear_page(
    make_app: AppFactory, tmp_path: Path
) -> None:
    with serve(Provider().app) as gone:
        pass  # stopped: nothing listens there now
    instance: Instance = await make_app(sso_settings(tmp_path, gone, "sqlite"))
    b = Browser(instance)
    try:
        page = await b.client.get("/agent/sso/default")
        assert page.status_code == 502
        assert "cannot be reached" in page.text
        assert (await b.client.get("/agent/sso/nowhere")).status_code == 404
    finally:
        await b.aclose()


async def test_secrets_tokens_and_names_stay_out_of_logs(
    browser: Browser, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = await browser.to_provider()
    code = url.split("code=", 1)[1].split("&", 1)[0]
    assert (await browser.client.get(path_of(url))).status_code == 200
    provider.id_token_changes = {"aud": "someone-else"}
    assert (await browser.login()).status_code == 400
    provider.id_token_changes = {}
    provider.deny = "access_denied"
    assert (await browser.login()).status_code == 403
    logged = caplog.text
    assert "SSO" in logged  # the failures were logged ...
    for secret in (CLIENT_SECRET, code, NAME_CANARY, "CANARY-DESC", "user-1", "eyJ"):
        assert secret not in logged  # ... without anything they should not carry


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"issuer": "http://idp.example"}, "issuer"),
        ({"issuer": "https://idp.example/?x=1"}, "issuer"),
        ({"client_secret": None}, "client_secret"),
        ({"client_secret_file": "/x"}, "client_secret"),
        ({"scopes": ["profile"]}, "scopes"),
        ({"groups": []}, "groups"),
        ({"groups": [{"group": "g", "role": "boss"}]}, "agent_sso.groups"),
        ({"groups": [{"group": "g", "queues": ["nope"]}]}, "agent_sso.groups[0].queues"),
        ({"groups": [{"group": "g"}, {"group": "g"}]}, "groups[1].group"),
        ({"algorithms": ["HS256"]}, "algorithms"),
    ],
)
def test_invalid_sso_settings_name_the_setting_not_the_secret(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    config = {
        "issuer": "https://idp.example",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "groups": [{"group": "g"}],
    } | change
    with pytest.raises(ConfigError) as caught:
        demo_settings(tmp_path, agent_sso={k: v for k, v in config.items() if v is not None})
    assert named in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)


def test_the_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(CLIENT_SECRET + "\n")
    settings = demo_settings(
        tmp_path,
        agent_sso={
            "issuer": "https://idp.example",
            "client_id": CLIENT_ID,
            "client_secret_file": str(secret_file),
            "groups": [{"group": "g"}],
        },
    )
    assert settings.agent_sso is not None
    assert settings.agent_sso.secret() == CLIENT_SECRET
    assert CLIENT_SECRET not in repr(settings)
    secret_file.unlink()
    with pytest.raises(ConfigError, match="client_secret_file"):
        settings.agent_sso.secret()
    # Checked when the app is built, so a missing file stops start-up.
    with pytest.raises(ConfigError, match="client_secret_file"):
        create_app(settings)
