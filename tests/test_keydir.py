"""Key rotation through ``[keys] directory``: ``keys rotate`` stages a new kid, ``activate``
switches new tokens to it while the old kid keeps verifying and decrypting, ``retire`` ends
the old one; a private key file others can read stops the start."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from idcontact.app import create_app
from idcontact.cli import main
from idcontact.errors import ConfigError, TokenError
from idcontact.keyring import KeyRing, load_keyring
from idcontact.settings import Settings
from idcontact.tokens import AuthResult, TokenIssuer, TokenReader
from tests.conftest import CANARY_NAME, demo_settings


def settings_with(tmp_path: Path, keys: Path) -> Settings:
    return demo_settings(tmp_path, keys={"directory": str(keys)})


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def new_kids(output: str) -> dict[str, str]:
    """``{use: kid}`` from the output of ``keys rotate``."""
    return {
        line.split(":")[0]: line.split()[3] for line in output.splitlines() if "new key" in line
    }


def token(ring: KeyRing) -> str:
    issuer = TokenIssuer(ring.signing, kid=ring.signing_kid)
    result = AuthResult(status="success", attributes={"fullname": CANARY_NAME})
    return issuer.issue(result, ring.encryption_public)


def reader(ring: KeyRing) -> TokenReader:
    return TokenReader(ring.decryption, ring.trusted_signers)


def test_rotate_activate_retire(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = new_kids(cli("keys", "rotate", "--dir", str(keys)))
    assert set(first) == {"signing", "encryption"}
    settings = settings_with(tmp_path, keys)
    old = load_keyring(settings)
    assert old.signing_kid == first["signing"]  # the first key of a use is active at once
    old_token = token(old)

    second = new_kids(cli("keys", "rotate", "--dir", str(keys)))
    staged = load_keyring(settings)
    # Staged: trusted and able to decrypt, not yet used.
    assert staged.signing_kid == first["signing"]
    assert set(staged.trusted_signers) == {first["signing"], second["signing"]}
    assert len(staged.decryption) == 2

    cli("keys", "activate", "--dir", str(keys), "--use", "signing", second["signing"])
    cli("keys", "activate", "--dir", str(keys), "--use", "encryption", second["encryption"])
    rotated = load_keyring(settings)
    assert rotated.signing_kid == second["signing"]
    new_token = token(rotated)
    # Both generations verify and decrypt while the old one is not retired.
    assert reader(rotated).read(old_token).result.attributes == {"fullname": CANARY_NAME}
    assert reader(rotated).read(new_token).result.attributes == {"fullname": CANARY_NAME}
    assert reader(staged).read(old_token).result.status == "success"

    refused = CliRunner().invoke(
        main, ["keys", "retire", "--dir", str(keys), "--use", "signing", second["signing"]]
    )
    assert refused.exit_code == 2 and "is active" in refused.output
    cli("keys", "retire", "--dir", str(keys), "--use", "signing", first["signing"])
    cli("keys", "retire", "--dir", str(keys), "--use", "encryption", first["encryption"])
    retired = load_keyring(settings)
    assert set(retired.trusted_signers) == {second["signing"]}
    with pytest.raises(TokenError):
        reader(retired).read(old_token)
    assert reader(retired).read(new_token).result.status == "success"
    listed = cli("keys", "list", "--dir", str(keys))
    assert first["signing"] not in listed and f"{second['signing']}\tactive" in listed


def test_a_kid_that_starts_with_a_dash_is_a_kid_not_an_option(tmp_path: Path) -> None:
    """One thumbprint in 64 starts with "-"; an operator pastes it as it is."""
    keys = tmp_path / "keys"
    cli("keys", "rotate", "--dir", str(keys), "--use", "signing")
    staged = new_kids(cli("keys", "rotate", "--dir", str(keys), "--use", "signing"))["signing"]
    dashed = "-3" + staged[2:]
    for suffix in (".key.pem", ".pub.pem"):
        (keys / "signing" / f"{staged}{suffix}").rename(keys / "signing" / f"{dashed}{suffix}")
    out = cli("keys", "activate", "--dir", str(keys), "--use", "signing", dashed)
    assert out.strip() == f"signing: {dashed} active"
    assert f"{dashed}\tactive" in cli("keys", "list", "--dir", str(keys))
    refused = CliRunner().invoke(
        main, ["keys", "retire", "--dir", str(keys), "--use", "signing", dashed]
    )
    assert refused.exit_code == 2 and "is active" in refused.output


def test_a_readable_private_key_stops_the_start(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    kid = new_kids(cli("keys", "rotate", "--dir", str(keys), "--use", "signing"))["signing"]
    private = keys / "signing" / f"{kid}.key.pem"
    private.chmod(0o640)
    with pytest.raises(ConfigError) as caught:
        create_app(settings_with(tmp_path, keys))
    assert str(private) in caught.value.detail and "chmod 600" in caught.value.detail
    assert "PRIVATE KEY" not in caught.value.detail and "MI" not in caught.value.detail
    config = tmp_path / "idcontact.toml"
    config.write_text(f'[keys]\ndirectory = "{keys}"\n', encoding="utf-8")
    checked = CliRunner().invoke(main, ["check-config", str(config)])
    assert checked.exit_code == 2 and str(private) in checked.output
    assert "PRIVATE KEY" not in checked.output
