"""Shared by the DigiD plugin and flow tests: the servers of a DigiD world on 127.0.0.1 (a
pysaml2 IdP, a BRP stub over mutual TLS, an OpenID Connect provider), an app with a ``digid``
method, and the resident's steps."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from idcontact.settings import Settings
from idcontact.storage.db import vault_entries
from tests.brp_stub import BrpStub, person
from tests.conftest import PUBLIC, AppFactory, Instance, demo_settings, path_of
from tests.live import serve
from tests.oidc_provider import Provider
from tests.saml_idp import BSN, Idp, Pki, form_fields, make_pki, running_idp
from tests.services import xmlsec1

DEMO = {"tag": "demo", "name": "Demo-identificatie", "plugin": "demo", "assurance": "substantial"}
START = {"purpose": "report_move", "auth_method": "digid", "comm_method": "demo"}
SP_ENTITY = "https://gemeente.example/digid/sp"
OTHER_BSN = "999993653"


@dataclass
class World:
    pki: Pki
    idp: Idp
    brp: BrpStub
    brp_url: str
    oidc: Provider
    oidc_url: str
    tmp: Path


@contextmanager
def digid_world(tmp_path: Path) -> Iterator[World]:
    """The servers of a DigiD world; skipped (failed under CI) without ``xmlsec1``."""
    xmlsec1()
    pki = make_pki(tmp_path / "pki")
    brp = BrpStub(persons={BSN: person(BSN), OTHER_BSN: person(OTHER_BSN, "Other Person")})
    oidc = Provider()
    with ExitStack() as stack:
        idp = stack.enter_context(running_idp(pki))
        brp_base = stack.enter_context(
            serve(
                lambda _base: brp.app(),
                ssl_certfile=str(pki.tls_server.cert),
                ssl_keyfile=str(pki.tls_server.key),
                ssl_ca_certs=str(pki.ca),
                ssl_cert_reqs=ssl.CERT_REQUIRED,
            )
        )
        oidc_base = stack.enter_context(serve(oidc.app))
        yield World(pki, idp, brp, f"{brp_base}/personen", oidc, oidc_base, tmp_path)


def plugin_config(world: World, **changes: Any) -> dict[str, Any]:
    tls = {
        "certificate_file": str(world.pki.tls_client.cert),
        "key_file": str(world.pki.tls_client.key),
        "ca_file": str(world.pki.ca),
    }
    metadata = world.tmp / "idp-metadata.xml"
    metadata.write_text(world.idp.metadata())
    saml: dict[str, Any] = {
        "entity_id": SP_ENTITY,
        "certificate_file": str(world.pki.sp.cert),
        "key_file": str(world.pki.sp.key),
        "idp_metadata_file": str(metadata),
        "back_channel_tls": tls,
    }
    saml |= changes.pop("saml", {})
    config: dict[str, Any] = {
        "level": "midden",
        "saml": saml,
        "brp": {
            "url": world.brp_url,
            "tls": tls,
            "attributes": {
                "fullname": "naam.volledigeNaam",
                "postcode": "adressering.postcode",
                "birthyear": {
                    "path": "geboorte.datum.datum",
                    "field": "geboorte",
                    "format": "year",
                },
                "municipality": "gemeenteVanInschrijving.omschrijving",
            },
        },
    }
    config |= changes
    return config


def digid_settings(
    world: World,
    *,
    assurance: str = "substantial",
    public_url: str = PUBLIC,
    top: dict[str, Any] | None = None,
    **changes: Any,
) -> Settings:
    """The demo with a ``digid`` method (tag ``digid``) on this world's servers; ``changes``
    go into the plugin's settings, ``top`` into the top level."""
    method = {
        "tag": "digid",
        "name": "DigiD",
        "plugin": "digid",
        "assurance": assurance,
        "provides": ["bsn", "fullname", "postcode", "birthyear", "municipality"],
    }
    plugins = demo_settings(world.tmp).plugins
    return demo_settings(
        world.tmp,
        public_url=public_url,
        auth_methods=[DEMO, method],
        plugins={**plugins, "auth": {**plugins["auth"], "digid": plugin_config(world, **changes)}},
        **(top or {}),
    )


async def make(
    make_app: AppFactory, world: World, *, assurance: str = "substantial", **changes: Any
) -> Instance:
    """The app in process, its SP metadata given to the IdP."""
    inst: Instance = await make_app(digid_settings(world, assurance=assurance, **changes))
    if changes.get("protocol") != "oidc":
        metadata = await inst.client.get("/auth/digid/metadata")
        assert metadata.status_code == 200, metadata.text
        world.idp.trust(metadata.text)
    return inst


async def to_idp(inst: Instance, start: dict[str, str] = START, prefix: str = "") -> str:
    """Start (at the tenant of ``prefix``) and go to DigiD: the IdP URL the browser is sent
    to."""
    started = await inst.client.post(
        f"{prefix}/start", json=start, headers={"Accept": "application/json"}
    )
    assert started.status_code == 200, started.text
    login = await inst.client.get(path_of(started.json()["client_url"]))
    assert login.status_code == 303, login.text
    location: str = login.headers["location"]
    return location


async def at_idp(inst: Instance, browser: httpx.AsyncClient, url: str) -> httpx.Response:
    """The IdP logs in at once and sends the browser back (artifact) or a form (POST)."""
    answer = await browser.get(url)
    if answer.status_code == 302:
        back = answer.headers["location"]
        assert back.startswith(f"{PUBLIC}/auth/digid/acs?SAMLart=")
        return await inst.client.get(path_of(back))
    fields = form_fields(answer.text)
    return await inst.client.post("/auth/digid/acs", data=fields)


async def stored(inst: Instance) -> int:
    db = inst.services.db
    assert db is not None
    count: int = await db.run(
        lambda conn: conn.execute(select(func.count()).select_from(vault_entries)).scalar_one()
    )
    return count


async def share(inst: Instance, browser: httpx.AsyncClient) -> dict[str, Any]:
    """Pass on at the confirmation page, through the IdP's single logout, to the comm side;
    returns what the conversation holds."""
    shared = await inst.client.post("/auth/digid/confirm", data={"action": "share"})
    assert shared.status_code == 303
    logout = await browser.get(shared.headers["location"])
    assert logout.status_code == 302
    back = await inst.client.get(path_of(logout.headers["location"]))
    assert back.status_code == 303
    return await delivered(inst, back.headers["location"])


async def delivered(inst: Instance, landing: str) -> dict[str, Any]:
    """What the conversation of the channel page ``landing`` holds."""
    conversation = landing.split("?", 1)[0].rsplit("/", 1)[1]
    conversations = inst.services.conversations
    assert conversations is not None
    result = await conversations.attributes(conversation, actor="test")
    assert result is not None
    return dict(result)


def refused(page: httpx.Response, reason: str) -> None:
    assert page.status_code == 400, page.text
    assert "Inloggen met DigiD is niet gelukt" in page.text
    assert f'data-reason="{reason}"' in page.text
