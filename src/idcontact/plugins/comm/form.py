"""The ``form`` comm plugin: the verified contact form, an asynchronous channel.

The resident identifies, writes a question on their page (``/c/{id}``) and may leave: the
question waits in the queue with the disclosed attributes, an agent answers it in the console,
and the resident reads the answer later through a one-time link, after identifying again
(``/a/{link}``). The logic lives in :mod:`idcontact.forms`; this module is the resident's
side over HTTP. Routes:

- ``POST /c/{id}/ask``: send the question; the answer page shows the one-time link, once;
- ``GET|POST /a/{link}``: the link: choose how to identify again, then off to the wallet;
- ``POST /reid/{slot}``: the new disclosure (``application/jwt``), single use;
- ``GET /r/{ret}``: back from the wallet (``?result=`` in-band): the answer, or why not.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from idcontact.conversations import Conversation
from idcontact.errors import (
    ConfigError,
    MethodNotAllowedForPurposeError,
    NotFoundError,
)
from idcontact.forms import forms_for
from idcontact.plugins.base import PluginContext
from idcontact.plugins.comm.common import JWT_BODY, AuthOnlyStarter, jwt_body
from idcontact.plugins.comm.demo import DemoCommPlugin
from idcontact.settings import Purpose
from idcontact.web.pages import TOKEN_PAGE_HEADERS, language, render

COOKIE = "idc_form"
SENT = frozenset({"waiting", "offered", "connected", "answered"})
"""The states of a conversation whose question has been sent."""
MAX_TOKEN = 60_000

TEXT: dict[str, dict[str, str]] = {
    "nl": {
        "intro": "Contactformulier: stel uw vraag, een medewerker beantwoordt die later.",
        "label": "Uw vraag",
        "hint": "Ten hoogste {n} tekens. Zet er geen gegevens in die de medewerker niet nodig "
        "heeft.",
        "send": "Vraag versturen",
        "sent": "Uw vraag is verstuurd. U hoeft niet te wachten: een medewerker beantwoordt "
        "hem zo snel mogelijk.",
        "save": "Bewaar deze link goed. U ziet hem maar één keer. Met de link leest u het "
        "antwoord, nadat u zich opnieuw heeft geïdentificeerd:",
        "save_mail": "Zodra het antwoord klaar is, krijgt u ook een e-mail op uw geverifieerde "
        "adres, met een nieuwe link (die de oude vervangt).",
        "already": "Uw vraag was al verstuurd. De link om het antwoord te lezen is maar één "
        "keer getoond: gebruik de link die u heeft bewaard.",
        "waiting": "Uw vraag is verstuurd en wacht op een antwoord. Lees het antwoord met de "
        "link die u heeft bewaard.",
        "answered": "Uw vraag is beantwoord. Lees het antwoord met de link die u heeft bewaard.",
        "kept": "Uw vraag, het antwoord en uw gegevens worden uiterlijk {when} gewist.",
        "withdraw": "Vraag intrekken en gegevens nu wissen",
        "identify": "Identificeer u opnieuw om het antwoord te lezen. Het moet dezelfde persoon "
        "zijn die de vraag stelde.",
        "with": "Identificeren met {name}",
        "expired": "Deze link werkt niet (meer): hij is al gebruikt, of de vraag en het "
        "antwoord zijn gewist na de bewaartermijn.",
        "withdrawn": "Deze vraag is ingetrokken of verlopen; de gegevens zijn gewist.",
        "pending": "We wachten nog op uw identificatie…",
        "refresh": "Vernieuwen",
        "mismatch": "U bent niet dezelfde persoon die de vraag stelde. We laten niets zien.",
        "failed": "Identificeren is geannuleerd of mislukt. We laten niets zien. U kunt het "
        "opnieuw proberen met de link die u bewaard heeft.",
        "other_browser": "Deze pagina hoort bij een andere browser, of is al getoond. We laten "
        "niets zien.",
        "question": "Uw vraag",
        "answer": "Het antwoord",
        "no_answer": "Er is nog geen antwoord. Kom later terug met de nieuwe link hieronder.",
        "new_link": "Deze link is nu gebruikt. Bewaar de nieuwe link om het antwoord nog eens "
        "te lezen:",
        "home": "Naar de onderwerpen",
    },
    "en": {
        "intro": "Contact form: ask your question; an employee answers it later.",
        "label": "Your question",
        "hint": "At most {n} characters. Leave out anything the employee does not need.",
        "send": "Send question",
        "sent": "Your question has been sent. You need not wait: an employee answers it as "
        "soon as possible.",
        "save": "Keep this link safe. You see it only once. With it you read the answer after "
        "identifying again:",
        "save_mail": "When the answer is ready you also get an e-mail at your verified address, "
        "with a new link (which replaces this one).",
        "already": "Your question was sent already. The link to read the answer was shown only "
        "once: use the link you kept.",
        "waiting": "Your question has been sent and awaits an answer. Read the answer with the "
        "link you kept.",
        "answered": "Your question has been answered. Read the answer with the link you kept.",
        "kept": "Your question, the answer and your data are deleted by {when} at the latest.",
        "withdraw": "Withdraw the question and delete the data now",
        "identify": "Identify again to read the answer. It must be the same person who asked.",
        "with": "Identify with {name}",
        "expired": "This link does not work (any more): it was used already, or the question "
        "and answer were deleted after the retention period.",
        "withdrawn": "This question was withdrawn or has expired; the data has been deleted.",
        "pending": "Still waiting for your identification…",
        "refresh": "Refresh",
        "mismatch": "You are not the person who asked the question. Nothing is shown.",
        "failed": "Identification was cancelled or failed. Nothing is shown. You can try again "
        "with the link you kept.",
        "other_browser": "This page belongs to another browser, or was shown already. Nothing "
        "is shown.",
        "question": "Your question",
        "answer": "The answer",
        "no_answer": "There is no answer yet. Come back later with the new link below.",
        "new_link": "This link is now used. Keep the new link to read the answer again:",
        "home": "To the topics",
    },
}


class FormCommPlugin(DemoCommPlugin):
    template: ClassVar[str] = "form.html"
    unidentified: ClassVar[bool] = False  # the answer is read by identifying again

    def __init__(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        super().__init__(ctx, config)
        self.forms = forms_for(
            ctx.settings.public_url, ctx.method.tag, self._conversations, self._queues
        )
        self._config = self.forms.config
        self._secure = ctx.public_base.startswith("https://")

    @property
    def _starter(self) -> AuthOnlyStarter:
        if self._ctx.starter is None:
            raise ConfigError("comm plugin 'form': reading answers needs auth-only starts")
        return self._ctx.starter

    async def _created(self, conversation_id: str, purpose: Purpose) -> None:
        # Question and answer are chat messages: the key lives as long as the data may.
        await self._conversations.open_chat(conversation_id, purpose)

    async def _opened(self, conversation: Conversation) -> Conversation:
        return conversation  # it joins the queue when the question is sent, not on opening

    def _mails(self, purpose: Purpose) -> bool:
        return self._config.smtp is not None and self._config.email_attribute in purpose.attributes

    async def _page_context(self, conversation: Conversation, lang: str) -> dict[str, object]:
        t = TEXT[lang]
        purpose = self._purpose(conversation.purpose)
        base = f"{self._ctx.public_base}/c/{conversation.id}"
        return {
            "f": t,
            "hint": t["hint"].format(n=self._config.max_question),
            "max_question": self._config.max_question,
            "ask_action": base + "/ask" + self._lang_query(lang),
            "mails": self._mails(purpose),
        }

    def _page(
        self, request: Request, lang: str, context: dict[str, object], status: int = 200
    ) -> HTMLResponse:
        response = render(
            self._ctx.templates,
            request,
            "form_read.html",
            {
                "f": TEXT[lang],
                "home": f"{self._ctx.tenant.prefix}/{self._lang_query(lang)}",
                **context,
            },
            tenant=self._ctx.tenant,
            lang=lang,
            carries_token=True,
        )
        response.status_code = status
        return response

    @property
    def router(self) -> APIRouter:
        router = super().router
        ctx, forms = self._ctx, self.forms
        tag = ctx.method.tag

        @router.post("/c/{conversation_id}/ask", response_class=HTMLResponse)
        async def ask(
            request: Request,
            conversation_id: str,
            question: str = Form(max_length=20_000),
        ) -> HTMLResponse:
            """Send the question; the page shows the one-time link to read the answer, once."""
            lang = language(request, ctx.settings)
            sent = await self._conversations.get(conversation_id)
            if sent.state in SENT:  # sent before (a reload, say): the link is not shown again
                return self._page(request, lang, {"view": "already"}, status=409)
            link = await forms.submit(conversation_id, question, actor=f"comm:{tag}:resident")
            conversation = await self._conversations.get(conversation_id)
            purpose = self._purpose(conversation.purpose)
            return self._page(
                request,
                lang,
                {
                    "view": "sent",
                    "purpose_label": purpose.label.get(lang) if purpose.label else purpose.tag,
                    "link": forms.link_url(link),
                    "mails": self._mails(purpose),
                    "kept": TEXT[lang]["kept"].format(when=forms.deleted_by(conversation, purpose)),
                },
            )

        @router.get("/a/{link}", response_class=HTMLResponse)
        async def link_page(request: Request, link: str) -> HTMLResponse:
            """The one-time link: how to identify again (opening it uses nothing up)."""
            lang = language(request, ctx.settings)
            opened = await forms.opened(link)
            if opened is None or not opened.readable:
                return self._page(request, lang, {"view": "expired"}, status=410)
            purpose = opened.purpose
            methods = [m for m in ctx.tenant.auth_methods if m.tag in purpose.allowed_auth]
            return self._page(
                request,
                lang,
                {
                    "view": "identify",
                    "purpose_label": purpose.label.get(lang) if purpose.label else purpose.tag,
                    "methods": [
                        (m.tag, TEXT[lang]["with"].format(name=m.name), m.image_path)
                        for m in methods
                    ],
                    "action": f"{ctx.public_base}/a/{link}{self._lang_query(lang)}",
                },
            )

        @router.post("/a/{link}", response_model=None)
        async def begin(
            request: Request, link: str, auth_method: str = Form(max_length=64)
        ) -> Response:
            """Start identifying again with ``auth_method``: off to the wallet."""
            lang = language(request, ctx.settings)
            opened = await forms.opened(link)
            if opened is None or not opened.readable:
                return self._page(request, lang, {"view": "expired"}, status=410)
            if auth_method not in opened.purpose.allowed_auth:
                raise MethodNotAllowedForPurposeError("That method is not offered for this topic")
            attempt, _ = await forms.begin(link)
            client_url = await self._starter.start(
                purpose=opened.purpose.tag,
                auth_method=auth_method,
                comm_url=f"{ctx.public_base}/r/{attempt.ret}{self._lang_query(lang)}",
                attr_url=f"{ctx.internal_base}/reid/{attempt.slot}",
            )
            response = RedirectResponse(client_url, status_code=303, headers=TOKEN_PAGE_HEADERS)
            response.set_cookie(
                COOKIE,
                attempt.browser,
                max_age=self._config.reidentify_minutes * 60,
                path=ctx.mount_path,
                secure=self._secure,
                httponly=True,
                samesite="lax",  # it comes back from the wallet as a top-level navigation
            )
            return response

        @router.post("/reid/{slot}", openapi_extra=JWT_BODY)
        async def reidentified(request: Request, slot: str) -> dict[str, str]:
            """The new disclosure of a reading attempt (``application/jwt``), exactly once."""
            token = await jwt_body(request)
            if len(token) > MAX_TOKEN:
                raise NotFoundError("No such attribute slot")
            return {"state": await forms.settle(token, slot=slot)}

        @router.get("/r/{ret}", response_model=None)
        async def returned(request: Request, ret: str, result: str | None = None) -> Response:
            """Back from the wallet: the answer for the same person, else a clear page."""
            lang = language(request, ctx.settings)
            page = f"{ctx.public_base}/r/{ret}{self._lang_query(lang)}"
            if result is not None:  # in-band delivery: judge it, then drop it from the URL
                if len(result) <= MAX_TOKEN:
                    await forms.settle(result, ret=ret)
                return RedirectResponse(page, status_code=303, headers=TOKEN_PAGE_HEADERS)
            outcome = await forms.outcome(ret, request.cookies.get(COOKIE, ""))
            if outcome is None:
                return self._page(request, lang, {"view": "other_browser"}, status=403)
            if outcome.verdict == "pending":
                return self._page(request, lang, {"view": "pending", "refresh": page})
            if outcome.verdict != "match":
                return self._page(request, lang, {"view": outcome.verdict}, status=403)
            conversation = await self._conversations.get(outcome.conversation_id)
            purpose = self._purpose(conversation.purpose)
            response = self._page(
                request,
                lang,
                {
                    "view": "answer",
                    "purpose_label": purpose.label.get(lang) if purpose.label else purpose.tag,
                    "thread": outcome.thread,
                    "link": forms.link_url(outcome.link or ""),
                    "kept": TEXT[lang]["kept"].format(when=forms.deleted_by(conversation, purpose)),
                },
            )
            response.delete_cookie(COOKIE, path=ctx.mount_path)
            return response

        return router
