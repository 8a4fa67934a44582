"""Scheme loading: signatures, index hashes, and refusal of anything tampered."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from idcontact.irma.schemes import Schemes, load_scheme
from idcontact.irma.xml import SchemeError
from tests.irma.schemetools import CONFIGURATION


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "irma_configuration"
    shutil.copytree(CONFIGURATION, target)
    return target


def test_the_test_schemes_load_with_their_types_and_keys() -> None:
    schemes = Schemes.load(CONFIGURATION)
    assert set(schemes.schemes) == {"irma-demo", "test"}
    card = schemes.credential_type("irma-demo.RU.studentCard")
    assert card is not None
    assert [a.id for a in card.attributes] == [
        "university",
        "studentCardNumber",
        "studentID",
        "level",
    ]
    assert card.index_of("studentID") == 4 and not card.singleton
    root = schemes.credential_type("irma-demo.MijnOverheid.root")
    assert root is not None and root.singleton and root.attributes[-1].revocation
    key = schemes.public_key("irma-demo.RU", 2)
    assert key is not None and key.n.bit_length() == 1024
    assert schemes.public_key("irma-demo.RU", 9) is None
    assert schemes.keyshare_server("test") == "test"  # a distributed scheme
    assert schemes.keyshare_server("irma-demo") == "."
    from idcontact.irma.attributes import credential_id

    assert schemes.credential_by_id(credential_id("irma-demo.RU.studentCard")) == (
        "irma-demo.RU.studentCard"
    )


def test_a_changed_file_is_refused(copy: Path) -> None:
    key = copy / "irma-demo" / "RU" / "PublicKeys" / "2.xml"
    key.write_text(key.read_text().replace("<Counter>2</Counter>", "<Counter>2</Counter> "))
    with pytest.raises(
        SchemeError, match=re.escape("RU/PublicKeys/2.xml does not match the signed index")
    ):
        load_scheme(copy / "irma-demo")


def test_a_changed_index_is_refused(copy: Path) -> None:
    index = copy / "irma-demo" / "index"
    index.write_bytes(index.read_bytes().replace(b"a", b"b", 1))
    with pytest.raises(SchemeError, match=re.escape("index.sig does not match")):
        load_scheme(copy / "irma-demo")


def test_a_key_from_another_scheme_does_not_sign(copy: Path) -> None:
    shutil.copy(copy / "test" / "pk.pem", copy / "irma-demo" / "pk.pem")
    with pytest.raises(SchemeError, match=re.escape("index.sig does not match")):
        load_scheme(copy / "irma-demo")


def test_a_file_outside_the_index_is_refused(copy: Path) -> None:
    extra = copy / "irma-demo" / "RU" / "PublicKeys" / "7.xml"
    shutil.copy(copy / "irma-demo" / "RU" / "PublicKeys" / "2.xml", extra)
    with pytest.raises(SchemeError, match=re.escape("not in the signed index")):
        load_scheme(copy / "irma-demo")


def test_missing_signature_files_are_clear_errors(copy: Path) -> None:
    (copy / "irma-demo" / "index.sig").unlink()
    with pytest.raises(SchemeError, match=re.escape("index, index.sig or pk.pem missing")):
        load_scheme(copy / "irma-demo")


def test_xml_with_entities_is_refused(copy: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><x>&b;</x>'
    )
    from idcontact.irma.xml import read_xml

    with pytest.raises(SchemeError, match=re.escape("not valid XML")):
        read_xml(bomb)
