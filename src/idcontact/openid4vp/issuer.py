"""Issuing SD-JWT VCs (RFC 9901 §4): every top-level claim selectively disclosable, bound to the
holder's key. For the demo wallet and the tests; a production issuer is someone else's.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey

from idcontact.openid4vp.sdjwt import b64url, digest


def disclosure(name: str, value: Any) -> str:
    salt = secrets.token_urlsafe(16)
    return b64url(json.dumps([salt, name, value], ensure_ascii=False).encode())


def issue(
    key: ECKey,
    *,
    iss: str,
    vct: str,
    claims: Mapping[str, Any],
    holder: ECKey,
    iat: int,
    exp: int,
    x5c: Sequence[str] | None = None,
    status: Mapping[str, Any] | None = None,
    decoys: int = 2,
) -> str:
    """``<issuer JWT>~<disclosure>~…~`` (no key binding: the holder adds it)."""
    disclosures = [disclosure(name, value) for name, value in claims.items()]
    digests = [digest(d) for d in disclosures]
    digests += [digest(b64url(secrets.token_bytes(24))) for _ in range(decoys)]
    public = {
        k: v for k, v in holder.as_dict(private=False).items() if k in ("kty", "crv", "x", "y")
    }
    payload: dict[str, Any] = {
        "iss": iss,
        "vct": vct,
        "iat": iat,
        "exp": exp,
        "cnf": {"jwk": public},
        "_sd": sorted(digests),
        "_sd_alg": "sha-256",
    }
    if status is not None:
        payload["status"] = dict(status)
    header: dict[str, Any] = {"alg": "ES256", "typ": "dc+sd-jwt"}
    if x5c is not None:
        header["x5c"] = list(x5c)
    else:
        header["kid"] = f"{iss}#0"
    jwt = jws.serialize_compact(
        header, json.dumps(payload, separators=(",", ":")).encode(), key, algorithms=["ES256"]
    )
    return jwt + "~" + "".join(d + "~" for d in disclosures)
