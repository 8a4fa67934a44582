"""Agent credentials: argon2id passwords, RFC 6238 TOTP, QR SVG, throttling, session and CSRF."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from idcontact.agents.credentials import (
    Passwords,
    Throttle,
    WeakPasswordError,
    check_csrf,
    check_policy,
    csrf_token,
    new_session_id,
    new_totp_secret,
    provisioning_uri,
    qr_svg,
    session_key,
    verify_totp,
)
from idcontact.errors import IdContactError

CHEAP = {"time_cost": 1, "memory_kib": 8, "parallelism": 1}
RFC_KEY = b"12345678901234567890"  # RFC 6238 appendix B, SHA-1 seed
RFC_SECRET = base64.b32encode(RFC_KEY).decode()


def hotp(key: bytes, counter: int, digits: int) -> str:
    """RFC 4226 §5.3, written out here so the verifier is checked against independent code."""
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def totp_at(key: bytes, at: float, digits: int = 6) -> str:
    return hotp(key, int(at // 30), digits)


# --- passwords ------------------------------------------------------------------------------


def test_argon2id_hash_verifies() -> None:
    pw = Passwords(**CHEAP)
    hashed = pw.hash("correct horse battery staple")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert pw.verify(hashed, "correct horse battery staple")
    assert pw.hash("correct horse battery staple") != hashed  # salted


@pytest.mark.parametrize(
    "hashed", ["", "garbage", "$argon2id$v=19$m=8,t=1,p=1$xx$yy", "$argon2id$\u00e9", "\ud800"]
)
def test_verify_false_for_garbage_hash(hashed: str) -> None:
    assert Passwords(**CHEAP).verify(hashed, "correct horse battery staple") is False


def test_verify_false_for_wrong_or_strange_password() -> None:
    pw = Passwords(**CHEAP)
    hashed = pw.hash("correct horse battery staple")
    assert pw.verify(hashed, "correct horse battery stapler") is False
    assert pw.verify(hashed, "") is False
    assert pw.verify(hashed, "\ud800") is False
    assert pw.verify(hashed, "x" * 5000) is False
    pw.dummy_verify()  # must not raise


def test_unicode_normalized() -> None:
    pw = Passwords(**CHEAP)
    hashed = pw.hash("caf\u00e9 au lait, please")  # precomposed é
    assert pw.verify(hashed, "cafe\u0301 au lait, please")  # e + combining accent


def test_needs_rehash_when_parameters_change() -> None:
    old = Passwords(**CHEAP)
    hashed = old.hash("correct horse battery staple")
    assert old.needs_rehash(hashed) is False
    assert Passwords(time_cost=2, memory_kib=8, parallelism=1).needs_rehash(hashed) is True
    assert Passwords(time_cost=1, memory_kib=16, parallelism=1).needs_rehash(hashed) is True
    assert old.needs_rehash("garbage") is True


def test_default_parameters_meet_owasp() -> None:
    hashed = Passwords().hash("correct horse battery staple")
    params = dict(kv.split("=") for kv in hashed.split("$")[3].split(","))
    assert int(params["m"]) >= 19 * 1024
    assert int(params["t"]) >= 2


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "at least 12"),
        ("elevenchars", "at least 12"),
        ("x" * 1025, "at most 1024"),
        ("Password1234", "too common"),
        ("123456789012", "too common"),
        ("abababababababab", "too easy"),
        ("valid-length-\ud800", "cannot be stored"),
    ],
)
def test_policy_refusals(password: str, reason: str) -> None:
    with pytest.raises(WeakPasswordError) as info:
        check_policy(password)
    assert reason in info.value.detail
    assert password not in str(info.value)
    assert isinstance(info.value, IdContactError)
    assert (info.value.status, info.value.slug) == (422, "weak-password")


@pytest.mark.parametrize("password", ["twelve chars", "x" * 20 + "yz!", "ö" * 6 + "stukjes"])
def test_policy_accepts(password: str) -> None:
    check_policy(password)


# --- TOTP -----------------------------------------------------------------------------------


def test_helper_matches_rfc6238_vector() -> None:
    assert totp_at(RFC_KEY, 59, digits=8) == "94287082"
    assert totp_at(RFC_KEY, 1111111109, digits=8) == "07081804"


def test_totp_accepts_independent_code_and_returns_step() -> None:
    at = 1_700_000_015.0
    code = totp_at(RFC_KEY, at)
    assert verify_totp(RFC_SECRET, code, at=at, last_step=None) == int(at // 30)
    assert verify_totp(RFC_SECRET, f"{code[:3]} {code[3:]}", at=at, last_step=None) is not None


def test_totp_replay_refused() -> None:
    at = 1_700_000_015.0
    code = totp_at(RFC_KEY, at)
    step = verify_totp(RFC_SECRET, code, at=at, last_step=None)
    assert step is not None
    assert verify_totp(RFC_SECRET, code, at=at + 5, last_step=step) is None
    # An older code, still inside the window, is refused after a newer one was used.
    assert verify_totp(RFC_SECRET, totp_at(RFC_KEY, at - 30), at=at, last_step=step) is None


def test_totp_window() -> None:
    at = 1_700_000_015.0
    for offset in (-30, 30):
        code = totp_at(RFC_KEY, at + offset)
        assert verify_totp(RFC_SECRET, code, at=at, last_step=None) == int((at + offset) // 30)
    for offset in (-60, 60, 3600):
        code = totp_at(RFC_KEY, at + offset)
        assert verify_totp(RFC_SECRET, code, at=at, last_step=None) is None
    assert (
        verify_totp(RFC_SECRET, totp_at(RFC_KEY, at + 30), at=at, last_step=None, window=0) is None
    )


@pytest.mark.parametrize(
    "code", ["", "12345", "1234567", "12a456", "١٢٣٤٥٦", "-12345", "123456\x00"]
)
def test_totp_malformed_codes_refused(code: str) -> None:
    assert verify_totp(RFC_SECRET, code, at=1_700_000_015.0, last_step=None) is None


def test_new_secret_and_provisioning_uri() -> None:
    secret = new_totp_secret()
    assert len(base64.b32decode(secret)) == 20
    assert secret != new_totp_secret()
    uri = provisioning_uri(secret, "agent@example.org", "ID Contact")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert unquote(parts.path) == "/ID Contact:agent@example.org"
    query = parse_qs(parts.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == ["ID Contact"]


# --- QR -------------------------------------------------------------------------------------


def test_qr_svg_is_inline_and_accessible() -> None:
    svg = qr_svg("otpauth://totp/x?secret=ABC", "Scan <this> & enrol")
    assert svg.startswith("<svg ")
    assert svg.endswith("</svg>")
    assert "<?xml" not in svg
    assert 'viewBox="0 0 ' in svg
    assert 'role="img"' in svg
    assert "<title>Scan &lt;this&gt; &amp; enrol</title>" in svg
    assert "width=" not in svg.split(">", 1)[0]
    assert "http" not in svg and "href" not in svg


# --- throttling -----------------------------------------------------------------------------


def test_throttle_boundaries() -> None:
    t = Throttle(max_failures=5, window_seconds=900, lockout_seconds=900)
    four = [100.0, 101.0, 102.0, 103.0]
    assert t.blocked_until(four, now=104) is None
    assert t.blocked_until([*four, 104.0], now=104) == 1004
    assert t.blocked_until([*four, 104.0], now=1003.9) == 1004
    assert t.blocked_until([*four, 104.0], now=1004) is None


def test_throttle_ignores_failures_outside_window() -> None:
    t = Throttle()
    assert t.blocked_until([0.0, 1.0, 2.0, 3.0, 904.0], now=905) is None
    assert t.blocked_until([6.0, 4.0, 7.0, 5.0, 904.0], now=905) == 1804  # unsorted, edge inclusive


def test_throttle_block_does_not_end_early_as_window_slides() -> None:
    t = Throttle()
    failures = [0.0, 1.0, 2.0, 3.0, 899.0]
    assert t.blocked_until(failures, now=950) == 1799  # first failures left the window


def test_throttle_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_failures"):
        Throttle(max_failures=0)


# --- sessions and CSRF ----------------------------------------------------------------------


def test_session_ids_and_keys() -> None:
    sid = new_session_id()
    assert len(base64.urlsafe_b64decode(sid + "=")) == 32
    assert sid != new_session_id()
    key = session_key(sid)
    assert key == hashlib.sha256(sid.encode()).hexdigest()
    assert sid not in key


def test_csrf_bound_to_session_and_secret() -> None:
    secret = b"s" * 32
    a, b = new_session_id(), new_session_id()
    ta, tb = csrf_token(a, secret), csrf_token(b, secret)
    assert ta != tb
    assert "=" not in ta and "+" not in ta and "/" not in ta
    assert check_csrf(a, secret, ta)
    assert not check_csrf(b, secret, ta)
    assert not check_csrf(a, b"t" * 32, ta)
    for bad in ("", ta[:-1], "é" * 43, "\ud800"):
        assert not check_csrf(a, secret, bad)
