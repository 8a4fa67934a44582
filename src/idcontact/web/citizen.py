"""Pages for residents: the topic list and the transparency page, both from configuration.

Server-rendered, Dutch by default (``?lang=en`` for English), no JavaScript needed. The topic
list also tells the expected wait of each topic's queue, when this instance has the queues.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from idcontact.core import Core
from idcontact.errors import NotFoundError
from idcontact.queues import Estimate, QueueService
from idcontact.settings import Purpose, Settings, Tenant
from idcontact.web.pages import TOKEN_PAGE_HEADERS, language, render
from idcontact.web.routing import Router

log = logging.getLogger(__name__)

TEXT: dict[str, dict[str, str]] = {
    "nl": {
        "title": "Contact met de gemeente",
        "code_link": "Aan de telefoon met ons, en vraagt de medewerker om een code? Vul hem "
        "hier in.",
        "intro": "Kies uw onderwerp. U ziet welke gegevens we vragen, en u kiest hoe u zich "
        "identificeert en hoe u met ons praat.",
        "other_language": "English",
        "asked": "Wij vragen",
        "why": "Waarom",
        "kept": "Hoe lang",
        "how_identify": "Hoe wilt u zich identificeren?",
        "without_identifying": "Zonder identificeren (de medewerker ziet geen gegevens)",
        "unidentified_possible": "Ook zonder identificeren mogelijk",
        "how_talk": "Hoe wilt u contact?",
        "start": "Verder",
        "no_purposes": "Er zijn nog geen onderwerpen ingesteld.",
        "privacy_link": "Hoe wij met uw gegevens omgaan",
        "privacy_title": "Hoe wij met uw gegevens omgaan",
        "privacy_intro": "Per onderwerp ziet u welke gegevens wij vragen, waarom wij dat mogen, "
        "hoe lang wij ze bewaren en hoe u zich kunt identificeren. Deze pagina wordt gemaakt uit "
        "de instellingen die de gemeente echt gebruikt.",
        "attributes": "Gegevens",
        "legal_basis": "Grondslag",
        "law": "Wet",
        "register": "Verwerkingsregister",
        "retention": "Bewaartermijn",
        "retention_text": "Uiterlijk {total} na de start van het gesprek, of {idle} nadat er niets "
        "meer gebeurt. Als het gesprek eerder klaar is, wissen we de gegevens dan.",
        "identify_with": "Identificeren met",
        "talk_via": "Contact via",
        "only_for": "Alleen voor",
        "assurance": "betrouwbaarheid",
        "how_deleted_title": "Hoe wij gegevens wissen",
        "how_deleted": "Uw gegevens worden versleuteld opgeslagen met een sleutel die alleen voor "
        "dit ene gesprek geldt. Die sleutel staat niet in back-ups. Aan het einde van het gesprek "
        "vernietigen wij de sleutel; daarmee zijn de gegevens overal onleesbaar, ook in back-ups. "
        "Wie uw gegevens bekijkt, wordt vastgelegd, zonder de gegevens zelf.",
        "not_controlled_title": "Waar ID Contact niet over gaat",
        "not_controlled": "Opnames of logboeken van het telefoon-, chat- of videosysteem van de "
        "gemeente; wat de medewerker daarna zelf vastlegt in de systemen van de gemeente; wat uw "
        "identiteitsapp (zoals Yivi) of DigiD zelf bijhoudt. Vraag de gemeente daarnaar.",
        "minutes": "{n} minuten",
        "hours": "{n} uur",
        "days": "{n} dagen",
        "back": "Terug naar de onderwerpen",
        "expected_wait": "Verwachte wachttijd",
        "a11y_link": "Toegankelijkheid",
        "a11y_title": "Toegankelijkheidsverklaring",
        "a11y_intro": "{name} wil dat iedereen deze pagina's kan gebruiken, ook met een "
        "schermlezer, alleen een toetsenbord of vergroting.",
        "a11y_status_title": "Stand van zaken",
        "a11y_status": "Deze pagina's zijn gebouwd volgens WCAG 2.1 niveau AA, maar zijn nog niet "
        "onafhankelijk onderzocht. Tot dat onderzoek is gedaan, voldoen ze mogelijk niet volledig.",
        "a11y_measures_title": "Wat we doen",
        "a11y_measures": "Eenvoudige taal (B1) in het Nederlands, en Engels als keuze|Werkt "
        "zonder JavaScript en op een telefoon|Zichtbare focus en een logische volgorde voor het "
        "toetsenbord|Geen inhoud van andere websites|Elke manier van contact blijft bestaan: u "
        "kunt ook bellen of langskomen zonder deze pagina's",
        "a11y_contact_title": "Lukt het niet?",
        "a11y_contact": "Neem contact op met {name} op de manier die u gewend bent. Meld ook wat "
        "niet werkte, dan lossen we het op.",
    },
    "en": {
        "code_link": "On the phone with us, and does the employee ask for a code? Enter it here.",
        "title": "Contact the municipality",
        "intro": "Choose your topic. You see which data we ask for, and you choose how to "
        "identify and how to talk to us.",
        "other_language": "Nederlands",
        "asked": "We ask for",
        "why": "Why",
        "kept": "How long",
        "how_identify": "How do you want to identify?",
        "without_identifying": "Without identifying (the agent sees no data)",
        "unidentified_possible": "Also possible without identifying",
        "how_talk": "How do you want to talk?",
        "start": "Continue",
        "no_purposes": "No topics have been configured yet.",
        "privacy_link": "How we handle your data",
        "privacy_title": "How we handle your data",
        "privacy_intro": "For each topic you see which data we ask for, why we may, how long we "
        "keep it and how you can identify. This page is made from the settings the municipality "
        "actually uses.",
        "attributes": "Data",
        "legal_basis": "Legal basis",
        "law": "Law",
        "register": "Processing register",
        "retention": "Retention",
        "retention_text": "At most {total} after the conversation starts, or {idle} after nothing "
        "happens any more. When the conversation ends earlier, we delete the data then.",
        "identify_with": "Identify with",
        "talk_via": "Talk via",
        "only_for": "Only for",
        "assurance": "assurance",
        "how_deleted_title": "How we delete data",
        "how_deleted": "Your data is stored encrypted with a key for this one conversation only. "
        "That key is never in a backup. When the conversation ends we destroy the key, which "
        "makes the data unreadable everywhere, backups included. Who views your data is logged, "
        "without the data itself.",
        "not_controlled_title": "What ID Contact does not control",
        "not_controlled": "Recordings or logs of the municipality's phone, chat or video "
        "system; what the agent records afterwards in the municipality's own systems; what your "
        "identity app (such as Yivi) or DigiD keeps itself. Ask the municipality about those.",
        "minutes": "{n} minutes",
        "hours": "{n} hours",
        "days": "{n} days",
        "back": "Back to the topics",
        "expected_wait": "Expected wait",
        "a11y_link": "Accessibility",
        "a11y_title": "Accessibility statement",
        "a11y_intro": "{name} wants everyone to be able to use these pages, with a screen reader, "
        "a keyboard only or magnification too.",
        "a11y_status_title": "Status",
        "a11y_status": "These pages are built to WCAG 2.1 level AA, but have not yet been audited "
        "independently. Until that audit, they may not fully comply.",
        "a11y_measures_title": "What we do",
        "a11y_measures": "Plain language (B1) in Dutch, with English as an option|Works without "
        "JavaScript and on a phone|Visible focus and a logical keyboard order|No content from "
        "other websites|Every way of contact stays: you can also call or visit without these pages",
        "a11y_contact_title": "Not working for you?",
        "a11y_contact": "Contact {name} the way you are used to. Please also tell us what did not "
        "work, so we can fix it.",
    },
}

GDPR_GROUNDS = {
    "consent": ("Toestemming (AVG art. 6 lid 1 sub a)", "Consent (GDPR art. 6(1)(a))"),
    "contract": ("Overeenkomst (AVG art. 6 lid 1 sub b)", "Contract (GDPR art. 6(1)(b))"),
    "legal_obligation": (
        "Wettelijke plicht (AVG art. 6 lid 1 sub c)",
        "Legal obligation (GDPR art. 6(1)(c))",
    ),
    "vital_interest": (
        "Vitaal belang (AVG art. 6 lid 1 sub d)",
        "Vital interest (GDPR art. 6(1)(d))",
    ),
    "public_task": (
        "Taak van algemeen belang (AVG art. 6 lid 1 sub e)",
        "Public task (GDPR art. 6(1)(e))",
    ),
    "legitimate": (
        "Gerechtvaardigd belang (AVG art. 6 lid 1 sub f)",
        "Legitimate interest (GDPR art. 6(1)(f))",
    ),
}
ASSURANCE = {
    "low": ("laag", "low"),
    "substantial": ("substantieel", "substantial"),
    "high": ("hoog", "high"),
}


WAIT_TEXT: dict[str, dict[str, str]] = {
    "nl": {
        "about": "ongeveer {n} minuten",
        "about_one": "ongeveer 1 minuut",
        "unknown": "onbekend, want er is nu geen medewerker vrij",
        "closed": "nu gesloten",
        "closed_until": "nu gesloten, open vanaf {when}",
    },
    "en": {
        "about": "about {n} minutes",
        "about_one": "about 1 minute",
        "unknown": "unknown, because no agent is free right now",
        "closed": "closed now",
        "closed_until": "closed now, open from {when}",
    },
}
WEEKDAY_NAMES = {
    "nl": ("maandag", "dinsdag", "woensdag", "donderdag", "vrijdag", "zaterdag", "zondag"),
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
}


def wait_minutes(seconds: float) -> int:
    """An expected wait in whole minutes, rounded up (never "0 minutes")."""
    return max(1, math.ceil(seconds / 60))


def about_minutes(seconds: float, lang: str) -> str:
    """``ongeveer 5 minuten`` / ``about 5 minutes``."""
    n = wait_minutes(seconds)
    t = WAIT_TEXT[lang]
    return t["about_one"] if n == 1 else t["about"].format(n=n)


def opening_time(opens_at: float | None, time_zone: str, lang: str) -> str | None:
    """When a closed queue opens, as ``maandag 08:30`` in the queue's time zone."""
    if opens_at is None:
        return None
    local = datetime.fromtimestamp(opens_at, ZoneInfo(time_zone))
    return f"{WEEKDAY_NAMES[lang][local.weekday()]} {local:%H:%M}"


