"""Tests for the configuration model and ``load_settings``: fast, one small TOML file each."""

from __future__ import annotations

from pathlib import Path

import pytest

from idcontact.cli import DEMO_CONFIG
from idcontact.errors import ConfigError
from idcontact.settings import Labels, Settings, load_settings
from idcontact.storage.db import POSTGRES_UNITS

CANARY_SECRET = "Canary-Internal-Secret-7Q4Z-0123456789abcdef"
CANARY_PEM_BODY = "CANARYSECRETPEMBODYMIIEvQIBADANBgkqhkiG9w0BAQEFAASC"
CANARY_SHORT = "ShortCanary-K9"

METHODS = """
[[auth_methods]]
tag = "weak"
name = "Weak"
plugin = "demo"
assurance = "low"

[[auth_methods]]
tag = "strong"
name = "Strong"
plugin = "demo"
assurance = "high"

[[auth_methods]]
tag = "mid"
name = "Mid"
start = "https://auth.example/mid/"
assurance = "substantial"

[[comm_methods]]
tag = "chat"
name = "Chat"
plugin = "demo"

[[comm_methods]]
tag = "phone"
name = "Phone"
start = "https://comm.example/phone"
"""


pytestmark = pytest.mark.usefixtures("clean_env")


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def purpose(
    allowed_auth: str = '["*"]',
    allowed_comm: str = '["*"]',
    extra: str = "",
    min_assurance: str = "low",
) -> str:
    return f"""
[[purposes]]
tag = "topic"
attributes = ["fullname", "bsn"]
allowed_auth = {allowed_auth}
allowed_comm = {allowed_comm}
min_assurance = "{min_assurance}"
{extra}
"""


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    return str(info.value)


# -- the demo and wildcards -------------------------------------------------------------


def test_demo_config_loads() -> None:
    settings = load_settings(DEMO_CONFIG)
    assert [p.tag for p in settings.purposes] == ["report_move", "waste_collection", "senior_pass"]
    assert [m.tag for m in settings.auth_methods] == ["demo", "yivi", "wallet"]
    assert [m.tag for m in settings.comm_methods] == ["demo", "chat", "form", "phone", "video"]
    # "*" is expanded at load time: no wildcard survives into the model. Yivi proves names,
    # the BSN and addresses in the demo, not a birth year; the demo EU wallet proves all.
    offered = {p.tag: p.allowed_auth for p in settings.purposes}
    assert offered == {
        "report_move": ("demo", "yivi", "wallet"),
        "waste_collection": ("demo", "yivi", "wallet"),
        "senior_pass": ("demo", "wallet"),
    }
    # The contact form only where the data identifies the resident (the answer is read by
    # identifying again as the same person).
    assert {p.tag: p.allowed_comm for p in settings.purposes} == {
        "report_move": ("demo", "chat", "form", "phone", "video"),
        "waste_collection": ("demo", "chat", "phone", "video"),
        "senior_pass": ("demo", "chat", "phone", "video"),
    }
    move = settings.purpose("report_move")
    assert move is not None
    assert move.min_assurance == "substantial"
    assert settings.purpose("nope") is None
    assert settings.auth_method("demo") is not None
    assert settings.comm_method("demo") is not None
    assert settings.resolved_keystore == "sqlite"
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")


def test_wildcard_expands_to_configured_methods(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, METHODS + purpose()))
    (p,) = settings.purposes
    assert p.allowed_auth == ("weak", "strong", "mid")
    assert p.allowed_comm == ("chat", "phone")


@pytest.mark.parametrize(
    ("minimum", "expected"),
    [
        ("low", ("weak", "strong", "mid")),
        ("substantial", ("strong", "mid")),
        ("high", ("strong",)),
    ],
)
def test_wildcard_only_includes_methods_meeting_min_assurance(
    tmp_path: Path, minimum: str, expected: tuple[str, ...]
) -> None:
    settings = load_settings(write(tmp_path, METHODS + purpose(min_assurance=minimum)))
    assert settings.purposes[0].allowed_auth == expected
    # Comm methods have no assurance: the wildcard keeps them all.
    assert settings.purposes[0].allowed_comm == ("chat", "phone")


