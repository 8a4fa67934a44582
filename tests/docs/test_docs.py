"""Docs that cannot drift: every setting and every CLI command is documented."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from idcontact.cli import main
from idcontact.digid.brp import BrpAttribute
from idcontact.forms import FormConfig
from idcontact.keys import KeyConfig
from idcontact.mail import SmtpConfig
from idcontact.plugins.auth.digid import (
    BrpSettings,
    DigidConfig,
    OidcSettings,
    SamlSettings,
    TlsClient,
)
from idcontact.plugins.auth.openid4vp import OpenID4VPConfig, SourceConfig
from idcontact.settings import (
    AgentSso,
    AuthMethod,
    CommMethod,
    Design,
    EligibilityRule,
    Irma,
    IrmaRequestor,
    Keys,
    Klantinteracties,
    Labels,
    LegalBasis,
    Ops,
    Phone,
    Purpose,
    Queue,
    RecordLink,
    Settings,
    Sms,
    SsoGroup,
    Telephony,
    Tenant,
    Transcripts,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text()
README = (ROOT / "README.md").read_text()

MODELS: list[type[BaseModel]] = [
    Settings,
    Tenant,
    Design,
    AuthMethod,
    CommMethod,
    Purpose,
    Keys,
    KeyConfig,
    LegalBasis,
    EligibilityRule,
    Labels,
    Queue,
    Phone,
    RecordLink,
    Transcripts,
    Klantinteracties,
    Sms,
    Telephony,
    Ops,
    Irma,
    IrmaRequestor,
    AgentSso,
    SsoGroup,
    FormConfig,
    SmtpConfig,
    DigidConfig,
    SamlSettings,
    OidcSettings,
    BrpSettings,
    BrpAttribute,
    TlsClient,
    OpenID4VPConfig,
    SourceConfig,
]


@pytest.mark.parametrize(
    "model_field",
    [(m.__name__, f) for m in MODELS for f in m.model_fields],
    ids=lambda mf: f"{mf[0]}.{mf[1]}",
)
def test_every_setting_is_in_the_configuration_guide(model_field: tuple[str, str]) -> None:
    _, field = model_field
    assert f"`{field}`" in CONFIG_DOC


def commands(group: click.Group, prefix: str = "") -> list[str]:
    found = []
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found += commands(command, full + " ")
        else:
            found.append(full)
    return found


@pytest.mark.parametrize("command", commands(main))
def test_every_cli_command_is_in_the_readme(command: str) -> None:
    assert f"idcontact {command}" in README
