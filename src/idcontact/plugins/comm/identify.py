"""The resident's side of an identification asked during a conversation (protocol §4.3), for
every channel: the question on their page, and the start of the identification they pick.

A chat shows it in its own window; a phone call on the page the resident opens with the code
the agent reads out. Either way the channel signs the auth-only start (``ctx.starter``) with a
fresh single-use ``attr_url`` slot, and the resident comes back to ``comm_url`` afterwards.
"""

from __future__ import annotations

from idcontact.conversations import ASKABLE, Conversation, Conversations
from idcontact.domain.lifecycle import InvalidTransitionError
from idcontact.errors import ConfigError, MethodNotAllowedForPurposeError, UnknownPurposeError
from idcontact.plugins.base import PluginContext
from idcontact.settings import Tenant

OPEN = ("asked", "started", "failed", "ineligible")
"""How far an identification may be when the resident can (still, again) start it."""

TEXT = {
    "nl": {
        "asked": "De medewerker vraagt u zich te identificeren voor: {purpose}.",
        "sees": "De medewerker ziet dan deze gegevens van u:",
        "with": "Identificeren met {method}",
        "no": "Liever niet",
        "failed": "Identificeren is niet gelukt of geannuleerd. U kunt het opnieuw proberen.",
        "ineligible": "Met deze gegevens kunnen we u voor dit onderwerp niet helpen.",
        "done": "U bent geïdentificeerd. De medewerker ziet nu uw gegevens.",
        "declined": "U heeft gekozen u niet te identificeren.",
        "logged_out": "U bent uitgelogd. De medewerker ziet uw gegevens niet meer.",
        "hint_chat": "U gaat naar de identificatie en komt daarna terug in dit gesprek; uw "
        "berichten blijven staan.",
        "hint_phone": "U blijft aan de telefoon. U gaat naar de identificatie en komt daarna "
        "terug op deze pagina.",
    },
    "en": {
        "asked": "The employee asks you to identify for: {purpose}.",
        "sees": "The employee will then see this data about you:",
        "with": "Identify with {method}",
        "no": "No, thank you",
        "failed": "Identification failed or was cancelled. You can try again.",
        "ineligible": "With this data we cannot help you on this topic.",
        "done": "You are identified. The employee now sees your data.",
        "declined": "You chose not to identify.",
        "logged_out": "You have logged out. The employee no longer sees your data.",
        "hint_chat": "You go to the identification and then come back to this conversation; "
        "your messages stay.",
        "hint_phone": "Stay on the phone. You go to the identification and then come back to "
        "this page.",
    },
}


def identify_context(
    tenant: Tenant, conversation: Conversation, lang: str, *, action: str, hint: str
) -> dict[str, object] | None:
    """What the resident's page shows of the agent's question: while it is open, for what,
    which data the agent will see and with which methods (the purpose's own); afterwards how
    it ended. ``None`` when nothing was asked."""
    t = TEXT[lang]
    asked = conversation.identify_state
    if asked == "done" and conversation.identified:
        return {"state": "done", "text": t["done"]}
    if asked in ("logged_out", "declined"):
        return {"state": asked, "text": t[asked]}
    purpose = tenant.purpose(conversation.identify_purpose or "")
    if asked not in OPEN or purpose is None or conversation.state not in ASKABLE:
        return None
    methods = [tenant.auth_method(tag) for tag in purpose.allowed_auth]
    return {
        "state": asked,
        "text": t["asked"].format(
            purpose=purpose.label.get(lang) if purpose.label else purpose.tag
        ),
        "problem": t[asked] if asked in ("failed", "ineligible") else "",
        "sees": t["sees"],
        "labels": [tenant.attribute_label(k, lang) for k in purpose.attributes],
        "hint": t[hint],
        "methods": [{"tag": m.tag, "label": t["with"].format(method=m.name)} for m in methods if m],
        "no": t["no"],
        "action": action,
    }


async def start_identification(
    ctx: PluginContext,
    conversations: Conversations,
    conversation_id: str,
    auth_method: str,
    *,
    comm_url: str,
) -> str:
    """The resident picked ``auth_method``: a fresh slot, the signed start, and where their
    browser goes now (the auth plugin's ``client_url``). Refused, and nothing changed, when no
    identification is asked or the method is not one of the purpose's."""
    conversation = await conversations.get(conversation_id)
    if conversation.identify_purpose is None or conversation.identify_state not in OPEN:
        raise InvalidTransitionError("No identification is asked in this conversation")
    purpose = ctx.tenant.purpose(conversation.identify_purpose)
    if purpose is None:
        raise UnknownPurposeError()
    if auth_method not in purpose.allowed_auth:
        raise MethodNotAllowedForPurposeError("Choose one of the offered methods")
    if ctx.starter is None:
        raise ConfigError("comm plugin: no core to start an identification with")
    purpose_tag, slot = await conversations.identification_slot(conversation_id)
    return await ctx.starter.start(
        purpose=purpose_tag,
        auth_method=auth_method,
        comm_url=comm_url,
        attr_url=f"{ctx.internal_base}/attr/{slot}",
    )
