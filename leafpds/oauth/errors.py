"""
OAuth refusals, named as RFC 6749, RFC 9126 and RFC 9449 name them (and as
the official PDS answers them).  They are :class:`XRPCError`\\ s so that a
refusal raised under an XRPC call (a DPoP-bound token) answers as usual;
OAuth endpoints answer :meth:`OAuthError.to_oauth_json` instead.
"""

from leafpds.errors import XRPCError


class OAuthError(XRPCError):
    """An OAuth error: ``name`` is the RFC error code."""

    status = 400
    name = "invalid_request"

    def to_oauth_json(self) -> dict[str, str]:
        return {"error": self.name, "error_description": self.message}


class InvalidRequest(OAuthError):
    name = "invalid_request"


class InvalidClient(OAuthError):
    status = 401
    name = "invalid_client"


class InvalidClientMetadata(OAuthError):
    name = "invalid_client_metadata"


class InvalidGrant(OAuthError):
    name = "invalid_grant"


class InvalidScope(OAuthError):
    name = "invalid_scope"


class UnsupportedGrantType(OAuthError):
    name = "unsupported_grant_type"


class UnauthorizedClient(OAuthError):
    name = "unauthorized_client"


class InvalidToken(OAuthError):
    status = 401
    name = "invalid_token"


class InvalidDpopProof(OAuthError):
    # As the official PDS: 401 wherever the proof is checked.
    status = 401
    name = "invalid_dpop_proof"


class UseDpopNonce(OAuthError):
    """The proof lacks the current nonce; the answer carries a fresh one (``DPoP-Nonce``)."""

    # 400 at the authorization server (RFC 9449 section 8); a resource
    # server answers 401 with WWW-Authenticate instead.
    status = 400
    name = "use_dpop_nonce"
