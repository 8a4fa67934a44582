"""The demo wallet: the Yivi app's part, played in a browser tab, for trying a Yivi flow without a
phone (embedded mode only, ``[irma] demo_wallet``).

It holds demo credentials of ``irma-demo.gemeente`` (issued here with that demo issuer's
public private key) in server memory, keyed by a cookie, and speaks the real app protocol to
our IRMA server: it opens a session, shows the pairing code, shows what is asked, and discloses
or refuses. Nothing it holds is real; the pages say so.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from idcontact.errors import BadRequestError, NotFoundError
from idcontact.irma.attributes import decode_value
from idcontact.irma.request import DisclosureRequest, RequestFormatError
from idcontact.irma.schemes import Schemes
from idcontact.irma.wallet import Issuer, PrivateKey, Wallet
from idcontact.settings import Settings, Tenant
from idcontact.web.pages import language, render
from idcontact.web.routing import Router

COOKIE = "idc_demo_wallet"
MAX_WALLETS = 1000
APP_HEADERS = {"X-IRMA-MinProtocolVersion": "2.8", "X-IRMA-MaxProtocolVersion": "2.8"}
DEMO_PERSON = {
    "irma-demo.gemeente.personalData": {
        "initials": "D.",
        "firstnames": "Demi",
        "prefix": "de",
        "familyname": "Demo",
        "fullname": "Demi de Demo",
        "gender": "V",
        "nationality": "Ja",
        "surname": "Demo",
        "dateofbirth": "01-04-1980",
        "cityofbirth": "Arnhem",
        "countryofbirth": "Nederland",
        "over12": "Ja",
        "over16": "Ja",
        "over18": "Ja",
        "over21": "Ja",
        "over65": "Nee",
        "bsn": "999990019",
        "digidlevel": "Substantieel",
    },
    "irma-demo.gemeente.address": {
        "street": "Markt",
        "houseNumber": "1",
        "zipcode": "6811AA",
        "municipality": "Arnhem",
        "city": "Arnhem",
    },
}


@dataclass
class AppSession:
    url: str
    binding: str
    pairing_code: str | None


@dataclass
class DemoWallet:
    wallet: Wallet = field(default_factory=Wallet)
    sessions: dict[str, AppSession] = field(default_factory=dict)


def demo_wallet_router(
    settings: Settings,
    tenant: Tenant,
    schemes: Callable[[], Schemes],
    scheme_dir: Path,
    templates: Jinja2Templates,
    http: httpx.AsyncClient,
) -> APIRouter:
    """``http`` reaches this instance (the app protocol, as a phone would speak it);
    ``scheme_dir`` holds the demo issuer's private key."""
    router = Router(prefix="/demo-wallet", include_in_schema=False)
    wallets: OrderedDict[str, DemoWallet] = OrderedDict()
    session_base = f"{settings.public_url}/yivi/irma/session/"

    def issuer() -> Issuer:
        key = schemes().public_key("irma-demo.gemeente", 0)
        if key is None:
            raise NotFoundError("The demo issuer is not in this server's schemes")
        return Issuer(key, PrivateKey.load(scheme_dir / "gemeente" / "PrivateKeys" / "0.xml"))

    def wallet_of(request: Request) -> tuple[str, DemoWallet]:
        wallet_id = request.cookies.get(COOKIE, "")
        found = wallets.get(wallet_id)
        if found is None:
            wallet_id, found = secrets.token_urlsafe(18), DemoWallet()
            wallets[wallet_id] = found
            while len(wallets) > MAX_WALLETS:
                wallets.popitem(last=False)
        wallets.move_to_end(wallet_id)
        return wallet_id, found

    def with_cookie(response: Response, wallet_id: str) -> Response:
        response.set_cookie(
            COOKIE,
            wallet_id,
            max_age=4 * 3600,
            path="/demo-wallet",
            secure=settings.public_url.startswith("https://"),
            httponly=True,
            samesite="lax",
        )
        return response

    def page(request: Request, wallet_id: str, name: str, context: dict[str, Any]) -> Response:
        lang = language(request, settings)
        return with_cookie(
            render(templates, request, name, context, tenant=tenant, lang=lang), wallet_id
        )

    def credentials(w: DemoWallet) -> list[tuple[str, list[tuple[str, str]]]]:
        shown = []
        for credential in w.wallet.credentials:
            values = []
            for attribute in credential.type.attributes:
                if attribute.revocation:
                    continue
                value = decode_value(credential.value_of(attribute.id), credential.metadata.version)
                if value is not None:
                    values.append((attribute.names.get("nl", attribute.id), value))
            shown.append((credential.type.names.get("nl", credential.type.id), values))
        return shown

    @router.get("", response_class=HTMLResponse)
    async def home(request: Request) -> Response:
        wallet_id, w = wallet_of(request)
        return page(request, wallet_id, "demo_wallet.html", {"credentials": credentials(w)})

    @router.post("/issue")
    async def issue(request: Request, next: str = Form("", max_length=200)) -> Response:
        """Demo credentials of a made-up resident, from the demo municipality."""
        wallet_id, w = wallet_of(request)
        if not w.wallet.credentials:
            gemeente = issuer()
            for type_id, values in DEMO_PERSON.items():
                ctype = schemes().credential_type(type_id)
                if ctype is None:
                    raise NotFoundError("The demo credentials are not in this server's schemes")
                w.wallet.add(gemeente.issue(ctype, values, w.wallet.secret))
        target = next if next.startswith("/demo-wallet/s/") else "/demo-wallet"
        return with_cookie(RedirectResponse(target, status_code=303), wallet_id)

    @router.get("/open")
    async def open_session(request: Request, u: str) -> Response:
        """What scanning the QR code does: open the session as the app."""
        if not u.startswith(session_base) or len(u) > 300 or "/" in u[len(session_base) :]:
            raise BadRequestError("Only sessions of this server can be opened here")
        wallet_id, w = wallet_of(request)
        binding = secrets.token_urlsafe(18)
        opened = await http.get(
            u.removeprefix(settings.public_url) + "/",
            headers={**APP_HEADERS, "Authorization": binding},
        )
        if opened.status_code != 200:
            raise NotFoundError("This Yivi session is unknown or has ended")
        options = opened.json().get("options") or {}
        session_id = secrets.token_urlsafe(12)
        w.sessions[session_id] = AppSession(u, binding, options.get("pairingCode"))
        return with_cookie(
            RedirectResponse(f"/demo-wallet/s/{session_id}", status_code=303), wallet_id
        )

    async def app_call(s: AppSession, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await http.request(
            method,
            s.url.removeprefix(settings.public_url) + path,
            headers={"Authorization": s.binding},
            **kwargs,
        )

    @router.get("/s/{session_id}", response_class=HTMLResponse)
    async def session(request: Request, session_id: str) -> Response:
        wallet_id, w = wallet_of(request)
        s = w.sessions.get(session_id)
        if s is None:
            raise NotFoundError("This Yivi session is unknown in this demo wallet")
        status = (await app_call(s, "GET", "/status")).json()
        context: dict[str, Any] = {"status": status, "session_id": session_id, "code": None}
        if status == "PAIRING":
            context["code"] = s.pairing_code
        elif status == "CONNECTED":
            asked = await app_call(s, "GET", "/request")
            try:
                request_ = DisclosureRequest.parse(asked.json())
            except (RequestFormatError, ValueError):
                raise NotFoundError("This Yivi session is unknown or has ended") from None
            context["asked"] = [
                [a.type for con in discon for a in con] for discon in request_.disclose
            ]
            context["labels"] = request_.labels
            context["can_share"] = _can_share(w.wallet, request_)
        context["credentials"] = credentials(w)
        return page(request, wallet_id, "demo_wallet_session.html", context)

    @router.post("/s/{session_id}")
    async def decide(request: Request, session_id: str, action: str = Form(...)) -> Response:
        wallet_id, w = wallet_of(request)
        s = w.sessions.get(session_id)
        if s is None:
            raise NotFoundError("This Yivi session is unknown in this demo wallet")
        if action == "share":
            asked = await app_call(s, "GET", "/request")
            try:
                request_ = DisclosureRequest.parse(asked.json())
                proofs = w.wallet.disclose(request_)
            except (RequestFormatError, ValueError, LookupError):
                raise BadRequestError("The demo wallet cannot answer this request") from None
            await app_call(s, "POST", "/proofs", json=proofs)
            done: dict[str, Any] = {"shared": True, "return_url": request_.client_return_url}
        else:
            await app_call(s, "DELETE", "")
            done = {"shared": False, "return_url": None}
        del w.sessions[session_id]
        return page(request, wallet_id, "demo_wallet_done.html", done)

    return router


def _can_share(wallet: Wallet, request: DisclosureRequest) -> bool:
    try:
        wallet.disclose(request)
    except (ValueError, LookupError):
        return False
    return True


def demo_wallet_link(settings: Settings, session_url: str) -> str | None:
    """The link from a Yivi page to the demo wallet, when there is one."""
    if not (settings.irma.enabled and settings.irma.demo_wallet):
        return None
    return f"/demo-wallet/open?u={quote(session_url, safe='')}"
