"""The channel's auth-only start (identify during a conversation), against the real core."""

from __future__ import annotations

import pytest
from joserfc.jwk import ECKey

from idcontact.errors import PluginError
from idcontact.plugins.base import INPROC_BASE
from idcontact.plugins.comm.common import AuthOnlyStarter
from tests.conftest import PUBLIC, Instance, path_of
from tests.flows.test_core_flows import assert_delivered, consent

pytestmark = pytest.mark.anyio


def starter(
    instance: Instance, key: ECKey | None = None, kid: str | None = None
) -> AuthOnlyStarter:
    keys = instance.services.keys
    return AuthOnlyStarter(
        instance.services.http,
        f"{INPROC_BASE}/start",
        key or keys.requestor,
        kid or keys.requestor_kid,
    )


async def test_signed_start_reaches_the_auth_plugin_and_delivers(instance: Instance) -> None:
    """With no authonly_request_keys configured, the core trusts this instance's own channels."""
    conversations = instance.services.conversations
    assert conversations is not None
    purpose = instance.settings.purpose("report_move")
    assert purpose is not None
    conversation_id, slot = await conversations.create(purpose, "demo", with_slot=True)
    comm_url = f"{PUBLIC}/comm/demo/c/{conversation_id}"
    client_url = await starter(instance).start(
        purpose="report_move",
        auth_method="demo",
        comm_url=comm_url,
        attr_url=f"{INPROC_BASE}/comm/demo/attr/{slot}",
    )
    assert path_of(client_url).startswith("/auth/demo/")
    redirect = await consent(instance.client, client_url)
    assert redirect.headers["location"] == comm_url
    await assert_delivered(instance.client, comm_url)


async def test_a_start_the_core_refuses_is_a_plugin_error(instance: Instance) -> None:
    refused = [
        starter(instance, key=ECKey.generate_key("P-256")),  # not the trusted key
        starter(instance, kid="someone-else"),  # unknown kid
    ]
    for s in refused:
        with pytest.raises(PluginError) as caught:
            await s.start(purpose="report_move", auth_method="demo", comm_url=PUBLIC, attr_url=None)
        assert "400" in str(caught.value)
    with pytest.raises(PluginError):  # the core refuses a purpose it does not know
        await starter(instance).start(
            purpose="nope", auth_method="demo", comm_url=PUBLIC, attr_url=None
        )
