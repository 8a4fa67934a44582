"""OpenID4VP 1.0 with SD-JWT VC (RFC 9901, draft-ietf-oauth-sd-jwt-vc): the verifier's
protocol code, framework-free, plus the issuer and holder halves used by the demo and tests.

The auth plugin (``idcontact.plugins.auth.openid4vp``) puts it on the web.
"""
