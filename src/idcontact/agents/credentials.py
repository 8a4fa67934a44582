"""Pure primitives for agent login: passwords, TOTP, QR codes, throttling, session and CSRF tokens.

Nothing here touches a framework, a database or the wall clock: callers pass ``at``/``now`` and
store what is returned (hashes, the last TOTP step, failure timestamps, session keys).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import pyotp
import segno
from argon2 import PasswordHasher, Type
from argon2.exceptions import VerificationError

from idcontact.errors import IdContactError

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
TOTP_DIGITS = 6
TOTP_INTERVAL = 30

# Only entries of at least MIN_PASSWORD_LENGTH matter: shorter ones are refused anyway.
_COMMON_PASSWORDS = frozenset(
    {
        "123456789012",
        "1234567890123",
        "12345678901234",
        "password1234",
        "password123!",
        "passwordpassword",
        "qwertyuiop12",
        "qwertyuiopasdf",
        "qwerty123456",
        "1q2w3e4r5t6y",
        "iloveyou1234",
        "welcome12345",
        "letmein12345",
        "changeme1234",
        "administrator",
        "wachtwoord12",
        "wachtwoord123",
    }
)


class WeakPasswordError(IdContactError):
    status = 422
    slug = "weak-password"
    title = "The password is too weak"


def _normalize(password: str) -> str:
    # NIST SP 800-63B §5.1.1.2: the same password typed on another keyboard must still match.
    return unicodedata.normalize("NFKC", password)


def check_policy(password: str) -> None:
    """Refuse passwords that are too short, absurdly long or well known; never echo them."""
    pw = _normalize(password)
    if len(pw) < MIN_PASSWORD_LENGTH:
        raise WeakPasswordError(f"Use at least {MIN_PASSWORD_LENGTH} characters.")
    if len(pw) > MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(f"Use at most {MAX_PASSWORD_LENGTH} characters.")
    if pw.casefold() in _COMMON_PASSWORDS or len(set(pw)) < 4:
        raise WeakPasswordError("This password is too common or too easy to guess.")
    try:
        pw.encode("utf-8")
    except UnicodeEncodeError:
        raise WeakPasswordError("The password contains characters that cannot be stored.") from None


class Passwords:
    """Argon2id hashing; defaults follow OWASP (19 MiB, 2 passes, 1 lane)."""

    def __init__(
        self, *, time_cost: int = 2, memory_kib: int = 19 * 1024, parallelism: int = 1
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        # Made now, not on first use, so even the first unknown-account login takes normal time.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(_normalize(password))

    def verify(self, hashed: str, password: str) -> bool:
        """True only on a match; a mismatch, malformed hash or unencodable input is just False."""
        if len(password) > MAX_PASSWORD_LENGTH:
            return False
        try:
            return self._hasher.verify(hashed, _normalize(password))
        except (VerificationError, ValueError):  # ValueError covers InvalidHash and UnicodeError
            return False

    def needs_rehash(self, hashed: str) -> bool:
        """True when the hash was made with other parameters (or cannot be read at all)."""
        try:
            return self._hasher.check_needs_rehash(hashed)
        except ValueError:  # InvalidHashError
            return True

    def dummy_verify(self) -> None:
        """Spend one verification's time for an unknown account, so timing reveals nothing."""
        self.verify(self._dummy_hash, "not-the-password")


def new_totp_secret() -> str:
    """160 random bits (RFC 4226 §4 recommends 160) as unpadded base32."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii")


def _totp(secret: str) -> pyotp.TOTP:
    # SHA-1, 6 digits, 30 s: the only profile every authenticator app supports.
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL, digest=hashlib.sha1)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans to enrol."""
    return _totp(secret).provisioning_uri(name=account, issuer_name=issuer)


def verify_totp(
    secret: str, code: str, *, at: float, last_step: int | None, window: int = 1
) -> int | None:
    """Return the matched time step (store it), or None; steps <= ``last_step`` are replays."""
    code = "".join(code.split())
    if len(code) != TOTP_DIGITS or not (code.isascii() and code.isdigit()):
        return None
    totp = _totp(secret)
    now_step = int(at // TOTP_INTERVAL)
    for step in range(max(now_step - window, 0), now_step + window + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def qr_svg(data: str, title: str) -> str:
    """Inline, scalable SVG QR code (level M) for a page; ``title`` is read by screen readers."""
    qr = segno.make(data, error="m", micro=False, boost_error=False)
    svg = qr.svg_inline(title=title, omitsize=True, svgclass="qr", lineclass=None)
    return svg.replace("<svg ", '<svg role="img" ', 1)


@dataclass(frozen=True)
class Throttle:
    """Refuse logins for ``lockout_seconds`` once ``max_failures`` fall within ``window_seconds``.

    Pure, so a shared store of failures (one key per account or client address) can apply it on
    every instance. Attempts refused while blocked should not be recorded, or the block extends.
    """

    max_failures: int = 5
    window_seconds: float = 900
    lockout_seconds: float = 900

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.window_seconds <= 0 or self.lockout_seconds <= 0:
            raise ValueError("Throttle needs max_failures >= 1 and positive durations")

    def blocked_until(self, failures: Sequence[float], now: float) -> float | None:
        """Until when attempts are refused, or None; anchored at the failures, not at ``now``."""
        times = sorted(failures)
        n = self.max_failures
        ends = [
            times[i] + self.lockout_seconds
            for i in range(n - 1, len(times))
            if times[i] - times[i - n + 1] <= self.window_seconds
        ]
        until = max(ends, default=None)
        return until if until is not None and until > now else None


def new_session_id() -> str:
    """256 random bits, url-safe; goes to the cookie only, never to storage."""
    return secrets.token_urlsafe(32)


def session_key(session_id: str) -> str:
    """What we store for a session, so a leaked table does not hand out live cookies."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def csrf_token(session_id: str, secret: bytes) -> str:
    """A token bound to one session (HMAC-SHA256), so it cannot be reused in another."""
    mac = hmac.new(secret, b"csrf:" + session_id.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def check_csrf(session_id: str, secret: bytes, token: str) -> bool:
    """Constant-time comparison; any malformed token is simply False."""
    expected = csrf_token(session_id, secret).encode("ascii")
    return hmac.compare_digest(expected, token.encode("utf-8", "replace"))
