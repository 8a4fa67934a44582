"""A wallet's side of OpenID4VP with SD-JWT VC: open an ``openid4vp://`` link, fetch and verify
the signed request, pick credentials for its DCQL query, present them with key binding and
post the answer (``direct_post`` or ``direct_post.jwt``).

The demo wallet page and the tests use it, so both walk the same real protocol over HTTP.
It is not a production wallet: it checks a request's signature, not a trust list.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from joserfc import jwe, jws
from joserfc.jwk import ECKey

from idcontact.openid4vp.request import REQUEST_MEDIA_TYPE, REQUEST_TYPE
from idcontact.openid4vp.sdjwt import digest, jwt_parts, split, verify_jws
from idcontact.openid4vp.trust import b64url_decode, did_jwk_key, dns_names, sha256_b64url

MAX_REQUEST_BYTES = 64 * 1024


class Http(Protocol):
    """What the wallet needs of an HTTP client (``httpx.AsyncClient`` has it)."""

    async def get(self, url: str, **kwargs: Any) -> httpx.Response: ...

    async def post(self, url: str, **kwargs: Any) -> httpx.Response: ...


class WalletError(Exception):
    """The request cannot be answered (said to the user; never holds values)."""


@dataclass(frozen=True)
class Credential:
    """An SD-JWT VC this wallet holds, with its holder key."""

    sd_jwt: str
    holder_key: ECKey

    @property
    def vct(self) -> str:
        _, payload = jwt_parts(split(self.sd_jwt)[0])
        return str(payload.get("vct", ""))

    def disclosures(self) -> dict[str, tuple[str, Any]]:
        """Claim name → (disclosure, value), for the top-level disclosures."""
        found = {}
        for text in split(self.sd_jwt)[1]:
            item = json.loads(b64url_decode(text))
            if isinstance(item, list) and len(item) == 3:
                found[str(item[1])] = (text, item[2])
        return found

    def present(
        self, names: Collection[str], *, aud: str, nonce: str, iat: int | None = None
    ) -> str:
        """The presentation of ``names`` (only those disclosures) with a key-binding JWT."""
        issuer_jwt, _, _ = split(self.sd_jwt)
        chosen = [d for name, (d, _) in self.disclosures().items() if name in names]
        base = issuer_jwt + "~" + "".join(d + "~" for d in chosen)
        claims = {
            "iat": int(time.time()) if iat is None else iat,
            "aud": aud,
            "nonce": nonce,
            "sd_hash": digest(base),
        }
        kb = jws.serialize_compact(
            {"alg": "ES256", "typ": "kb+jwt"},
            json.dumps(claims).encode(),
            self.holder_key,
            algorithms=["ES256"],
        )
        return base + kb


@dataclass
class Request:
    """A verified authorization request."""

    client_id: str
    claims: dict[str, Any]
    verified_by: str
    """``x509`` or ``did`` (shown as unverified by real wallets)."""
    token: str
    """The request object as fetched."""

    @property
    def nonce(self) -> str:
        return str(self.claims["nonce"])

    @property
    def client_name(self) -> str:
        meta = self.claims.get("client_metadata") or {}
        return str(meta.get("client_name") or self.client_id)

    def asked(self) -> list[tuple[str, str, list[str]]]:
        """Per credential query: its id, vct and claim names (for a consent screen)."""
        out = []
        for c in self.claims["dcql_query"]["credentials"]:
            names = [".".join(str(p) for p in claim["path"]) for claim in c.get("claims", [])]
            out.append((c["id"], c["meta"]["vct_values"][0], names))
        return out


def parse_link(link: str) -> tuple[str, str]:
    """``client_id`` and ``request_uri`` of an ``openid4vp://`` (or https) link."""
    query = parse_qs(urlsplit(link).query)
    client_id, request_uri = query.get("client_id", [""])[0], query.get("request_uri", [""])[0]
    if not client_id or not request_uri.startswith(("http://", "https://")):
        raise WalletError("This is not an OpenID4VP link with a request_uri")
    return client_id, request_uri


