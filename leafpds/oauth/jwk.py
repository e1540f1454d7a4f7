"""
Public JSON Web Keys: turning one into a key that verifies, and its
RFC 7638 thumbprint (what a DPoP-bound token records as ``cnf.jkt``).
"""

import hashlib
import json
from typing import Any

from jwt import PyJWK
from jwt.exceptions import PyJWTError
from jwt.utils import base64url_encode

# The members RFC 7638 section 3.2 hashes, per key type.
_REQUIRED = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
# Private members of EC, RSA and OKP keys (RFC 7518 section 6).
_PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# The signing algorithms leafpds accepts from clients, and the curve each needs.
ALGORITHMS = {"ES256": "P-256"}


class BadKey(ValueError):
    """Not a usable public key (the reason is the message)."""


def thumbprint(jwk: dict[str, Any]) -> str:
    """The base64url SHA-256 thumbprint of ``jwk`` (RFC 7638)."""
    required = _REQUIRED.get(jwk.get("kty"))  # type: ignore[arg-type]
    if required is None:
        raise BadKey("unsupported key type")
    members = {}
    for name in required:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise BadKey(f"key member {name} missing")
        members[name] = value
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return base64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest()).decode("ascii")


def public_key(jwk: Any, alg: str) -> Any:
    """
    The verifying key of the public JWK ``jwk`` for algorithm ``alg`` (one
    of :data:`ALGORITHMS`); :class:`BadKey` for a private key, another
    curve, an algorithm the key says it is not for, or a malformed key.
    """
    return public_key_and_thumbprint(jwk, alg)[0]


def public_key_and_thumbprint(jwk: Any, alg: str) -> tuple[Any, str]:
    """
    :func:`public_key` and :func:`thumbprint` at once.  A client signs every
    DPoP proof with the same key: the keys last made are remembered, with
    their thumbprints.
    """
    try:
        cache_key = (json.dumps(jwk, sort_keys=True), alg)
    except (TypeError, ValueError):
        raise BadKey("key is not JSON") from None
    known = _keys.get(cache_key)
    if known is None:
        known = _public_key(jwk, alg), thumbprint(jwk)
        if len(_keys) >= MAX_CACHED_KEYS:
            del _keys[next(iter(_keys))]
        _keys[cache_key] = known
    return known


MAX_CACHED_KEYS = 4096
_keys: dict[tuple[str, str], tuple[Any, str]] = {}


def _public_key(jwk: Any, alg: str) -> Any:
    if not isinstance(jwk, dict):
        raise BadKey("key is not a JSON object")
    curve = ALGORITHMS.get(alg)
    if curve is None:
        raise BadKey(f"unsupported algorithm {alg!r}")
    if any(name in jwk for name in _PRIVATE):
        raise BadKey("key must be public")
    if jwk.get("kty") != "EC" or jwk.get("crv") != curve:
        raise BadKey(f"{alg} needs an EC {curve} key")
    if jwk.get("alg", alg) != alg:
        raise BadKey("key is for another algorithm")
    if jwk.get("use", "sig") != "sig":
        raise BadKey("key is not for signatures")
    try:
        return PyJWK(jwk, algorithm=alg).key
    except (PyJWTError, ValueError, TypeError) as e:
        raise BadKey(f"malformed key: {e}") from None
