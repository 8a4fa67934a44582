"""A disclosure against its request: proof status and disclosed attributes, as the reference
implementation reports them for its own fixed vector."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from idcontact.irma.request import DisclosureRequest, RequestFormatError
from idcontact.irma.schemes import Schemes
from idcontact.irma.verify import AttributeStatus, ProofStatus, verify_disclosure

DATA = Path(__file__).parent / "testdata"
VECTOR: dict[str, Any] = json.loads(
    (DATA / "vectors" / "disclosure-studentid-456.json").read_text()
)
SCHEMES = Schemes.load(DATA / "irma_configuration")
NOW = 1_800_000_000  # 2027: before the credential's expiry (2029-12-27)
EXPIRY = VECTOR["expected"]["metadata_attribute"]["expiry_unix"]
STUDENT_ID = "irma-demo.RU.studentCard.studentID"


def request(**changes: Any) -> DisclosureRequest:
    return DisclosureRequest.parse({**copy.deepcopy(VECTOR["request"]), **changes})


def disclosure(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(VECTOR["disclosure"]), **changes}


def check(req: DisclosureRequest | None = None, disc: Any = None, now: float = NOW) -> Any:
    return verify_disclosure(
        disclosure() if disc is None else disc, req or request(), SCHEMES, now=now
    )


def test_the_reference_disclosure_is_valid_with_its_attribute() -> None:
    result = check()
    assert result.status is ProofStatus.VALID
    assert [[(a.id, a.rawvalue, a.status) for a in c] for c in result.disclosed] == [
        [(STUDENT_ID, "456", AttributeStatus.PRESENT)]
    ]
    assert result.disclosed[0][0].issuancetime == 1582761600


def test_the_upstream_negative_cases() -> None:
    broken = disclosure()
    broken["proofs"][0]["a_responses"]["0"] = "ZA=="
    assert check(disc=broken).status is ProofStatus.INVALID
    wrong = request(disclose=[[["irma-demo.MijnOverheid.root.BSN"]]])
    assert check(wrong).status is ProofStatus.MISSING_ATTRIBUTES
    assert check(request(nonce="ZA==")).status is ProofStatus.INVALID
    assert check(request(context="Ag==")).status is ProofStatus.INVALID


def test_expiry_and_skip_expiry_check() -> None:
    assert check(now=EXPIRY - 1).status is ProofStatus.VALID
    assert check(now=EXPIRY + 1).status is ProofStatus.EXPIRED
    skipping = request(skipExpiryCheck=["irma-demo.RU.studentCard"])
    assert check(skipping, now=EXPIRY + 1).status is ProofStatus.VALID


@pytest.mark.parametrize(
    ("wanted", "status"),
    [
        ({"type": STUDENT_ID, "value": "456"}, ProofStatus.VALID),
        ({"type": STUDENT_ID, "value": "457"}, ProofStatus.MISSING_ATTRIBUTES),
        ({"type": STUDENT_ID, "value": None}, ProofStatus.MISSING_ATTRIBUTES),
        ({"type": STUDENT_ID, "notNull": True}, ProofStatus.VALID),
        ("irma-demo.RU.studentCard.level", ProofStatus.MISSING_ATTRIBUTES),
    ],
)
def test_value_constraints(wanted: Any, status: ProofStatus) -> None:
    assert check(request(disclose=[[[wanted]]])).status is status


def test_condiscon_cases_of_the_reference() -> None:
    for case in VECTOR["condiscon_cases"]:
        indices = [[{"cred": i["cred"], "attr": i["attr"]} for i in case["indices"]]]
        discon = case.get("discon", [case.get("con", [])])
        result = check(request(disclose=[discon]), disclosure(indices=indices))
        satisfied = result.status is ProofStatus.VALID
        assert satisfied == case["expected"]["satisfied"], case["name"]
        if satisfied:
            got = [(a.id, a.rawvalue) for a in result.disclosed[0]]
            assert got == [(a["id"], a["rawvalue"]) for a in case["expected"]["attributes"]]


def test_attributes_not_asked_for_are_extra_and_more_answers_than_asked_unmatched() -> None:
    nothing_asked = check(request(disclose=[]), disclosure(indices=[]))
    assert nothing_asked.status is ProofStatus.VALID
    assert [(a.id, a.status) for a in nothing_asked.disclosed[-1]] == [
        (STUDENT_ID, AttributeStatus.EXTRA)
    ]
    assert check(request(disclose=[]), disclosure()).status is ProofStatus.UNMATCHED_REQUEST
    assert check(disc=disclosure(indices=[])).status is ProofStatus.MISSING_ATTRIBUTES


@pytest.mark.parametrize(
    "indices",
    [
        [[{"cred": 1, "attr": 4}]],  # no such proof
        [[{"cred": 0, "attr": 3}]],  # not disclosed
        [[{"cred": 0, "attr": 1}]],  # the metadata is no attribute
        [[{"cred": 0, "attr": "4"}]],
        [[{"cred": True, "attr": 4}]],
        [{"cred": 0, "attr": 4}],
    ],
)
def test_indices_that_point_nowhere_are_invalid(indices: Any) -> None:
    assert check(disc=disclosure(indices=indices)).status is ProofStatus.INVALID


def test_an_unknown_key_counter_or_credential_type_is_invalid(tmp_path: Path) -> None:
    import shutil

    copy_dir = tmp_path / "irma_configuration"
    shutil.copytree(DATA / "irma_configuration", copy_dir)
    shutil.rmtree(copy_dir / "test")
    only_demo = Schemes.load(copy_dir)
    assert verify_disclosure(disclosure(), request(), only_demo, now=NOW).valid
    without_ru = Schemes([s for s in only_demo.schemes.values() if s.id != "irma-demo"] or [])
    assert not verify_disclosure(disclosure(), request(), without_ru, now=NOW).valid


def test_a_request_without_nonce_never_verifies() -> None:
    data = copy.deepcopy(VECTOR["request"])
    del data["nonce"]
    assert check(DisclosureRequest.parse(data)).status is ProofStatus.INVALID


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=25,
)


@settings(max_examples=200)
@given(json_values)
def test_any_json_as_disclosure_gives_a_status_never_an_exception(data: Any) -> None:
    assert verify_disclosure(data, request(), SCHEMES, now=NOW).status is ProofStatus.INVALID


@settings(max_examples=200)
@given(json_values)
def test_any_json_as_request_parses_or_is_a_format_error(data: Any) -> None:
    try:
        DisclosureRequest.parse(data)
    except RequestFormatError:
        pass


def test_legacy_and_current_requests_mean_the_same() -> None:
    cases = json.loads((DATA / "vectors" / "session-requests-legacy-and-v2.json").read_text())
    for case in cases["cases"]:
        if case["kind"] == "issuing":
            continue
        legacy = DisclosureRequest.parse(case["legacy"])
        current = DisclosureRequest.parse(case["current"])
        assert legacy == current, case["kind"]
        assert DisclosureRequest.parse(current.to_json()) == current


def test_a_request_for_non_revocation_proofs_is_refused_not_ignored() -> None:
    asked = {**VECTOR["request"], "revocation": ["irma-demo.MijnOverheid.root"]}
    with pytest.raises(RequestFormatError, match="revocation"):
        DisclosureRequest.parse(asked)
    # The disclosure itself may not carry one either: nobody asked for it.
    proofs = json.loads(json.dumps(VECTOR["disclosure"]))
    proofs["proofs"][0]["nonrev_proof"] = {"C_r": "AQ=="}
    request = DisclosureRequest.parse(VECTOR["request"])
    assert verify_disclosure(proofs, request, SCHEMES, now=NOW).status is ProofStatus.INVALID


def test_deep_or_large_requests_are_refused() -> None:
    with pytest.raises(RequestFormatError):
        DisclosureRequest.parse(
            {"@context": VECTOR["request"]["@context"], "disclose": [[[]]] * 21}
        )
    with pytest.raises(RequestFormatError):
        DisclosureRequest.parse(
            {"@context": VECTOR["request"]["@context"], "disclose": [[["a.b"]]]}
        )
    with pytest.raises(RequestFormatError):
        DisclosureRequest.parse({"@context": "https://example.com", "disclose": []})
