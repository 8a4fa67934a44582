"""Idemix disclosure proofs against the fixed vector from the reference implementation
(irmago's test suite): it verifies, and every tampered variant fails."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st

from idcontact.irma.der import der_integer, hash_commit
from idcontact.irma.gabi import PARAMS, ProofD, ProofFormatError, b64int, int_b64, verify_proofs
from idcontact.irma.xml import public_key

DATA = Path(__file__).parent / "testdata"
VECTOR: dict[str, Any] = json.loads(
    (DATA / "vectors" / "disclosure-studentid-456.json").read_text()
)
KEY = public_key(DATA / "irma_configuration/irma-demo/RU/PublicKeys/2.xml", "irma-demo.RU")
CONTEXT = b64int(VECTOR["request"]["context"])
NONCE = b64int(VECTOR["request"]["nonce"])


def proof_json() -> dict[str, Any]:
    return copy.deepcopy(VECTOR["disclosure"]["proofs"][0])


def verifies(data: dict[str, Any], *, context: int = CONTEXT, nonce: int = NONCE) -> bool:
    return verify_proofs([ProofD.parse(data)], [KEY], context, nonce)


def test_the_reference_disclosure_verifies() -> None:
    assert KEY.params == PARAMS[1024] and KEY.params.le == 597
    assert NONCE == int(VECTOR["nonce_int"])
    assert verifies(proof_json())


def test_a_proof_survives_a_json_round_trip() -> None:
    proof = ProofD.parse(proof_json())
    assert ProofD.parse(json.loads(json.dumps(proof.to_json()))) == proof


def flip(value: str, bit: int) -> str:
    return int_b64(b64int(value) ^ (1 << bit))


@pytest.mark.parametrize("field", ["c", "A", "e_response", "v_response"])
@pytest.mark.parametrize("bit", [0, 7, 100])
def test_one_bit_in_any_number_breaks_it(field: str, bit: int) -> None:
    data = proof_json()
    data[field] = flip(data[field], bit)
    assert not verifies(data)


@pytest.mark.parametrize("index", ["0", "2", "3", "5"])
def test_one_bit_in_a_hidden_attribute_response_breaks_it(index: str) -> None:
    data = proof_json()
    data["a_responses"][index] = flip(data["a_responses"][index], 3)
    assert not verifies(data)


@pytest.mark.parametrize("index", ["1", "4"])
def test_a_changed_disclosed_value_or_metadata_breaks_it(index: str) -> None:
    data = proof_json()
    data["a_disclosed"][index] = flip(data["a_disclosed"][index], 1)
    assert not verifies(data)


def test_the_upstream_negative_cases() -> None:
    for case in VECTOR["negative_cases"]:
        if case["mutation"]["path"] == "disclosure.proofs[0].a_responses.0":
            data = proof_json()
            data["a_responses"]["0"] = case["mutation"]["value_base64"]
            assert not verifies(data)
        elif case["mutation"]["path"] == "request.nonce":
            assert not verifies(proof_json(), nonce=case["mutation"]["value_int"])
    assert not verifies(proof_json(), context=2)


def test_hiding_a_disclosed_attribute_or_dropping_one_breaks_it() -> None:
    data = proof_json()
    data["a_responses"]["4"] = data["a_disclosed"].pop("4")
    assert not verifies(data)
    data = proof_json()
    del data["a_responses"]["5"]
    assert not verifies(data)  # the indices no longer cover the credential


def test_responses_out_of_bounds_are_refused_before_any_arithmetic() -> None:
    data = proof_json()
    data["a_responses"]["2"] = int_b64(1 << (KEY.params.lm_commit + 1))
    assert not verifies(data)
    data = proof_json()
    data["e_response"] = int_b64(1 << (KEY.params.le_commit + 1))
    assert not verifies(data)


def test_a_proof_for_another_key_fails() -> None:
    other = public_key(
        DATA / "irma_configuration/irma-demo/MijnOverheid/PublicKeys/2.xml",
        "irma-demo.MijnOverheid",
    )
    assert other.n != KEY.n
    assert not verify_proofs([ProofD.parse(proof_json())], [other], CONTEXT, NONCE)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("c"),
        lambda d: d.update(c=12),
        lambda d: d.update(c="not base64!"),
        lambda d: d.update(a_responses=[]),
        lambda d: d["a_responses"].update({"x": "AQ=="}),
        lambda d: d["a_responses"].update({"-1": "AQ=="}),
        lambda d: d.update(nonrev_proof={}),
        lambda d: d.update(A="A" * 5000),
    ],
)
def test_malformed_proofs_are_format_errors(mutate: Any) -> None:
    data = proof_json()
    mutate(data)
    with pytest.raises(ProofFormatError):
        ProofD.parse(data)


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_parsing_anything_gives_a_proof_or_a_format_error(data: Any) -> None:
    try:
        ProofD.parse(data)
    except ProofFormatError:
        pass


@given(st.lists(st.integers(min_value=-(2**300), max_value=2**2100), max_size=6), st.booleans())
def test_der_integers_are_minimal_twos_complement(values: list[int], issig: bool) -> None:
    for v in values:
        encoded = der_integer(v)
        body = encoded[2:] if encoded[1] < 0x80 else encoded[2 + (encoded[1] & 0x7F) :]
        assert int.from_bytes(body, "big", signed=True) == v
        assert len(body) == 1 or not (
            (body[0] == 0 and body[1] < 0x80) or (body[0] == 0xFF and body[1] >= 0x80)
        )
    assert 0 <= hash_commit(values, issig=issig) < 2**256
    assert hash_commit(values, issig=issig) != hash_commit(values, issig=not issig)
