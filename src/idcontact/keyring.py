"""All key material of one instance, loaded once at start-up.

Keys that are not configured are generated on first run into ``<data_dir>/keys`` (private
files 0600): the demo keys of the embedded mode. A production configuration names every key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from joserfc.jwk import ECKey, OctKey, RSAKey

from idcontact.keydir import KeyDirectory
from idcontact.keys import JoseKey, KeyConfig, generate_keypair, kid_for
from idcontact.settings import DEFAULT_TENANT, Settings, Tenant


@dataclass(frozen=True, repr=False)
class KeyRing:
    signing: JoseKey
    signing_kid: str
    encryption_public: JoseKey
    decryption: tuple[JoseKey, ...]
    trusted_signers: dict[str, JoseKey]
    fallback_signers: tuple[JoseKey, ...]
    ui_signing: JoseKey
    ui_kid: str
    requestor: JoseKey
    """Comm side: signs our channels' auth-only start requests (identify during a conversation)."""
    requestor_kid: str
    authonly_request_keys: dict[str, JoseKey] = field(default_factory=dict)
    internal_secret: bytes = b""
    pseudonym_secret: bytes = b""

    @property
    def internal_key(self) -> OctKey:
        return OctKey.import_key(self.internal_secret)

    def __repr__(self) -> str:
        return f"KeyRing(signing_kid={self.signing_kid!r})"


def demo_pair(
    settings: Settings, tenant: Tenant, name: str, kind: Literal["RSA", "EC"] | None = None
) -> tuple[KeyConfig, KeyConfig]:
    """A generated key pair of the embedded mode: made on first run, then reused."""
    # Each tenant has its own trust material, demo keys included.
    directory = settings.data_dir / "keys"
    if tenant.slug != DEFAULT_TENANT:
        directory = directory / tenant.slug
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    priv, pub = directory / f"{name}.key.pem", directory / f"{name}.pub.pem"
    kind = kind or tenant.keys.generate
    if not priv.exists():
        generate_keypair(kind, directory, name)
    return KeyConfig(type=kind, key_file=priv), KeyConfig(type=kind, key_file=pub)


def _public(key: JoseKey) -> JoseKey:
    if isinstance(key, RSAKey):
        return RSAKey.import_key(key.as_dict(private=False))
    return ECKey.import_key(key.as_dict(private=False))


def _internal_secret(settings: Settings) -> bytes:
    if settings.internal_secret is not None:
        return settings.internal_secret.get_secret_value().encode()
    path: Path = settings.data_dir / "internal_secret"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def load_keyring(settings: Settings, tenant: Tenant | None = None) -> KeyRing:
    """Load a tenant's keys (the default tenant's when not given), generating demo keys for
    those that are missing."""
    tenant = tenant or settings.default_tenant
    k = tenant.keys
    rotating = KeyDirectory(k.directory, k.generate) if k.directory else None
    signed = rotating.load("signing") if rotating else None
    sealed = rotating.load("encryption") if rotating else None
    signing: JoseKey
    if k.signing is None and signed is not None:
        signing, signing_kid = signed.active_private, signed.active_kid
    else:
        signing = (k.signing or demo_pair(settings, tenant, "attr-signing")[0]).load()
        signing_kid = (k.signing.kid if k.signing else None) or kid_for(signing)
    decryption: tuple[JoseKey, ...]
    if k.decryption:
        decryption = tuple(c.load() for c in k.decryption)
    elif sealed is not None:
        # The active key first: it opens nearly every token.
        rest = [key for kid, key in sealed.privates.items() if kid != sealed.active_kid]
        decryption = (sealed.active_private, *rest)
    elif k.encryption_public is None:
        decryption = (demo_pair(settings, tenant, "attr-encryption")[0].load(),)
    else:
        decryption = ()
    if k.encryption_public:
        encryption_public = k.encryption_public.load()
    elif sealed is not None:
        encryption_public = sealed.active_public
    else:
        encryption_public = _public(decryption[0])
    trusted = {kid: c.load() for kid, c in k.trusted_signers.items()}
    if not trusted and signed is not None:
        trusted = dict(signed.publics)  # staged, active and not yet retired: all verify
    if not trusted:
        # Embedded default: trust our own auth plugins' signing key.
        trusted = {signing_kid: _public(signing)}
    # Original tokens carry no kid: try the global fallback and each remote plugin's own key.
    fallback = ([k.fallback_signer.load()] if k.fallback_signer else []) + [
        m.signature_key.load() for m in tenant.auth_methods if m.signature_key is not None
    ]
    ui = (k.ui_signing or demo_pair(settings, tenant, "ui-signing")[0]).load()
    requestor = (k.requestor or demo_pair(settings, tenant, "channel-requestor")[0]).load()
    requestor_kid = (k.requestor.kid if k.requestor else None) or kid_for(requestor)
    authonly = {kid: c.load() for kid, c in k.authonly_request_keys.items()}
    if not authonly:
        # Embedded default: the core accepts auth-only starts from our own channels.
        authonly = {requestor_kid: _public(requestor)}
    internal = _internal_secret(settings)
    return KeyRing(
        signing=signing,
        signing_kid=signing_kid,
        encryption_public=encryption_public,
        decryption=decryption,
        trusted_signers=trusted,
        fallback_signers=tuple(fallback),
        ui_signing=ui,
        ui_kid=kid_for(ui),
        authonly_request_keys=authonly,
        requestor=requestor,
        requestor_kid=requestor_kid,
        internal_secret=internal,
        pseudonym_secret=(
            tenant.pseudonym_secret.get_secret_value().encode()
            if tenant.pseudonym_secret
            else hmac.new(internal, b"pseudonym:" + tenant.slug.encode(), hashlib.sha256).digest()
        ),
    )
