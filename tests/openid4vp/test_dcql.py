"""DCQL queries from our attribute mapping, reading answers back, and what ``check-config``
reports against the relying-party certificate's registration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from idcontact.cli import main
from idcontact.openid4vp import dcql, errors
from idcontact.plugins.auth.openid4vp import OpenID4VPConfig, check_authorisation
from tests.openid4vp.support import (
    AUTHORISED,
    MAPPING,
    PID,
    make_pki,
    plugin_config,
    wallet_settings,
)

SOURCES = OpenID4VPConfig.model_validate(
    {"attributes": MAPPING, "development": True, "client_id_prefix": "decentralized_identifier"}
).mapping()


def test_single_sources_share_one_query_and_alternatives_become_sets() -> None:
    plan = dcql.build(["fullname", "postcode", "birthyear"], SOURCES)
    ids = [c["id"] for c in plan.query["credentials"]]
    assert ids == ["c0", "postcode_0", "postcode_1"]
    assert plan.query["credentials"][0]["claims"] == [
        {"path": ["given_name"]},
        {"path": ["family_name"]},
        {"path": ["birthdate"]},
    ]
    assert plan.query["credential_sets"] == [
        {"options": [["c0"]], "required": True},
        {"options": [["postcode_0"], ["postcode_1"]], "required": True},
    ]
    values, used = dcql.read(
        plan,
        ["fullname", "postcode", "birthyear"],
        {
            "c0": {
                "given_name": "Demi",
                "family_name": "de Demo",
                "birthdate": "1980-04-01",
                "bsn": "not asked",
            },
            "postcode_1": {"postal_code": "6811AA"},
        },
    )
    assert values == {"fullname": "Demi de Demo", "postcode": "6811AA", "birthyear": "1980"}
    assert used == {"c0", "postcode_1"}


def test_a_missing_claim_and_an_unasked_query_are_refused() -> None:
    plan = dcql.build(["fullname"], SOURCES)
    with pytest.raises(errors.ClaimMissingError, match="fullname"):
        dcql.read(plan, ["fullname"], {"c0": {"given_name": "Demi"}})
    with pytest.raises(errors.ClaimMissingError):
        dcql.read(plan, ["fullname"], {})
    with pytest.raises(errors.MalformedPresentationError):
        dcql.parse_vp_token(json.dumps({"c1": ["x"]}), plan)
    with pytest.raises(errors.MalformedPresentationError):
        dcql.parse_vp_token(json.dumps({"c0": ["x", "y"]}), plan)  # multiple: not asked
    assert dcql.parse_vp_token({"c0": ["x~"]}, plan) == {"c0": "x~"}


def test_unauthorised_names_each_claim_beyond_the_certificate() -> None:
    plan = dcql.build(["fullname", "bsn"], SOURCES)
    narrow = [{"credential": PID, "attributes": ["given_name", "family_name"]}]
    assert dcql.unauthorised(plan.query, narrow) == [f"{PID}: claim bsn is not authorised"]
    assert dcql.unauthorised(plan.query, AUTHORISED["rp"]["authorized"]) == []
    assert dcql.unauthorised(plan.query, None) == [
        f"{PID}: the certificate authorises no claims of it"
    ]


def _toml(settings_file: Path, config_dir: Path) -> None:
    settings_file.write_text(
        f"""
public_url = "https://testserver"
data_dir = "{config_dir / "data"}"
[[auth_methods]]
tag = "wallet"
name = "EU-wallet"
plugin = "openid4vp"
provides = ["fullname", "bsn"]
shim_tel_url = true
[plugins.auth.wallet]
request_key = {{ type = "EC", key_file = "{config_dir / "pki" / "rp.key.pem"}" }}
certificate_chain = "{config_dir / "pki" / "rp.pem"}"
trust_anchors = ["{config_dir / "pki" / "anchors.pem"}"]
attributes.fullname = [{{ vct = "{PID}", claims = ["given_name", "family_name"] }}]
attributes.bsn = [{{ vct = "{PID}", claims = ["bsn"] }}]
[[comm_methods]]
tag = "demo"
name = "Demo"
plugin = "demo"
[[purposes]]
tag = "report_move"
attributes = ["fullname", "bsn"]
allowed_auth = ["*"]
allowed_comm = ["*"]
"""
    )


def test_check_config_reports_a_purpose_beyond_the_certificate(tmp_path: Path) -> None:
    make_pki(
        tmp_path,
        registration={
            "rp": {"authorized": [{"credential": PID, "attributes": ["given_name", "family_name"]}]}
        },
    )
    _toml(tmp_path / "idcontact.toml", tmp_path)
    refused = CliRunner().invoke(main, ["check-config", str(tmp_path / "idcontact.toml")])
    assert refused.exit_code == 2
    assert f"purposes (report_move) via wallet: {PID}: claim bsn is not authorised" in (
        refused.output
    )


def test_check_config_passes_what_the_certificate_authorises(tmp_path: Path) -> None:
    make_pki(tmp_path)
    _toml(tmp_path / "idcontact.toml", tmp_path)
    passed = CliRunner().invoke(main, ["check-config", str(tmp_path / "idcontact.toml")])
    assert passed.exit_code == 0, passed.output
    assert passed.output.startswith("OK:")


def test_a_certificate_without_registration_is_reported(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, registered=False)
    settings = wallet_settings(tmp_path, plugin_config(pki))
    assert check_authorisation(settings, settings.default_tenant, "eudi") == [
        "plugins.auth.eudi: the certificate carries no registration (extension 2.1.123.1)"
    ]
    # An empty registration authorises nothing: every asked claim is named.
    pki = make_pki(tmp_path / "b", registration={"rp": {"authorized": []}})
    settings = wallet_settings(tmp_path / "b", plugin_config(pki))
    problems = check_authorisation(settings, settings.default_tenant, "eudi")
    assert problems and all("authorises no claims" in p for p in problems)
