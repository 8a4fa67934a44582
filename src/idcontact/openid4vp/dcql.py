"""The DCQL query (OpenID4VP 1.0 §6) for a purpose's attribute tags, reading the answer back
into our tags, and checking a query against what a relying-party certificate authorises.

A tag maps to alternatives (:class:`Source`): one credential type (``vct``) and the claim
paths whose values make the attribute (joined by spaces, as first names + family name). Tags
with a single alternative are asked together, one credential query per ``vct``; a tag with
several alternatives gets a credential set whose options are those alternatives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography import x509

from idcontact.openid4vp.errors import (
    ClaimMissingError,
    CredentialTypeError,
    MalformedPresentationError,
)

FORMAT = "dc+sd-jwt"
REGISTRATION_OID = x509.ObjectIdentifier("2.1.123.1")
"""The X.509 extension that carries the relying party's registration (JSON), as the Yivi
wallet reads it: ``{"rp": {"authorized": [{"credential": vct, "attributes": [claim…]}]}}``."""


@dataclass(frozen=True)
class Source:
    vct: str
    claims: tuple[tuple[str | int, ...], ...]
    take: Literal["value", "year"] = "value"
    """``year``: the first four characters of the value (an ISO date → its year)."""


@dataclass(frozen=True)
class Plan:
    """A query and how to read its answer: per tag, its options (credential query id, source)."""

    query: dict[str, Any]
    options: dict[str, list[tuple[str, Source]]] = field(default_factory=dict)

    @property
    def query_vcts(self) -> dict[str, list[str]]:
        return {c["id"]: list(c["meta"]["vct_values"]) for c in self.query["credentials"]}


def _claims(paths: Iterable[tuple[str | int, ...]]) -> list[dict[str, Any]]:
    unique: list[tuple[str | int, ...]] = []
    for path in paths:
        if path not in unique:
            unique.append(path)
    return [{"path": list(p)} for p in unique]


def build(tags: Sequence[str], mapping: Mapping[str, Sequence[Source]]) -> Plan:
    """The DCQL query for ``tags`` (each must be in ``mapping``)."""
    credentials: list[dict[str, Any]] = []
    sets: list[dict[str, Any]] = []
    options: dict[str, list[tuple[str, Source]]] = {}
    grouped: dict[str, list[tuple[str | int, ...]]] = {}
    single: dict[str, str] = {}
    for tag in tags:
        sources = mapping[tag]
        if len(sources) == 1:
            grouped.setdefault(sources[0].vct, []).extend(sources[0].claims)
            single[tag] = sources[0].vct
    ids = {vct: f"c{i}" for i, vct in enumerate(grouped)}
    for vct, paths in grouped.items():
        credentials.append(
            {
                "id": ids[vct],
                "format": FORMAT,
                "meta": {"vct_values": [vct]},
                "claims": _claims(paths),
            }
        )
    for tag, vct in single.items():
        options[tag] = [(ids[vct], mapping[tag][0])]
    for tag in tags:
        sources = mapping[tag]
        if len(sources) == 1:
            continue
        options[tag] = []
        for i, source in enumerate(sources):
            query_id = f"{tag}_{i}"
            credentials.append(
                {
                    "id": query_id,
                    "format": FORMAT,
                    "meta": {"vct_values": [source.vct]},
                    "claims": _claims(source.claims),
                }
            )
            options[tag].append((query_id, source))
        sets.append({"options": [[q] for q, _ in options[tag]], "required": True})
    query: dict[str, Any] = {"credentials": credentials}
    if sets:
        query["credential_sets"] = [{"options": [[i]], "required": True} for i in ids.values()]
        query["credential_sets"] += sets
    return Plan(query, options)


def _value(claims: Mapping[str, Any], path: tuple[str | int, ...]) -> Any:
    node: Any = claims
    for step in path:
        if isinstance(step, str) and isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(step, int) and isinstance(node, list) and 0 <= step < len(node):
            node = node[step]
        else:
            return None
    return node


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def read(
    plan: Plan, tags: Sequence[str], presented: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, str], set[str]]:
    """Each tag's value from the verified claims per credential query id; returns the values
    and the query ids used. Claims that were not asked for are never read."""
    values: dict[str, str] = {}
    used: set[str] = set()
    for tag in tags:
        for query_id, source in plan.options[tag]:
            claims = presented.get(query_id)
            if claims is None:
                continue
            parts = [_text(_value(claims, path)) for path in source.claims]
            if any(p is None or p == "" for p in parts):
                raise ClaimMissingError(f"Not disclosed: {tag}")
            text = " ".join(p for p in parts if p is not None)
            values[tag] = text[:4] if source.take == "year" else text
            used.add(query_id)
            break
        else:
            raise ClaimMissingError(f"Not disclosed: {tag}")
    return values, used


def parse_vp_token(raw: object, plan: Plan) -> dict[str, str]:
    """``vp_token``: a JSON object of query id → one presentation (a list of one, in 1.0)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise MalformedPresentationError("vp_token is not JSON") from None
    if not isinstance(raw, dict) or not raw:
        raise MalformedPresentationError("vp_token must be a JSON object")
    known = plan.query_vcts
    result: dict[str, str] = {}
    for query_id, value in raw.items():
        if query_id not in known:
            raise MalformedPresentationError("vp_token answers a query we did not ask")
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str):
            raise MalformedPresentationError("one presentation per credential query")
        result[query_id] = value
    return result


def check_vct(plan: Plan, query_id: str, vct: str) -> None:
    if vct not in plan.query_vcts[query_id]:
        raise CredentialTypeError("The credential is not of the type asked for")


# -- what a relying-party certificate authorises ---------------------------------------------


def registration(cert: x509.Certificate) -> dict[str, Any] | None:
    """The registration JSON of a relying-party certificate (extension 2.1.123.1)."""
    try:
        ext = cert.extensions.get_extension_for_oid(REGISTRATION_OID)
    except x509.ExtensionNotFound:
        return None
    raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    try:
        data = json.loads(_der_payload(raw))
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _der_payload(raw: bytes) -> bytes:
    """The JSON, whether the extension holds it bare or as a DER UTF8String/OCTET STRING."""
    if raw[:1] in (b"\x0c", b"\x04") and len(raw) > 2:
        length = raw[1]
        start = 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(raw[2 : 2 + count], "big")
            start = 2 + count
        return raw[start : start + length]
    return raw


def unauthorised(query: Mapping[str, Any], authorised: object) -> list[str]:
    """What ``query`` asks beyond ``rp.authorized`` of a registration: one line per claim."""
    entries = authorised if isinstance(authorised, list) else []
    allowed: dict[str, set[str]] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("credential"), str):
            names = entry.get("attributes")
            allowed.setdefault(entry["credential"], set()).update(
                str(n) for n in (names if isinstance(names, list) else [])
            )
    problems = []
    for credential in query.get("credentials", []):
        for vct in credential["meta"]["vct_values"]:
            for claim in credential.get("claims", []):
                name = ".".join(str(p) for p in claim["path"])
                if vct not in allowed:
                    problems.append(f"{vct}: the certificate authorises no claims of it")
                    break
                if name not in allowed[vct]:
                    problems.append(f"{vct}: claim {name} is not authorised")
    return problems
