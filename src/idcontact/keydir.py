"""A rotating key directory (``[keys] directory``, docs/operations.md#key-rotation).

::

    <directory>/signing/<kid>.key.pem      auth side: signs attribute tokens
    <directory>/signing/<kid>.pub.pem      comm side: verifies them (every kid present)
    <directory>/signing/active             the kid that signs
    <directory>/encryption/<kid>.key.pem   comm side: decrypts (every kid present)
    <directory>/encryption/<kid>.pub.pem   auth side: encrypts to the active kid
    <directory>/encryption/active

``kid`` is the key's RFC 7638 thumbprint. A new key is *staged* first (present, so every
instance that has restarted verifies and decrypts with it, but not used), then *activated*
(used for new tokens; the old one still verifies and decrypts), then the old one is *retired*
(deleted). Each step takes effect at an instance's next start.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from idcontact.errors import ConfigError
from idcontact.keys import JoseKey, KeyConfig, generate_keypair, kid_for, load_pem

Use = Literal["signing", "encryption"]
USES: tuple[Use, ...] = ("signing", "encryption")
ACTIVE = "active"
_KID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


@dataclass(frozen=True)
class DirKey:
    kid: str
    private: Path
    public: Path
    active: bool


@dataclass(frozen=True)
class Loaded:
    """What the key ring takes from the directory for one use."""

    active_kid: str
    active_private: JoseKey
    active_public: JoseKey
    privates: dict[str, JoseKey]
    publics: dict[str, JoseKey]


class KeyDirectory:
    def __init__(self, root: Path, kind: Literal["RSA", "EC"] = "EC") -> None:
        self.root = root
        self.kind = kind

    def _dir(self, use: Use) -> Path:
        return self.root / use

    def active_kid(self, use: Use) -> str | None:
        path = self._dir(use) / ACTIVE
        if not path.is_file():
            return None
        kid = path.read_text(encoding="ascii").strip()
        if not _KID.match(kid):
            raise ConfigError(f"keys.directory {path}: not a key id")
        return kid

    def keys(self, use: Use) -> list[DirKey]:
        directory = self._dir(use)
        if not directory.is_dir():
            return []
        active = self.active_kid(use)
        out = []
        for private in sorted(directory.glob("*.key.pem")):
            kid = private.name.removesuffix(".key.pem")
            if not _KID.match(kid):
                continue
            out.append(DirKey(kid, private, directory / f"{kid}.pub.pem", kid == active))
        return out

    def stage(self, use: Use) -> str:
        """Write a new key pair under its own kid; the first one of a use is activated."""
        directory = self._dir(use)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        temp = f"new-{os.getpid()}"
        private, public = generate_keypair(self.kind, directory, temp)
        try:
            kid = kid_for(load_pem(self.kind, public.read_bytes(), source=str(public)))
            private.rename(directory / f"{kid}.key.pem")
            public.rename(directory / f"{kid}.pub.pem")
        except BaseException:
            for path in (private, public):
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        if self.active_kid(use) is None:
            self.activate(use, kid)
        return kid

    def activate(self, use: Use, kid: str) -> None:
        if not any(k.kid == kid for k in self.keys(use)):
            raise ConfigError(f"keys.directory: no {use} key {kid!r}")
        directory = self._dir(use)
        temp = directory / f".{ACTIVE}.{os.getpid()}"
        temp.write_text(kid + "\n", encoding="ascii")
        temp.chmod(0o644)
        temp.replace(directory / ACTIVE)  # atomic: a starting instance sees the old or the new

    def retire(self, use: Use, kid: str) -> None:
        """Delete a key that is no longer active (its tokens stop verifying/decrypting)."""
        found = next((k for k in self.keys(use) if k.kid == kid), None)
        if found is None:
            raise ConfigError(f"keys.directory: no {use} key {kid!r}")
        if found.active:
            raise ConfigError(
                f"keys.directory: {use} key {kid!r} is active; activate another first"
            )
        found.private.unlink()
        with contextlib.suppress(FileNotFoundError):
            found.public.unlink()

    def load(self, use: Use) -> Loaded | None:
        """Every key of a use (private files checked like any ``key_file``); ``None`` when the
        directory has none."""
        keys = self.keys(use)
        if not keys:
            return None
        active = next((k for k in keys if k.active), None)
        if active is None:
            raise ConfigError(f"keys.directory {self._dir(use)}: no active key (keys activate)")
        privates: dict[str, JoseKey] = {}
        publics: dict[str, JoseKey] = {}
        for key in keys:
            privates[key.kid] = _load(key.private, key.kid)
            publics[key.kid] = _load(key.public, key.kid)
        return Loaded(active.kid, privates[active.kid], publics[active.kid], privates, publics)


def _load(path: Path, kid: str) -> JoseKey:
    """A key file of either type (a directory may hold EC and RSA keys across a change)."""
    try:
        return KeyConfig(type="EC", key_file=path, kid=kid).load()
    except ConfigError as exc:
        if "not of the configured type" not in exc.detail:
            raise
    return KeyConfig(type="RSA", key_file=path, kid=kid).load()
