"""IRMA session requests: what a verifier asks, as con-dis-con.

``disclose`` is a list (all must hold) of lists (one of them must hold) of lists (all of
these attributes) of attribute requests. An empty inner list makes a disjunction optional.
Both the current format (``@context …/disclosure/v2``) and the legacy one (``type`` +
``content``) are read; :meth:`DisclosureRequest.to_json` writes the current one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from idcontact.irma.gabi import ProofFormatError, b64int, int_b64

DISCLOSURE_CONTEXT = "https://irma.app/ld/request/disclosure/v2"
SIGNATURE_CONTEXT = "https://irma.app/ld/request/signature/v2"
ATTRIBUTE_ID = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+){3}$")
MAX_CONJUNCTIONS = 20
MAX_ALTERNATIVES = 20
MAX_ATTRIBUTES = 30


class RequestFormatError(ValueError):
    """A session request that is not well formed."""


@dataclass(frozen=True)
class AttributeRequest:
    type: str
    """``scheme.issuer.credential.attribute``."""
    value: str | None = None
    has_value: bool = False
    """Whether a value is required (``value`` may then be ``None``: the attribute must be
    absent)."""
    not_null: bool = False

    @property
    def credential_type(self) -> str:
        return self.type.rsplit(".", 1)[0]

    def satisfied_by(self, value: str | None) -> bool:
        if self.has_value:
            return value == self.value
        return value is not None or not self.not_null

    def to_json(self) -> str | dict[str, Any]:
        if not self.has_value and not self.not_null:
            return self.type
        out: dict[str, Any] = {"type": self.type}
        if self.has_value:
            out["value"] = self.value
        if self.not_null:
            out["notNull"] = True
        return out

    @classmethod
    def parse(cls, data: object) -> AttributeRequest:
        if isinstance(data, str):
            return cls(_attribute_id(data))
        if not isinstance(data, dict) or not set(data) <= {"type", "value", "notNull"}:
            raise RequestFormatError("an attribute request is an id or {type, value, notNull}")
        value = data.get("value")
        if value is not None and not isinstance(value, str):
            raise RequestFormatError("an attribute request's value must be a string or null")
        not_null = data.get("notNull", False)
        if not isinstance(not_null, bool):
            raise RequestFormatError("notNull must be true or false")
        return cls(_attribute_id(data.get("type")), value, "value" in data, not_null)


Conjunction = tuple[AttributeRequest, ...]
Condiscon = tuple[tuple[Conjunction, ...], ...]


@dataclass(frozen=True)
class DisclosureRequest:
    disclose: Condiscon
    labels: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    kind: Literal["disclosing", "signing"] = "disclosing"
    message: str | None = None
    nonce: int | None = None
    context: int = 1
    client_return_url: str | None = None
    augment_return_url: bool = False
    skip_expiry_check: frozenset[str] = frozenset()

    @property
    def credential_types(self) -> set[str]:
        return {a.credential_type for d in self.disclose for c in d for a in c}

    @classmethod
    def parse(cls, data: object) -> DisclosureRequest:
        if not isinstance(data, dict):
            raise RequestFormatError("a session request must be a JSON object")
        if "@context" in data:
            return cls._current(data)
        if data.get("type") in ("disclosing", "signing"):
            return cls._legacy(data)
        raise RequestFormatError("not a disclosure or signature request")

    @classmethod
    def _current(cls, data: dict[str, Any]) -> DisclosureRequest:
        context = data["@context"]
        if context not in (DISCLOSURE_CONTEXT, SIGNATURE_CONTEXT):
            raise RequestFormatError("unknown @context")
        kind: Literal["disclosing", "signing"] = (
            "signing" if context == SIGNATURE_CONTEXT else "disclosing"
        )
        disclose = data.get("disclose")
        if not isinstance(disclose, list) or len(disclose) > MAX_CONJUNCTIONS:
            raise RequestFormatError(f"disclose must be a list of at most {MAX_CONJUNCTIONS}")
        parsed = []
        for discon in disclose:
            if not isinstance(discon, list) or not discon or len(discon) > MAX_ALTERNATIVES:
                raise RequestFormatError("each disjunction must be a non-empty list")
            cons = []
            for con in discon:
                if not isinstance(con, list) or len(con) > MAX_ATTRIBUTES:
                    raise RequestFormatError("each conjunction must be a list of attributes")
                cons.append(tuple(AttributeRequest.parse(a) for a in con))
            parsed.append(tuple(cons))
        if data.get("revocation"):
            # Proofs of non-revocation are not implemented: refusing the request is honest,
            # ignoring the field would accept revoked credentials the requestor wanted refused.
            raise RequestFormatError("non-revocation proofs (revocation) are not supported")
        skip = data.get("skipExpiryCheck") or []
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise RequestFormatError("skipExpiryCheck must be a list of credential types")
        message = data.get("message")
        if kind == "signing" and not isinstance(message, str):
            raise RequestFormatError("a signature request needs a message")
        return cls(
            disclose=tuple(parsed),
            labels=_labels(data.get("labels")),
            kind=kind,
            message=message if kind == "signing" else None,
            nonce=_b64int(data["nonce"]) if "nonce" in data else None,
            context=_b64int(data["context"]) if "context" in data else 1,
            client_return_url=_optional_str(data.get("clientReturnUrl"), "clientReturnUrl"),
            augment_return_url=bool(data.get("augmentReturnUrl", False)),
            skip_expiry_check=frozenset(skip),
        )

    @classmethod
    def _legacy(cls, data: dict[str, Any]) -> DisclosureRequest:
        content = data.get("content")
        if not isinstance(content, list) or len(content) > MAX_CONJUNCTIONS:
            raise RequestFormatError("content must be a list")
        disclose = []
        labels: dict[int, dict[str, str]] = {}
        for i, item in enumerate(content):
            if not isinstance(item, dict):
                raise RequestFormatError("each content item must be an object")
            attributes = item.get("attributes")
            if isinstance(attributes, list):  # alternatives, one attribute each
                disclose.append(tuple((AttributeRequest(_attribute_id(a)),) for a in attributes))
            elif isinstance(attributes, dict):
                disclose.append(
                    tuple(
                        (AttributeRequest(_attribute_id(k), _optional_str(v, "value"), True),)
                        for k, v in attributes.items()
                    )
                )
            else:
                raise RequestFormatError("attributes must be a list or an object")
            if isinstance(item.get("label"), str):
                labels[i] = {"en": item["label"], "nl": item["label"]}
        kind: Literal["disclosing", "signing"] = (
            "signing" if data["type"] == "signing" else "disclosing"
        )
        return cls(
            disclose=tuple(disclose),
            labels=labels,
            kind=kind,
            message=data.get("message") if kind == "signing" else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "@context": SIGNATURE_CONTEXT if self.kind == "signing" else DISCLOSURE_CONTEXT,
            "disclose": [[[a.to_json() for a in con] for con in d] for d in self.disclose],
        }
        if self.labels:
            out["labels"] = {str(i): dict(v) for i, v in sorted(self.labels.items())}
        if self.message is not None:
            out["message"] = self.message
        if self.nonce is not None:
            out["nonce"] = int_b64(self.nonce)
            out["context"] = int_b64(self.context)
        if self.client_return_url is not None:
            out["clientReturnUrl"] = self.client_return_url
            out["augmentReturnUrl"] = self.augment_return_url
        if self.skip_expiry_check:
            out["skipExpiryCheck"] = sorted(self.skip_expiry_check)
        return out


def _attribute_id(value: object) -> str:
    if not isinstance(value, str) or len(value) > 200 or not ATTRIBUTE_ID.match(value):
        raise RequestFormatError("an attribute id is scheme.issuer.credential.attribute")
    return value


def _labels(data: object) -> dict[int, dict[str, str]]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RequestFormatError("labels must be an object")
    out: dict[int, dict[str, str]] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key.isdigit() or len(key) > 3:
            raise RequestFormatError("label keys are disjunction numbers")
        if value is None:
            continue
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise RequestFormatError("a label is a translated string")
        out[int(key)] = dict(value)
    return out


def _optional_str(value: object, name: str) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 2048):
        raise RequestFormatError(f"{name} must be a string")
    return value


def _b64int(value: object) -> int:
    if isinstance(value, str) and len(value) <= 200:
        try:
            return b64int(value)
        except ProofFormatError:
            pass
    raise RequestFormatError("nonce and context are base64 integers")
