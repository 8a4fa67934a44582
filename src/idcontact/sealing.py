"""Sealed state: small values carried through a browser, encrypted and time-limited.

Plugins keep no server-side state for a pending step; instead they seal it (AES-GCM under a key
derived from the internal secret, bound to a purpose string) into the URL or a form field.
The browser cannot read or change it, and it stops working after ``max_age`` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
import time
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from idcontact.errors import BadRequestError, TokenExpiredError


class InvalidStateError(BadRequestError):
    slug = "invalid-state"
    title = "This link is not valid (anymore)"


class Sealer:
    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock
        self._keys: dict[str, AESGCM] = {}

    def _key(self, purpose: str) -> AESGCM:
        """The key of one purpose, derived once (purposes are a few fixed names)."""
        key = self._keys.get(purpose)
        if key is None:
            derived = hmac.new(self._secret, b"seal:" + purpose.encode(), hashlib.sha256)
            key = self._keys[purpose] = AESGCM(derived.digest())
        return key

    def seal(self, purpose: str, data: Mapping[str, object], max_age: int) -> str:
        nonce = os.urandom(12)
        body = struct.pack(">Q", int(self._clock()) + max_age) + json.dumps(dict(data)).encode()
        sealed = nonce + self._key(purpose).encrypt(nonce, body, purpose.encode())
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def unseal(self, purpose: str, token: str) -> dict[str, object]:
        if len(token) > 16 * 1024:
            raise InvalidStateError()
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            body = self._key(purpose).decrypt(raw[:12], raw[12:], purpose.encode())
        except (ValueError, InvalidTag):
            raise InvalidStateError() from None
        (expires,) = struct.unpack(">Q", body[:8])
        if self._clock() > expires:
            raise TokenExpiredError("This link has expired")
        data: dict[str, object] = json.loads(body[8:])
        return data
