"""
Compact JWS (RFC 7515) parsing and ES256 verification for DPoP proofs,
which arrive with every DPoP call (the parsing serves the service JWTs of
:mod:`leafpds.accounts.service_jwt` too): parsed once, strictly (base64url without
padding, JSON objects), and verified with ``cryptography`` directly.  pyjwt
does the same in ~4x the time (it parses a token twice to read its header
first and checks base64 character by character in Python).
"""

import base64
import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


class MalformedJWS(ValueError):
    pass


def _b64(segment: str) -> bytes:
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise MalformedJWS("bad base64url segment")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64(segment))
    except (ValueError, UnicodeDecodeError):
        raise MalformedJWS("segment is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedJWS("segment is not a JSON object")
    return value


def parse(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """The header, the claims, the signing input and the signature of a compact JWS."""
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedJWS("not a compact JWS")
    header, claims = _object(parts[0]), _object(parts[1])
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), _b64(parts[2])


def verify_es256(key: ec.EllipticCurvePublicKey, signing_input: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (JWS form: r and s, 32 bytes each) is ``key``'s over ``signing_input``."""
    if len(signature) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