def expected_wait_text(estimate: Estimate, time_zone: str, lang: str) -> str:
    """What the topic page says about the wait of someone who starts now."""
    t = WAIT_TEXT[lang]
    if not estimate.is_open:
        when = opening_time(estimate.opens_at, time_zone, lang)
        return t["closed_until"].format(when=when) if when else t["closed"]
    if estimate.expected_seconds is None:
        return t["unknown"]
    return about_minutes(estimate.expected_seconds, lang)


def duration(minutes: int, lang: str) -> str:
    t = TEXT[lang]
    if minutes % (24 * 60) == 0:
        return t["days"].format(n=minutes // (24 * 60))
    if minutes % 60 == 0:
        return t["hours"].format(n=minutes // 60)
    return t["minutes"].format(n=minutes)


def theme_router(tenant: Tenant, prefix: str) -> APIRouter:
    """``<prefix>/theme.css`` on every role, so plugin pages wear the tenant's design too."""
    router = Router(prefix=prefix, include_in_schema=False)

    @router.get("/theme.css", response_class=Response)
    async def theme() -> Response:
        """The tenant's design tokens as CSS variables (validated colours and fonts only)."""
        d = tenant.design
        css = (
            f":root {{ --primary: {d.primary_color}; --fg: {d.text_color}; "
            f"--bg: {d.background_color}; --font: {d.font_family}; }}\n"
        )
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    return router


def citizen_router(
    settings: Settings,
    tenant: Tenant,
    core: Core,
    templates: Jinja2Templates,
    queues: QueueService | None = None,
) -> APIRouter:
    """The resident's pages of one tenant, under its prefix (``/t/<slug>``, or none).

    ``queues``: the tenant's queue model, for the expected waits on the topic page; ``None``
    where this instance does not serve the comm role (split roles: the core has no database).
    """
    router = Router(prefix=core.prefix, include_in_schema=False)

    async def waits(purposes: list[Purpose], lang: str) -> dict[str, str]:
        """Each purpose's expected wait, by purpose tag; one estimate per queue."""
        if queues is None:
            return {}
        found: dict[str, str] = {}
        result: dict[str, str] = {}
        for p in purposes:
            queue = tenant.queue_of(p)
            if queue.tag not in found:
                try:
                    estimate = await queues.estimate(queue.tag)
                except Exception:  # the wait is a courtesy: the topics still show without it
                    log.exception("expected wait unavailable", extra={"queue": queue.tag})
                    return result
                found[queue.tag] = expected_wait_text(estimate, queue.time_zone, lang)
            result[p.tag] = found[queue.tag]
        return result

    def describe(p: Purpose, lang: str) -> dict[str, object]:
        options = core.options(p)
        i = 0 if lang == "nl" else 1
        auth = [tenant.auth_method(m.tag) for m in options.auth_methods]
        return {
            "tag": p.tag,
            "label": p.label.get(lang) if p.label else p.tag,
            "attributes": [tenant.attribute_label(a, lang) for a in p.attributes],
            "ground": GDPR_GROUNDS[p.legal_basis.gdpr_ground][i],
            "law": p.legal_basis.law,
            "register_id": p.legal_basis.register_id,
            "retention": TEXT[lang]["retention_text"].format(
                total=duration(p.retention_minutes, lang), idle=duration(p.idle_minutes, lang)
            ),
            "retention_short": duration(p.retention_minutes, lang),
            "auth": options.auth_methods,
            "auth_described": [
                f"{m.name} ({TEXT[lang]['assurance']} {ASSURANCE[m.assurance][i]})"
                for m in auth
                if m is not None
            ],
            "comm": options.comm_methods,
            "eligibility": [
                (tenant.attribute_label(r.attribute, lang), ", ".join(r.one_of))
                for r in p.eligibility
            ],
            "unidentified": p.allow_unidentified,
            "available": bool(
                options.comm_methods and (options.auth_methods or p.allow_unidentified)
            ),
        }

    async def index(request: Request) -> HTMLResponse:
        lang = language(request, settings)
        purposes = [describe(p, lang) for p in tenant.purposes]
        shown = [p for p in purposes if p["available"]]
        offered = [p for p in tenant.purposes if any(d["tag"] == p.tag for d in shown)]
        wait = await waits(offered, lang)
        for p in shown:
            p["wait"] = wait.get(str(p["tag"]))
        return render(
            templates,
            request,
            "index.html",
            {"purposes": shown, "t": TEXT[lang], "code_url": code_url(lang)},
            tenant=tenant,
            lang=lang,
        )

    phone = next((m for m in tenant.comm_methods if m.plugin == "phone"), None)

    def code_url(lang: str) -> str | None:
        """Where a caller types the code an agent reads out (identify during a call)."""
        if phone is None:
            return None
        query = "" if lang == settings.default_language else f"?lang={lang}"
        return f"{tenant.prefix}/comm/{phone.tag}/identify{query}"

    @router.get("/code", response_class=RedirectResponse, include_in_schema=False)
    async def code(request: Request, code: str = "") -> RedirectResponse:
        """The short address an agent reads out with the code; with ``?code=``, the link in
        the text message the agent sent (the code is filled in, not used: only the caller's
        own press does that, so a link preview cannot spend it)."""
        target = code_url(language(request, settings))
        if target is None:
            raise NotFoundError("There is no phone line here")
        if code.isdigit() and len(code) <= 12:
            target += ("&" if "?" in target else "?") + urlencode({"code": code})
        return RedirectResponse(target, status_code=303, headers=TOKEN_PAGE_HEADERS)

    router.add_api_route("/", index, response_class=HTMLResponse)
    if core.prefix:
        router.add_api_route("", index, response_class=HTMLResponse)

    @router.get("/accessibility", response_class=HTMLResponse)
    async def accessibility(request: Request) -> HTMLResponse:
        """The accessibility statement (honest about its audit status)."""
        lang = language(request, settings)
        return render(
            templates, request, "accessibility.html", {"t": TEXT[lang]}, tenant=tenant, lang=lang
        )

    @router.get("/privacy", response_class=HTMLResponse)
    async def transparency(request: Request) -> HTMLResponse:
        """Every purpose: data, legal basis, retention, methods; generated from configuration."""
        lang = language(request, settings)
        return render(
            templates,
            request,
            "transparency.html",
            {"purposes": [describe(p, lang) for p in tenant.purposes], "t": TEXT[lang]},
            tenant=tenant,
            lang=lang,
        )

    return router