def verify_request(token: str, client_id: str) -> Request:
    """Check the request object's type and signature against its client identifier."""
    header, claims = jwt_parts(token)
    if header.get("typ") != REQUEST_TYPE:
        raise WalletError("The request object has the wrong type")
    if claims.get("client_id") != client_id:
        raise WalletError("The request is for another client_id")
    if client_id.startswith("decentralized_identifier:did:jwk:"):
        did = client_id.removeprefix("decentralized_identifier:")
        key, how = did_jwk_key(did), "did"
    elif client_id.startswith(("x509_san_dns:", "x509_hash:")):
        chain = header.get("x5c")
        if not isinstance(chain, list) or not chain:
            raise WalletError("An x509 client identifier needs x5c")
        leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
        scheme, _, value = client_id.partition(":")
        if scheme == "x509_hash" and sha256_b64url(leaf.public_bytes(Encoding.DER)) != value:
            raise WalletError("The certificate does not match x509_hash")
        if scheme == "x509_san_dns" and value not in dns_names(leaf):
            raise WalletError("The certificate does not name the client's host")
        public = leaf.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise WalletError("The request's certificate has no EC key")
        key, how = ECKey.import_key(public), "x509"
    else:
        raise WalletError("Unsupported client identifier prefix")
    if not verify_jws(token, key, ["ES256"]):
        raise WalletError("The request object's signature is not valid")
    for name in ("nonce", "state", "response_uri", "dcql_query"):
        if name not in claims:
            raise WalletError(f"The request has no {name}")
    return Request(client_id, claims, how, token)


@dataclass
class Wallet:
    """Holds credentials; answers requests over ``http``."""

    http: Http
    credentials: list[Credential] = field(default_factory=list)
    clock: Callable[[], float] = time.time

    async def open(self, link: str) -> Request:
        client_id, request_uri = parse_link(link)
        got = await self.http.get(request_uri)
        if got.status_code != 200:
            raise WalletError(f"The request could not be fetched ({got.status_code})")
        media = got.headers.get("content-type", "").split(";")[0].strip()
        if media != REQUEST_MEDIA_TYPE or len(got.content) > MAX_REQUEST_BYTES:
            raise WalletError("The request_uri did not answer a request object")
        return verify_request(got.text, client_id)

    def choose(self, request: Request) -> dict[str, tuple[Credential, list[str]]]:
        """Credential query id → the credential and claim names to disclose (DCQL: every
        query outside a set, and the first satisfiable option of each set)."""
        query = request.claims["dcql_query"]
        matches: dict[str, tuple[Credential, list[str]]] = {}
        for c in query["credentials"]:
            names = [str(claim["path"][0]) for claim in c.get("claims", [])]
            for credential in self.credentials:
                if credential.vct in c["meta"]["vct_values"] and set(names) <= set(
                    credential.disclosures()
                ):
                    matches[c["id"]] = (credential, names)
                    break
        sets = query.get("credential_sets")
        if not sets:
            wanted = [c["id"] for c in query["credentials"]]
        else:
            wanted = []
            for s in sets:
                option = next((o for o in s["options"] if all(i in matches for i in o)), None)
                if option is None:
                    if s.get("required", True):
                        raise WalletError("This wallet does not hold what is asked")
                    continue
                wanted += option
        missing = [i for i in wanted if i not in matches]
        if missing:
            raise WalletError("This wallet does not hold what is asked")
        return {i: matches[i] for i in wanted}

    def presentations(
        self,
        request: Request,
        *,
        aud: str | None = None,
        nonce: str | None = None,
        iat: int | None = None,
        extra: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, list[str]]:
        """The ``vp_token`` object; ``aud``/``nonce``/``iat`` override what the request says
        (for tests of a verifier's refusals); ``extra``: more claim names per query id."""
        now = int(self.clock()) if iat is None else iat
        token: dict[str, list[str]] = {}
        for query_id, (credential, names) in self.choose(request).items():
            shown = [*names, *((extra or {}).get(query_id, ()))]
            token[query_id] = [
                credential.present(
                    shown,
                    aud=request.client_id if aud is None else aud,
                    nonce=request.nonce if nonce is None else nonce,
                    iat=now,
                )
            ]
        return token

    async def respond(
        self, request: Request, vp_token: Mapping[str, Any], *, state: str | None = None
    ) -> httpx.Response:
        """Post the answer to ``response_uri``, encrypted when the request asks so."""
        claims = request.claims
        payload = {
            "vp_token": dict(vp_token),
            "state": claims["state"] if state is None else state,
        }
        if claims.get("response_mode") == "direct_post.jwt":
            meta = claims.get("client_metadata") or {}
            keys = (meta.get("jwks") or {}).get("keys") or []
            if not keys:
                raise WalletError("direct_post.jwt without an encryption key")
            key = ECKey.import_key(keys[0])
            enc = (meta.get("encrypted_response_enc_values_supported") or ["A128GCM"])[0]
            header = {"alg": "ECDH-ES", "enc": enc}
            if isinstance(keys[0].get("kid"), str):
                header["kid"] = keys[0]["kid"]
            response = jwe.encrypt_compact(
                header,
                json.dumps(payload).encode(),
                key,
                algorithms=["ECDH-ES", enc],
            )
            form = {"response": response}
        else:
            form = {"vp_token": json.dumps(dict(vp_token)), "state": str(payload["state"])}
        return await self.http.post(str(claims["response_uri"]), data=form)
