"""Token Status List (draft-ietf-oauth-status-list): is a credential revoked or suspended?

A credential may carry ``status.status_list = {idx, uri}``. We fetch the status list token
(a JWT, ``typ: statuslist+jwt``) from ``uri``, verify it against the same issuer trust as the
credentials, and read the ``bits``-wide entry at ``idx`` of the zlib-compressed ``lst``: 0 is
valid, anything else refused. Lists are cached for their ``ttl`` (at most ``max_cache``).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from idcontact.openid4vp.errors import CredentialRevokedError, UntrustedIssuerError
from idcontact.openid4vp.sdjwt import jwt_parts, verify_jws
from idcontact.openid4vp.trust import IssuerTrust, b64url_decode

MAX_LIST_BYTES = 1024 * 1024
MEDIA_TYPE = "application/statuslist+jwt"


@dataclass(frozen=True)
class _Cached:
    bits: int
    data: bytes
    until: float


class StatusLists:
    def __init__(
        self,
        http: httpx.AsyncClient,
        trust: IssuerTrust,
        *,
        clock: Callable[[], float] = time.time,
        max_cache: int = 300,
        timeout: float = 5.0,
    ) -> None:
        self._http, self._trust, self._clock = http, trust, clock
        self._max_cache, self._timeout = max_cache, timeout
        self._cache: dict[str, _Cached] = {}

    async def check(self, status: Mapping[str, Any] | None) -> None:
        """Raise :class:`CredentialRevokedError` unless the referenced entry is 0 (valid)."""
        ref = (status or {}).get("status_list")
        if not isinstance(ref, dict):
            return
        idx, uri = ref.get("idx"), ref.get("uri")
        if not isinstance(idx, int) or idx < 0 or not isinstance(uri, str):
            raise CredentialRevokedError("The credential's status reference is malformed")
        listed = await self._list(uri)
        position = idx * listed.bits
        if position // 8 >= len(listed.data):
            raise CredentialRevokedError("The credential's status is not in its list")
        value = (listed.data[position // 8] >> (position % 8)) & ((1 << listed.bits) - 1)
        if value != 0:
            raise CredentialRevokedError()

    async def _list(self, uri: str) -> _Cached:
        now = self._clock()
        cached = self._cache.get(uri)
        if cached is not None and cached.until > now:
            return cached
        try:
            got = await self._http.get(uri, headers={"Accept": MEDIA_TYPE}, timeout=self._timeout)
        except httpx.HTTPError:
            raise CredentialRevokedError("The credential's status could not be checked") from None
        if got.status_code != 200 or len(got.content) > MAX_LIST_BYTES:
            raise CredentialRevokedError("The credential's status could not be checked")
        token = got.text.strip()
        header, payload = jwt_parts(token)
        if header.get("typ") != "statuslist+jwt" or payload.get("sub") != uri:
            raise CredentialRevokedError("The status list is not valid")
        try:
            key = self._trust.key_for(header, payload, now)
        except UntrustedIssuerError:
            raise CredentialRevokedError("The status list's issuer is not trusted") from None
        if not verify_jws(token, key.key, ["ES256"]):
            raise CredentialRevokedError("The status list's signature is not valid")
        body = payload.get("status_list")
        if not isinstance(body, dict) or body.get("bits") not in (1, 2, 4, 8):
            raise CredentialRevokedError("The status list is not valid")
        try:
            data = zlib.decompressobj().decompress(
                b64url_decode(str(body.get("lst", ""))), MAX_LIST_BYTES
            )
        except zlib.error:
            raise CredentialRevokedError("The status list is not valid") from None
        ttl = payload.get("ttl")
        keep = min(self._max_cache, ttl if isinstance(ttl, int) and ttl > 0 else self._max_cache)
        fresh = _Cached(int(body["bits"]), data, now + keep)
        self._cache[uri] = fresh
        return fresh
