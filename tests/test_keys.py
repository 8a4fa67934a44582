"""Tests for key configuration, loading and generation."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey
from jwcrypto import jwk as jc_jwk

from idcontact.errors import ConfigError
from idcontact.keys import KeyConfig, generate_keypair, is_private, kid_for


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """One generated pair per kind, shared (RSA generation is the slow part)."""
    directory = tmp_path_factory.mktemp("keys")
    return {
        "RSA": generate_keypair("RSA", directory, "rsa"),
        "EC": generate_keypair("EC", directory, "ec"),
    }


@pytest.mark.parametrize("kind", ["RSA", "EC"])
def test_generate_writes_pkcs8_and_spki(
    pairs: dict[str, tuple[Path, Path]], kind: Literal["RSA", "EC"]
) -> None:
    private_path, public_path = pairs[kind]
    assert private_path.name.endswith(".key.pem")
    assert public_path.name.endswith(".pub.pem")
    assert mode(private_path) == 0o600
    assert mode(public_path) == 0o644
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")

    private = KeyConfig(type=kind, key_file=private_path).load()
    public = KeyConfig(type=kind, key=public_path.read_text()).load()
    assert isinstance(private, RSAKey if kind == "RSA" else ECKey)
    assert is_private(private)
    assert not is_private(public)
    raw = private.raw_value
    if kind == "RSA":
        assert isinstance(raw, rsa.RSAPrivateKey)
        assert raw.key_size == 2048
    else:
        assert isinstance(raw, ec.EllipticCurvePrivateKey)
        assert isinstance(raw.curve, ec.SECP256R1)


@pytest.mark.parametrize("kind", ["RSA", "EC"])
def test_kid_is_rfc7638_thumbprint(
    pairs: dict[str, tuple[Path, Path]], kind: Literal["RSA", "EC"]
) -> None:
    private_path, public_path = pairs[kind]
    private = KeyConfig(type=kind, key_file=private_path).load()
    public = KeyConfig(type=kind, key_file=public_path).load()
    expected = jc_jwk.JWK.from_pem(public_path.read_bytes()).thumbprint()
    assert kid_for(private) == kid_for(public) == expected


def test_configured_kid_is_set_on_the_key(pairs: dict[str, tuple[Path, Path]]) -> None:
    key = KeyConfig(type="EC", key_file=pairs["EC"][1], kid="ec-2024").load()
    assert key.kid == "ec-2024"
    assert KeyConfig(type="EC", key_file=pairs["EC"][1]).load().kid is None


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair("EC", tmp_path, "k")
    before = private_path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_keypair("EC", tmp_path, "k")
    assert private_path.read_bytes() == before

    # Half a pair present is also refused, and nothing new is written.
    private_path.unlink()
    with pytest.raises(FileExistsError):
        generate_keypair("EC", tmp_path, "k")
    assert not private_path.exists()
    assert public_path.exists()


def test_generate_private_key_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        private_path, public_path = generate_keypair("EC", tmp_path, "k")
    finally:
        os.umask(old)
    assert (mode(private_path), mode(public_path)) == (0o600, 0o644)


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../up"])
def test_generate_refuses_odd_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        generate_keypair("EC", tmp_path, name)


@pytest.mark.parametrize("bits", [0o040, 0o004, 0o060, 0o077])
def test_readable_private_key_file_is_refused(
    pairs: dict[str, tuple[Path, Path]], tmp_path: Path, bits: int
) -> None:
    pem = pairs["EC"][0].read_bytes()
    path = tmp_path / "loose.key.pem"
    path.write_bytes(pem)
    path.chmod(0o600 | bits)
    with pytest.raises(ConfigError) as info:
        KeyConfig(type="EC", key_file=path).load()
    message = str(info.value)
    assert str(path) in message
    assert "PRIVATE" not in message
    assert pem.decode().splitlines()[1] not in message


def test_public_key_file_may_be_world_readable(pairs: dict[str, tuple[Path, Path]]) -> None:
    assert mode(pairs["RSA"][1]) == 0o644
    assert not is_private(KeyConfig(type="RSA", key_file=pairs["RSA"][1]).load())


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key_file"):
        KeyConfig(type="EC", key_file=tmp_path / "absent.pem").load()
    with pytest.raises(ConfigError, match="regular file"):
        KeyConfig(type="EC", key_file=tmp_path).load()


def test_exactly_one_of_key_and_key_file(pairs: dict[str, tuple[Path, Path]]) -> None:
    pem = pairs["EC"][0].read_text()
    for kwargs in ({}, {"key": pem, "key_file": pairs["EC"][0]}):
        with pytest.raises(pydantic.ValidationError) as info:
            KeyConfig(type="EC", **kwargs)
        text = str(info.value) + repr(info.value)
        assert "key_file" in text
        assert pem.splitlines()[1] not in text
    with pytest.raises(pydantic.ValidationError) as info:
        KeyConfig(type="EC", key=pem, passphrase="x")  # type: ignore[call-arg]
    assert pem.splitlines()[1] not in str(info.value)


def test_config_is_frozen_and_redacted(pairs: dict[str, tuple[Path, Path]]) -> None:
    pem = pairs["EC"][0].read_text()
    config = KeyConfig(type="EC", key=pem)
    for text in (repr(config), str(config)):
        assert pem.splitlines()[1] not in text
    with pytest.raises(pydantic.ValidationError):
        config.kid = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("declared", "actual"), [("RSA", "EC"), ("EC", "RSA")])
@pytest.mark.parametrize("half", [0, 1])
def test_type_mismatch(
    pairs: dict[str, tuple[Path, Path]],
    declared: Literal["RSA", "EC"],
    actual: str,
    half: int,
) -> None:
    pem = pairs[actual][half].read_text()
    with pytest.raises(ConfigError) as info:
        KeyConfig(type=declared, key=pem).load()
    message = str(info.value) + repr(info.value)
    assert declared in message
    assert pem.splitlines()[1] not in message
    assert "BEGIN" not in message


def pem_of(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, password: bytes | None) -> str:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


def test_unusable_keys_are_refused() -> None:
    cases: list[tuple[Literal["RSA", "EC"], str]] = [
        ("EC", pem_of(ec.generate_private_key(ec.SECP384R1()), None)),
        ("RSA", pem_of(rsa.generate_private_key(public_exponent=65537, key_size=1024), None)),  # noqa: S505
        ("EC", pem_of(ec.generate_private_key(ec.SECP256R1()), b"passphrase")),
        ("EC", "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"),
        ("RSA", "just some text"),
    ]
    for kind, pem in cases:
        with pytest.raises(ConfigError) as info:
            KeyConfig(type=kind, key=pem).load()
        assert "BEGIN" not in str(info.value)
        assert info.value.__cause__ is None
