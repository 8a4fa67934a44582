"""The verifier's side of OpenID4VP 1.0: who we are (client identifier), the signed request
object (§5, ``typ: oauth-authz-req+jwt``) and opening an encrypted response (§8.3).

Client identifiers (§5.9.3): ``x509_san_dns:<host>`` and ``x509_hash:<base64url SHA-256 of the
leaf certificate>`` with our certificate chain in ``x5c`` (production; EU HAIP wallets and
Yivi's trusted-verifier list need these), and ``decentralized_identifier:did:jwk:…`` from our
own key (development and demos: wallets show it as unverified).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from joserfc import jwe, jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from idcontact.errors import ConfigError
from idcontact.openid4vp.errors import MalformedPresentationError, ResponseDecryptionError
from idcontact.openid4vp.trust import did_jwk_of, dns_names, sha256_b64url

REQUEST_TYPE = "oauth-authz-req+jwt"
REQUEST_MEDIA_TYPE = "application/oauth-authz-req+jwt"
ENC_VALUES = ("A128GCM", "A256GCM")
ResponseMode = Literal["direct_post", "direct_post.jwt"]
Prefix = Literal["x509_san_dns", "x509_hash", "decentralized_identifier"]
VP_FORMATS = {"dc+sd-jwt": {"sd-jwt_alg_values": ["ES256"], "kb-jwt_alg_values": ["ES256"]}}


@dataclass(frozen=True)
class VerifierIdentity:
    client_id: str
    key: ECKey
    """Signs request objects."""
    header: dict[str, Any]
    """``x5c`` (x509) or ``kid`` (DID) for the request object's header."""
    leaf: x509.Certificate | None = None


def identity(
    prefix: Prefix,
    key: ECKey,
    chain: Sequence[x509.Certificate] = (),
    host: str | None = None,
) -> VerifierIdentity:
    """Our client identifier; ``chain`` (leaf first) for the x509 prefixes, whose leaf must
    hold ``key``'s public key; ``host``: the DNS name for ``x509_san_dns``."""
    if prefix == "decentralized_identifier":
        did = did_jwk_of(key)
        return VerifierIdentity(f"{prefix}:{did}", key, {"kid": f"{did}#0"})
    if not chain:
        raise ConfigError(f"{prefix}: needs the relying-party certificate chain")
    leaf = chain[0]
    public = leaf.public_key()
    if (
        not isinstance(public, ec.EllipticCurvePublicKey)
        or ECKey.import_key(public).thumbprint() != key.thumbprint()
    ):
        raise ConfigError("request_key: is not the key of the relying-party certificate")
    x5c = [base64.b64encode(c.public_bytes(Encoding.DER)).decode() for c in chain]
    if prefix == "x509_hash":
        client_id = f"x509_hash:{sha256_b64url(leaf.public_bytes(Encoding.DER))}"
    else:
        names = dns_names(leaf)
        if host is None or host not in names:
            raise ConfigError(
                "x509_san_dns: the certificate's DNS names must include the host of public_url"
            )
        client_id = f"x509_san_dns:{host}"
    return VerifierIdentity(client_id, key, {"x5c": x5c}, leaf)


def request_object(
    who: VerifierIdentity,
    *,
    nonce: str,
    state: str,
    response_uri: str,
    response_mode: ResponseMode,
    dcql_query: dict[str, Any],
    client_name: str,
    encryption_key: ECKey | None,
    now: int,
    lifetime: int,
) -> str:
    """The signed authorization request that ``request_uri`` serves."""
    metadata: dict[str, Any] = {
        "client_name": client_name,
        "vp_formats_supported": VP_FORMATS,
        "vp_formats": VP_FORMATS,
    }
    if response_mode == "direct_post.jwt":
        if encryption_key is None:  # pragma: no cover - made per transaction
            raise ValueError("direct_post.jwt needs an encryption key")
        public = encryption_key.as_dict(private=False)
        public.update({"use": "enc", "alg": "ECDH-ES"})
        metadata["jwks"] = {"keys": [public]}
        metadata["encrypted_response_enc_values_supported"] = list(ENC_VALUES)
    claims = {
        "iss": who.client_id,
        "aud": "https://self-issued.me/v2",
        "client_id": who.client_id,
        "response_type": "vp_token",
        "response_mode": response_mode,
        "response_uri": response_uri,
        "nonce": nonce,
        "state": state,
        "dcql_query": dcql_query,
        "client_metadata": metadata,
        "iat": now,
        "exp": now + lifetime,
    }
    header = {"alg": "ES256", "typ": REQUEST_TYPE, **who.header}
    return jws.serialize_compact(
        header, json.dumps(claims, separators=(",", ":")).encode(), who.key, algorithms=["ES256"]
    )


def open_response(response: str, key: ECKey) -> dict[str, Any]:
    """The payload ``{vp_token, state}`` of a ``direct_post.jwt`` response, decrypted with the
    transaction's own key."""
    if response.count(".") != 4:
        raise ResponseDecryptionError()
    try:
        opened = jwe.decrypt_compact(response, key, algorithms=["ECDH-ES", *ENC_VALUES])
        if opened.headers().get("kid") not in (None, key.kid):
            raise ResponseDecryptionError()
        payload = json.loads(opened.plaintext or b"")
    except (JoseError, ValueError, TypeError, RecursionError):
        raise ResponseDecryptionError() from None
    if not isinstance(payload, dict):
        raise MalformedPresentationError("The response is not a JSON object")
    return payload
