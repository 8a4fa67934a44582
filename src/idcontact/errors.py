"""The one error tree of ID Contact.

Every failure a client can cause or see is a subclass of :class:`IdContactError`. Each class
carries the HTTP ``status``, a stable ``slug`` (the problem+json ``type`` ends in it) and a
``title`` that is safe to show: it never contains input values, tokens or secrets. The web
layer maps the tree once (``idcontact.web.problem``); everything else only raises.

Tree::

    IdContactError
    ├── ConfigError                     invalid configuration (names the setting, never its value)
    ├── BadRequestError                 400
    │   ├── UnknownPurposeError
    │   ├── MethodNotAllowedForPurposeError
    │   ├── InvalidStartRequestError
    │   └── TokenError
    │       ├── MalformedTokenError
    │       ├── TokenDecryptionError
    │       ├── TokenSignatureError
    │       ├── TokenExpiredError
    │       ├── TokenReplayError
    │       └── UnknownKeyError
    ├── NotFoundError                   404
    ├── SlotUsedError                   409 an attr_url slot that was filled already
    ├── PayloadTooLargeError            413
    ├── UnsupportedMediaTypeError       415
    ├── PluginError                     502 a plugin answered wrongly or not in time
    │   └── PluginTimeoutError          504-like, reported as 502
    └── VaultError                      500 stored attributes could not be opened
"""

from __future__ import annotations

from typing import ClassVar


class IdContactError(Exception):
    """Root of every error we raise on purpose."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None) -> None:
        # ``detail`` must be safe to show a client: a fixed sentence or names, never values.
        super().__init__(detail or self.title)
        self.detail = detail or self.title

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r})"


class ConfigError(IdContactError):
    slug = "config-error"
    title = "Invalid configuration"


class BadRequestError(IdContactError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class UnknownPurposeError(BadRequestError):
    slug = "unknown-purpose"
    title = "Unknown purpose"


class MethodNotAllowedForPurposeError(BadRequestError):
    slug = "method-not-allowed"
    title = "This method is not offered for this purpose"


class InvalidStartRequestError(BadRequestError):
    slug = "invalid-start-request"
    title = "The start request is not valid"


class TokenError(BadRequestError):
    slug = "invalid-token"
    title = "The token is not valid"


class MalformedTokenError(TokenError):
    slug = "malformed-token"
    title = "The token is malformed"


class TokenDecryptionError(TokenError):
    slug = "token-decryption-failed"
    title = "The token could not be decrypted with our keys"


class TokenSignatureError(TokenError):
    slug = "token-signature-invalid"
    title = "The token signature is not valid"


class TokenExpiredError(TokenError):
    slug = "token-expired"
    title = "The token has expired"


class TokenReplayError(TokenError):
    slug = "token-replayed"
    title = "This token has been used already"


class UnknownKeyError(TokenError):
    slug = "unknown-key"
    title = "The token is signed by a key we do not trust"


class NotFoundError(IdContactError):
    status = 404
    slug = "not-found"
    title = "Not found"


class SlotUsedError(IdContactError):
    status = 409
    slug = "slot-used"
    title = "Attributes were delivered to this slot already"


class PayloadTooLargeError(IdContactError):
    status = 413
    slug = "payload-too-large"
    title = "The request body is too large"


class UnsupportedMediaTypeError(IdContactError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported content type"


class PluginError(IdContactError):
    status = 502
    slug = "plugin-error"
    title = "A plugin did not answer correctly"


class PluginTimeoutError(PluginError):
    slug = "plugin-timeout"
    title = "A plugin did not answer in time"


class VaultError(IdContactError):
    slug = "vault-error"
    title = "Stored attributes could not be opened"


class ServiceBusyError(IdContactError):
    status = 503
    slug = "busy"
    title = "Too busy right now; try again in a few minutes"


class UnauthorizedError(IdContactError):
    status = 401
    slug = "unauthorized"
    title = "Missing or wrong credentials"
