"""Tests for the ``idcontact`` command line (no server is started here)."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from idcontact.cli import DEMO_CONFIG, main
from idcontact.errors import ConfigError
from idcontact.keys import generate_keypair
from idcontact.settings import load_settings

CANARY_SECRET = "Canary-Cli-Secret-3VX8-0123456789abcdefgh"
CANARY_PEM_BODY = "CANARYCLIPEMBODYMIGHAgEAMBMGByqGSM49AgEGCCqGSM49"

INVALID = f"""
internal_secret = "{CANARY_SECRET}"
plugin_timeout = "soon"

[keys]
signing = {{ type = "EC", key = "-----BEGIN PRIVATE KEY-----\\n{CANARY_PEM_BODY}\\n-----END PRIVATE KEY-----", key_file = "x" }}
"""  # noqa: E501


pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invalid_config(tmp_path: Path) -> Path:
    path = tmp_path / "invalid.toml"
    path.write_text(INVALID, encoding="utf-8")
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_no_secrets(result: Result) -> None:
    for text in (result.output, result.stdout, result.stderr):
        assert CANARY_SECRET not in text
        assert CANARY_PEM_BODY not in text
        assert "PRIVATE KEY" not in text
        assert "Traceback" not in text


def expected_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


# -- check-config ---------------------------------------------------------------------------


def test_check_config_demo_ok(runner: CliRunner) -> None:
    result = runner.invoke(main, ["check-config", str(DEMO_CONFIG)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK")
    assert "3 purposes, 3 auth methods, 5 comm methods" in result.stdout
    assert (
        "phone (default): chance that guessing links a call to someone's live code: 5.0e-07 per day"
        in result.stdout
    )


def test_check_config_refuses_phone_codes_that_are_too_easy_to_guess(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "weak.toml"
    path.write_text(DEMO_CONFIG.read_text().replace("[phone]\n", "[phone]\ncode_length = 8\n"))
    result = runner.invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2
    assert "5.0e-05 per day (more than 1 in a million)" in result.stderr
    assert "OK" not in result.stdout


def test_check_config_reads_the_klantinteracties_token_file(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "kis.toml"
    token = tmp_path / "token"
    section = f'[klantinteracties]\nurl = "https://ok.example/api"\ntoken_file = "{token}"\n'
    path.write_text(DEMO_CONFIG.read_text() + "\n" + section)
    result = runner.invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: klantinteracties.token_file: cannot be read"
    token.write_text("secret-open-klant-token\n")
    result = runner.invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "secret-open-klant-token" not in result.output


def test_check_config_invalid_file(runner: CliRunner, invalid_config: Path) -> None:
    message = expected_error(invalid_config)
    result = runner.invoke(main, ["check-config", str(invalid_config)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {message}"
    assert "OK" not in result.stdout
    assert_no_secrets(result)


def test_check_config_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    result = runner.invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {expected_error(path)}"


def test_check_config_group_readable_key_file(runner: CliRunner, tmp_path: Path) -> None:
    private, _public = generate_keypair("EC", tmp_path, "signing")
    private.chmod(0o640)
    pem_lines = private.read_text().splitlines()[1:-1]
    config = tmp_path / "config.toml"
    config.write_text(f'[keys]\nsigning = {{ type = "EC", key_file = "{private}" }}\n')

    result = runner.invoke(main, ["check-config", str(config)])
    assert result.exit_code == 2
    assert "keys.signing" in result.stderr
    assert "readable by group or others" in result.stderr
    assert_no_secrets(result)
    for line in pem_lines:
        assert line not in result.output

    # The same key with owner-only permissions passes.
    private.chmod(0o600)
    result = runner.invoke(main, ["check-config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK")


def test_check_config_unusable_inline_key(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[keys]\n"
        'signing = { type = "EC", key = "-----BEGIN PRIVATE KEY-----\\n'
        f'{CANARY_PEM_BODY}\\n-----END PRIVATE KEY-----" }}\n'
    )
    result = runner.invoke(main, ["check-config", str(config)])
    assert result.exit_code == 2
    assert "keys.signing" in result.stderr
    assert_no_secrets(result)


# -- keys generate --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["EC", "RSA"])
def test_keys_generate(runner: CliRunner, tmp_path: Path, kind: str) -> None:
    directory = tmp_path / "keys"
    result = runner.invoke(
        main, ["keys", "generate", "--type", kind, "--dir", str(directory), "--name", "x"]
    )
    assert result.exit_code == 0, result.output
    private, public = directory / "x.key.pem", directory / "x.pub.pem"
    assert mode(private) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert "kid " in result.stdout
    assert "PRIVATE KEY" not in result.output
    before = (private.read_bytes(), public.read_bytes())

    again = runner.invoke(
        main, ["keys", "generate", "--type", kind, "--dir", str(directory), "--name", "x"]
    )
    assert again.exit_code != 0
    assert "exists already" in again.stderr
    assert (private.read_bytes(), public.read_bytes()) == before
    assert mode(private) == 0o600

    # The generated key is accepted as a configured key.
    config = tmp_path / "config.toml"
    config.write_text(f'[keys]\nsigning = {{ type = "{kind}", key_file = "{private}" }}\n')
    check = runner.invoke(main, ["check-config", str(config)])
    assert check.exit_code == 0, check.output


def test_keys_generate_refuses_when_only_public_exists(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "x.pub.pem").write_text("keep me")
    result = runner.invoke(main, ["keys", "generate", "--dir", str(tmp_path), "--name", "x"])
    assert result.exit_code != 0
    assert not (tmp_path / "x.key.pem").exists()
    assert (tmp_path / "x.pub.pem").read_text() == "keep me"


# -- db upgrade and purge -------------------------------------------------------------------


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    import idcontact.storage.db

    migrations = Path(idcontact.storage.db.__file__).parent / "migrations"
    head = ScriptDirectory(str(migrations)).get_current_head()
    assert head is not None
    return head


def test_db_upgrade(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "data"
    head = head_revision()
    assert head != "0001"  # the test follows new migrations
    for _ in range(2):
        result = runner.invoke(main, ["db", "upgrade", "--data-dir", str(data)])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"database at revision {head}"
    database = data / "idcontact.sqlite3"
    assert database.is_file()
    with sqlite3.connect(database) as conn:
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    conn.close()
    assert revision == head


def test_db_upgrade_invalid_config(runner: CliRunner, tmp_path: Path, invalid_config: Path) -> None:
    result = runner.invoke(
        main, ["db", "upgrade", "--config", str(invalid_config), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "invalid configuration" in result.stderr
    assert_no_secrets(result)


def test_purge_fresh_data_dir(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = runner.invoke(main, ["purge", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "purged 0 conversations"


# -- plugins --------------------------------------------------------------------------------


def test_plugins_lists_demo_plugins(runner: CliRunner) -> None:
    result = runner.invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("auth\tdemo\t") for line in lines)
    assert any(line.startswith("comm\tdemo\t") for line in lines)


# -- serve (without starting a server) ------------------------------------------------------


@pytest.fixture
def keep_umask() -> Iterator[None]:
    """``serve`` sets a process-wide umask; restore it for the other tests."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("keep_umask")