def test_explicit_list_is_kept(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            METHODS
            + purpose(allowed_auth='["strong"]', allowed_comm='["phone"]', min_assurance="high"),
        )
    )
    assert settings.purposes[0].allowed_auth == ("strong",)
    assert settings.purposes[0].allowed_comm == ("phone",)


def test_start_url_trailing_slash_is_stripped(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, METHODS))
    mid = settings.auth_method("mid")
    assert mid is not None
    assert mid.start == "https://auth.example/mid"


# -- cross checks -----------------------------------------------------------------------


def test_explicit_method_below_min_assurance_is_refused(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, METHODS + purpose(allowed_auth='["strong", "weak"]', min_assurance="substantial")
    )
    assert "purposes[0].allowed_auth" in message
    assert "'weak'" in message
    assert "min_assurance" in message


def test_unknown_auth_method_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, METHODS + purpose(allowed_auth='["ghost"]'))
    assert "purposes[0].allowed_auth" in message
    assert "'ghost'" in message


def test_unknown_comm_method_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, METHODS + purpose(allowed_comm='["chat", "pigeon"]'))
    assert "purposes[0].allowed_comm" in message
    assert "'pigeon'" in message


def test_duplicate_auth_method_tag_is_refused(tmp_path: Path) -> None:
    text = METHODS + '\n[[auth_methods]]\ntag = "weak"\nname = "Again"\nplugin = "demo"\n'
    message = load_error(tmp_path, text)
    assert "auth_methods[3].tag" in message
    assert "duplicate" in message


def test_duplicate_comm_method_tag_is_refused(tmp_path: Path) -> None:
    text = METHODS + '\n[[comm_methods]]\ntag = "chat"\nname = "Again"\nplugin = "demo"\n'
    message = load_error(tmp_path, text)
    assert "comm_methods[2].tag" in message
    assert "duplicate" in message


def test_duplicate_purpose_tag_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, METHODS + purpose() + purpose())
    assert "purposes[1].tag" in message
    assert "duplicate" in message


def test_eligibility_on_attribute_outside_purpose_is_refused(tmp_path: Path) -> None:
    extra = 'eligibility = [{ attribute = "municipality", one_of = ["Arnhem"] }]'
    message = load_error(tmp_path, METHODS + purpose(extra=extra))
    assert "purposes[0].eligibility[0].attribute" in message
    assert "'municipality'" in message


def test_eligibility_on_purpose_attribute_is_accepted(tmp_path: Path) -> None:
    extra = 'eligibility = [{ attribute = "bsn", one_of = ["999990019"] }]'
    settings = load_settings(write(tmp_path, METHODS + purpose(extra=extra)))
    assert settings.purposes[0].eligibility[0].one_of == ("999990019",)


@pytest.mark.parametrize("tag", ["Bad", "1abc", "with-dash", ""])
def test_bad_method_tag_pattern_is_refused(tmp_path: Path, tag: str) -> None:
    message = load_error(
        tmp_path, f'[[auth_methods]]\ntag = "{tag}"\nname = "X"\nplugin = "demo"\n'
    )
    assert "auth_methods[0].tag" in message


def test_bad_purpose_tag_pattern_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[[purposes]]\ntag = "Move!"\nattributes = ["bsn"]\n')
    assert "purposes[0].tag" in message


def test_method_without_plugin_or_start_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[[comm_methods]]\ntag = "chat"\nname = "Chat"\n')
    assert "comm_methods[0]" in message
    assert "plugin" in message
    assert "start" in message


def test_non_http_start_url_is_refused(tmp_path: Path) -> None:
    text = '[[auth_methods]]\ntag = "x"\nname = "X"\nstart = "ftp://auth.example/x"\n'
    message = load_error(tmp_path, text)
    assert "auth_methods[0]" in message
    assert "http" in message


