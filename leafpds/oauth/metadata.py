"""
The two discovery documents, as the official PDS publishes them
(REFERENCE-NOTES.md "atproto OAuth"): the protected-resource document
(RFC 9728) that sends a client from the PDS to its authorization server,
and the authorization-server metadata (RFC 8414).  Here the PDS is its own
authorization server, so the issuer and the resource are the public URL.
"""

from typing import Any

from leafpds.oauth.jwk import ALGORITHMS
from leafpds.oauth.scopes import ATPROTO, TRANSITION_CHAT, TRANSITION_EMAIL, TRANSITION_GENERIC

SCOPES_SUPPORTED = [ATPROTO, TRANSITION_EMAIL, TRANSITION_GENERIC, TRANSITION_CHAT]
RESPONSE_MODES = ["query", "fragment"]
PROMPTS = ["none", "login", "consent", "select_account"]


def issuer(public_url: str) -> str:
    """The issuer identifier: the public URL, without a trailing slash."""
    return public_url.rstrip("/")


def protected_resource(public_url: str) -> dict[str, Any]:
    """``/.well-known/oauth-protected-resource``."""
    origin = issuer(public_url)
    return {
        "resource": origin,
        "authorization_servers": [origin],
        "scopes_supported": [],
        "bearer_methods_supported": ["header"],
    }


def authorization_server(public_url: str) -> dict[str, Any]:
    """``/.well-known/oauth-authorization-server``."""
    origin = issuer(public_url)
    return {
        "issuer": origin,
        "scopes_supported": SCOPES_SUPPORTED,
        "subject_types_supported": ["public"],
        "response_types_supported": ["code"],
        "response_modes_supported": RESPONSE_MODES,
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": PROMPTS,
        "authorization_endpoint": f"{origin}/oauth/authorize",
        "token_endpoint": f"{origin}/oauth/token",
        "revocation_endpoint": f"{origin}/oauth/revoke",
        "pushed_authorization_request_endpoint": f"{origin}/oauth/par",
        "jwks_uri": f"{origin}/oauth/jwks",
        "require_pushed_authorization_requests": True,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": True,
        "require_request_uri_registration": True,
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": sorted(ALGORITHMS),
        "dpop_signing_alg_values_supported": sorted(ALGORITHMS),
        "client_id_metadata_document_supported": True,
        "authorization_response_iss_parameter_supported": True,
        "protected_resources": [origin],
    }