def test_serve_invalid_config_exits_2(runner: CliRunner, invalid_config: Path) -> None:
    message = expected_error(invalid_config)
    result = runner.invoke(main, ["serve", "--config", str(invalid_config)])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.strip() == f"error: {message}"
    assert "open http" not in result.stdout
    assert_no_secrets(result)


@pytest.mark.usefixtures("keep_umask")
def test_serve_missing_config_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    result = runner.invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {expected_error(path)}"
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("keep_umask")
def test_serve_config_from_environment(
    runner: CliRunner, invalid_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDCONTACT_CONFIG", str(invalid_config))
    result = runner.invoke(main, ["serve"])
    assert result.exit_code == 2
    assert "invalid configuration" in result.stderr
    assert_no_secrets(result)


def test_flag_wins_over_environment(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDCONTACT_DATA_DIR", str(tmp_path / "from-env"))
    result = runner.invoke(main, ["db", "upgrade", "--data-dir", str(tmp_path / "from-flag")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-flag" / "idcontact.sqlite3").exists()
    assert not (tmp_path / "from-env").exists()


def test_keys_generate_refuses_a_path_as_name(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["keys", "generate", "--dir", str(tmp_path), "--name", "../x"])
    assert result.exit_code == 2
    assert "plain file name" in result.output
    assert not (tmp_path.parent / "x.key.pem").exists()


def test_check_config_checks_each_tenants_keys(runner: CliRunner, tmp_path: Path) -> None:
    private, _public = generate_keypair("EC", tmp_path, "nijmegen")
    private.chmod(0o640)
    config = tmp_path / "config.toml"
    config.write_text(
        '[[tenants]]\nslug = "nijmegen"\n'
        f'[tenants.keys]\nsigning = {{ type = "EC", key_file = "{private}" }}\n'
    )
    result = runner.invoke(main, ["check-config", str(config)])
    assert result.exit_code == 2
    assert "tenants[0].keys.signing" in result.stderr
    private.chmod(0o600)
    result = runner.invoke(main, ["check-config", str(config)])
    assert result.exit_code == 0, result.output
    assert "2 tenant(s)" in result.stdout


def test_agents_lifecycle_on_the_command_line(runner: CliRunner, tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    added = runner.invoke(
        main, ["agents", "add", "anna", "--name", "Anna", "--member", "default:supervisor:*", *data]
    )
    assert added.exit_code == 0, added.output
    link = added.stdout.strip().splitlines()[-1].strip()
    assert link.startswith("http://127.0.0.1:8000/agent/enrol/")
    code = link.rsplit("/", 1)[1]
    database = tmp_path / "data" / "idcontact.sqlite3"
    assert code not in database.read_bytes().decode("latin-1")  # only its hash is stored

    listed = runner.invoke(main, ["agents", "list", *data])
    assert listed.stdout.split() == ["anna", "invited", "default:supervisor:*"]
    taken = runner.invoke(main, ["agents", "add", "anna", *data])
    assert taken.exit_code == 1 and "taken" in taken.output

    reset = runner.invoke(main, ["agents", "reset", "anna", *data])
    assert reset.exit_code == 0 and code not in reset.stdout  # a new link
    assert runner.invoke(main, ["agents", "disable", "anna", *data]).exit_code == 0
    assert "disabled" in runner.invoke(main, ["agents", "list", *data]).stdout
    assert runner.invoke(main, ["agents", "enable", "anna", *data]).exit_code == 0
    assert "invited" in runner.invoke(main, ["agents", "list", *data]).stdout

    unknown = runner.invoke(main, ["agents", "disable", "nobody", *data])
    assert unknown.exit_code == 1 and "No such agent" in unknown.output
    bad_role = runner.invoke(main, ["agents", "add", "bert", "--member", "default:boss:*", *data])
    assert bad_role.exit_code == 2 and "tenant:role:queues" in bad_role.output
    bad_tenant = runner.invoke(main, ["agents", "add", "bert", "--member", "leiden:agent:*", *data])
    assert bad_tenant.exit_code == 2 and "unknown tenant" in bad_tenant.output


def test_the_embedded_demo_creates_one_demo_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from idcontact.cli import _demo_agent

    settings = load_settings(
        DEMO_CONFIG, {"data_dir": tmp_path / "data", "public_url": "http://127.0.0.1:8765"}
    )
    _demo_agent(settings)
    first = capsys.readouterr().out
    assert "http://127.0.0.1:8765/agent/enrol/" in first  # where this server listens
    _demo_agent(settings)  # the next start: the account exists, no new link
    assert capsys.readouterr().out == ""


def test_irma_scheme_update_downloads_pinned_then_keeps_up_to_date(tmp_path: Path) -> None:
    from tests.irma.schemetools import CONFIGURATION, publish, scheme_server

    runner = CliRunner()
    target = tmp_path / "irma_configuration" / "irma-demo"
    pin = CONFIGURATION / "irma-demo" / "pk.pem"
    with scheme_server(tmp_path / "publisher") as served:
        unpinned = runner.invoke(main, ["irma", "scheme-update", served.url, str(target)])
        assert unpinned.exit_code == 1 and "pk.pem must be given" in unpinned.output
        assert not target.exists()
        first = runner.invoke(
            main, ["irma", "scheme-update", served.url, str(target), "--pk", str(pin)]
        )
        assert first.exit_code == 0, first.output
        assert first.output.startswith("updated: ") and (target / "index.sig").is_file()
        again = runner.invoke(main, ["irma", "scheme-update", served.url, str(target)])
        assert again.exit_code == 0 and again.output.startswith("up to date")
        (served.scheme / "RU/description.xml").write_text("<tampered/>")
        publish(served.scheme)
        (served.scheme / "index.sig").write_bytes(b"not the publisher's signature")
        before = (target / "RU/description.xml").read_bytes()
        refused = runner.invoke(main, ["irma", "scheme-update", served.url, str(target)])
        assert refused.exit_code == 1 and refused.output.startswith("error: ")
        assert (target / "RU/description.xml").read_bytes() == before