def test_non_http_public_url_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'public_url = "example.org"\n')
    assert "public_url" in message


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'publc_url = "https://example.org"\n')
    assert "publc_url" in message


def test_short_internal_secret_is_refused_without_echoing_it(tmp_path: Path) -> None:
    message = load_error(tmp_path, f'internal_secret = "{CANARY_SHORT}"\n')
    assert "internal_secret" in message
    assert "32" in message
    assert CANARY_SHORT not in message


def test_long_internal_secret_is_accepted_and_hidden(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, f'internal_secret = "{CANARY_SECRET}"\n'))
    assert settings.internal_secret is not None
    assert settings.internal_secret.get_secret_value() == CANARY_SECRET
    assert CANARY_SECRET not in repr(settings)
    assert CANARY_SECRET not in str(settings)


# -- secrets never appear in errors ---------------------------------------------------------


def test_errors_never_print_secret_or_key_material(tmp_path: Path) -> None:
    text = f"""
internal_secret = "{CANARY_SECRET}"
plugin_timeout = "not a number"

[keys]
signing = {{ type = "EC", key = "-----BEGIN PRIVATE KEY-----\\n{CANARY_PEM_BODY}\\n-----END PRIVATE KEY-----", key_file = "x" }}
"""  # noqa: E501
    message = load_error(tmp_path, text)
    assert "plugin_timeout" in message
    assert "keys.signing" in message
    assert "exactly one" in message
    assert CANARY_SECRET not in message
    assert CANARY_PEM_BODY not in message
    assert "PRIVATE KEY" not in message


def test_errors_for_bad_key_type_do_not_print_key(tmp_path: Path) -> None:
    text = f"""
[keys]
signing = {{ type = "DSA", key = "-----BEGIN PRIVATE KEY-----\\n{CANARY_PEM_BODY}\\n-----END PRIVATE KEY-----" }}
"""  # noqa: E501
    message = load_error(tmp_path, text)
    assert "keys.signing.type" in message
    assert CANARY_PEM_BODY not in message


def test_inline_key_is_hidden_in_repr(tmp_path: Path) -> None:
    text = f"""
[keys]
signing = {{ type = "EC", key = "-----BEGIN PRIVATE KEY-----\\n{CANARY_PEM_BODY}\\n-----END PRIVATE KEY-----" }}
"""  # noqa: E501
    settings = load_settings(write(tmp_path, text))
    assert CANARY_PEM_BODY not in repr(settings)


def test_short_secret_from_environment_is_not_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDCONTACT_INTERNAL_SECRET", CANARY_SHORT)
    message = load_error(tmp_path, "")
    assert "internal_secret" in message
    assert CANARY_SHORT not in message


# -- environment overrides ------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        'public_url = "https://file.example/"\nlog_level = "ERROR"\n[keys]\ngenerate = "EC"\n',
    )
    before = load_settings(path)
    assert before.public_url == "https://file.example"
    assert before.keys.generate == "EC"

    monkeypatch.setenv("IDCONTACT_PUBLIC_URL", "https://env.example/")
    monkeypatch.setenv("IDCONTACT_KEYS__GENERATE", "RSA")
    after = load_settings(path)
    assert after.public_url == "https://env.example"
    assert after.keys.generate == "RSA"
    # Settings the environment does not name still come from the file.
    assert after.log_level == "ERROR"


def test_nested_environment_override_keeps_file_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        '[keys]\ngenerate = "EC"\n'
        'signing = { type = "EC", key_file = "signing.key.pem", kid = "sig-1" }\n'
    )
    monkeypatch.setenv("IDCONTACT_KEYS__GENERATE", "RSA")
    settings = load_settings(write(tmp_path, text))
    assert settings.keys.generate == "RSA"
    assert settings.keys.signing is not None
    assert settings.keys.signing.kid == "sig-1"


def test_environment_applies_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDCONTACT_PUBLIC_URL", "https://only-env.example")
    assert load_settings().public_url == "https://only-env.example"


