"""Routes every comm plugin of ours serves the same way."""

from __future__ import annotations

from fastapi import APIRouter, Request

from idcontact.conversations import Conversations
from idcontact.errors import UnknownPurposeError, UnsupportedMediaTypeError
from idcontact.settings import Purpose, Tenant


def purpose_of(tenant: Tenant, tag: str) -> Purpose:
    """The tenant's purpose ``tag``, or 400 unknown-purpose."""
    purpose = tenant.purpose(tag)
    if purpose is None:
        raise UnknownPurposeError()
    return purpose


def add_attr_route(router: APIRouter, conversations: Conversations) -> None:
    """``POST /attr/{slot}``: out-of-band delivery of an attribute token, exactly once."""

    @router.post(
        "/attr/{slot}",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/jwt": {"schema": {"type": "string"}}},
            }
        },
    )
    async def receive_attributes(request: Request, slot: str) -> dict[str, str]:
        """Out-of-band delivery of an attribute token (``application/jwt``)."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/jwt":
            raise UnsupportedMediaTypeError("Send the token as application/jwt")
        token = (await request.body()).decode("ascii", errors="replace").strip()
        state = await conversations.deliver_to_slot(slot, token)
        return {"state": state}
