"""Why a presentation was refused: each a problem+json type of its own, with a fixed title.

Details are fixed sentences or claim names, never values or tokens.
"""

from __future__ import annotations

from idcontact.errors import BadRequestError, PayloadTooLargeError


class PresentationError(BadRequestError):
    slug = "presentation-invalid"
    title = "The presentation is not valid"


class MalformedPresentationError(PresentationError):
    slug = "presentation-malformed"
    title = "The presentation is malformed"


class PresentationTooLargeError(PayloadTooLargeError):
    slug = "presentation-too-large"
    title = "The presentation is too large"


class WrongNonceError(PresentationError):
    slug = "wrong-nonce"
    title = "The presentation is not for this request (nonce)"


class WrongAudienceError(PresentationError):
    slug = "wrong-audience"
    title = "The presentation is not for this verifier (aud)"


class StalePresentationError(PresentationError):
    slug = "stale-presentation"
    title = "The presentation was not made just now (iat)"


class KeyBindingError(PresentationError):
    slug = "key-binding-invalid"
    title = "The key binding of the presentation is not valid"


class DisclosureError(PresentationError):
    slug = "disclosure-invalid"
    title = "A disclosure does not belong to the credential"


class UntrustedIssuerError(PresentationError):
    slug = "untrusted-issuer"
    title = "The credential's issuer is not trusted"


class IssuerSignatureError(PresentationError):
    slug = "issuer-signature-invalid"
    title = "The credential's signature is not valid"


class CredentialExpiredError(PresentationError):
    slug = "credential-expired"
    title = "The credential has expired or is not valid yet"


class CredentialTypeError(PresentationError):
    slug = "credential-type-not-allowed"
    title = "This type of credential is not accepted"


class CredentialRevokedError(PresentationError):
    slug = "credential-revoked"
    title = "The credential has been revoked or suspended"


class ClaimMissingError(PresentationError):
    slug = "claim-missing"
    title = "A requested claim was not disclosed"


class StateUsedError(PresentationError):
    slug = "state-used"
    title = "This request has been answered already"


class UnknownTransactionError(PresentationError):
    slug = "unknown-transaction"
    title = "This request is unknown or has expired"


class ResponseDecryptionError(PresentationError):
    slug = "response-decryption-failed"
    title = "The encrypted response could not be opened"