def test_invalid_environment_value_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDCONTACT_KEYS__GENERATE", "DSA")
    message = load_error(tmp_path, "")
    assert "keys.generate" in message


def test_database_units_default_to_the_storage_default_and_have_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().database_units == POSTGRES_UNITS
    monkeypatch.setenv("IDCONTACT_DATABASE_UNITS", "20")
    assert load_settings().database_units == 20
    monkeypatch.setenv("IDCONTACT_DATABASE_UNITS", "0")
    assert "database_units" in load_error(tmp_path, "")


# -- the file itself ------------------------------------------------------------------------


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'public_url = "https://x.example"\nthis is = not toml =\n', "broken.toml"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "broken.toml" in message
    assert "not valid TOML" in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "absent.toml" in str(info.value)
    assert "not found" in str(info.value)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""))
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.purposes == ()
    assert settings.keys.generate == "EC"


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'data_dir = "from-file"\n')
    settings = load_settings(path, {"data_dir": tmp_path / "flag"})
    assert settings.data_dir == tmp_path / "flag"


# -- labels ---------------------------------------------------------------------------------


def test_label_falls_back_to_dutch() -> None:
    only_nl = Labels(nl="Naam")
    assert only_nl.get("en") == "Naam"
    assert only_nl.get("nl") == "Naam"
    both = Labels(nl="Naam", en="Name")
    assert both.get("en") == "Name"
    assert both.get("nl") == "Naam"
    assert both.get("de") == "Naam"


def test_attribute_label_falls_back_to_tag(tmp_path: Path) -> None:
    text = (
        "[attribute_labels]\n"
        'fullname = { nl = "Naam", en = "Full name" }\n'
        'city = { nl = "Plaats" }\n'
    )
    settings = load_settings(write(tmp_path, text))
    assert settings.attribute_label("fullname", "en") == "Full name"
    assert settings.attribute_label("fullname", "nl") == "Naam"
    assert settings.attribute_label("city", "en") == "Plaats"
    assert settings.attribute_label("shoe_size", "en") == "shoe_size"
    assert settings.attribute_label("shoe_size", "nl") == "shoe_size"


def test_demo_labels() -> None:
    settings: Settings = load_settings(DEMO_CONFIG)
    move = settings.purpose("report_move")
    assert move is not None
    assert move.label is not None
    assert move.label.get("en") == "Report a move"
    assert move.label.get("nl") == "Verhuizing doorgeven"
    assert settings.attribute_label("bsn", "nl") == "Burgerservicenummer (BSN)"


def test_a_phone_number_is_digits_and_punctuation_only() -> None:
    assert load_settings(None, {"phone_number": "+31 26 377 7000"}).phone_number
    with pytest.raises(ConfigError, match="phone_number"):
        load_settings(None, {"phone_number": "<script>"})


def test_a_purpose_is_offered_only_the_methods_that_prove_all_its_attributes(
    tmp_path: Path,
) -> None:
    from tests.conftest import demo_settings

    methods = [
        {"tag": "demo", "name": "Demo", "plugin": "demo", "assurance": "substantial"},
        {
            "tag": "yivi",
            "name": "Yivi",
            "plugin": "yivi",
            "assurance": "substantial",
            "provides": ["fullname", "bsn", "postcode"],
        },
    ]
    settings = demo_settings(tmp_path, auth_methods=methods)
    offered = {p.tag: p.allowed_auth for p in settings.purposes}
    assert offered["report_move"] == ("demo", "yivi")
    assert offered["senior_pass"] == ("demo",)  # birthyear and municipality: not from yivi
    named = [
        {"tag": "x", "label": {"nl": "x"}, "attributes": ["birthyear"], "allowed_auth": ["yivi"]}
    ]
    with pytest.raises(ConfigError, match=r"purposes\[0\]\.allowed_auth: method 'yivi' cannot"):
        demo_settings(tmp_path, auth_methods=methods, purposes=named)
