"""
Signing keys, signatures and ``did:key`` strings, as atproto uses them.

Two curves (https://atproto.com/specs/cryptography):

- secp256k1, JWT algorithm ``ES256K``, through ``coincurve`` (libsecp256k1),
  about ten times faster here than ``cryptography`` for this curve;
- NIST P-256, JWT algorithm ``ES256``, through ``cryptography``.

A signature is ECDSA over the SHA-256 of the message, serialized as the 64-byte
compact ``r || s`` with a "low" S (at most half the group order).  We always
sign low-S and accept nothing else: high-S twins of valid signatures and
DER-encoded signatures are rejected.

A public key travels as a 33-byte compressed SEC1 point, written as a
``did:key`` (multicodec prefix + point, base58btc multibase).  DID documents
hold either the same multibase string (``Multikey``) or the deprecated legacy
form: base58btc of the bare point, without a multicodec prefix.
"""

from __future__ import annotations

import functools
from typing import Protocol

import coincurve
from coincurve.ecdsa import (
    cdata_to_der,
    der_to_cdata,
    deserialize_compact,
    serialize_compact,
)
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ES256K = "ES256K"
ES256 = "ES256"

DID_KEY_PREFIX = "did:key:"

# Unsigned-varint multicodec prefixes: secp256k1-pub (0xe7), p256-pub (0x1200).
_MULTICODEC = {ES256K: b"\xe7\x01", ES256: b"\x80\x24"}

# Group orders, for the range and low-S checks on signatures.
_ORDER = {
    ES256K: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    ES256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}

# Legacy DID-document verification method types and the curve each names.
_LEGACY_SUITES = {
    "EcdsaSecp256k1VerificationKey2019": ES256K,
    "EcdsaSecp256r1VerificationKey2019": ES256,
}
MULTIKEY = "Multikey"

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())

# The longest multibase body we decode: a 65-byte uncompressed point plus a
# 2-byte prefix is 92 base58 digits.  The cap keeps garbage input from costing
# quadratic big-integer work.
_MAX_BASE58_LENGTH = 100


class InvalidKey(ValueError):
    """A key, or its string form, is malformed or of an unsupported type."""


class Keypair(Protocol):
    """A private signing key of either curve."""

    jwt_alg: str

    def sign(self, data: bytes) -> bytes:
        """The 64-byte compact low-S ECDSA signature of SHA-256(data)."""

    def public_key(self) -> bytes:
        """The 33-byte compressed public point."""

    def did(self) -> str:
        """The public key as ``did:key:z...``."""

    def private_bytes(self) -> bytes:
        """The 32-byte private scalar.  Callers must encrypt it at rest."""


class K256Keypair:
    """A secp256k1 (``ES256K``) signing key."""

    jwt_alg = ES256K

    def __init__(self, key: coincurve.PrivateKey) -> None:
        self._key = key
        self._public = key.public_key.format(compressed=True)
        self._did = format_did_key(ES256K, self._public)

    @classmethod
    def generate(cls) -> K256Keypair:
        return cls(coincurve.PrivateKey())

    @classmethod
    def from_private_bytes(cls, secret: bytes) -> K256Keypair:
        _check_scalar(ES256K, secret)
        return cls(coincurve.PrivateKey(secret))

    def sign(self, data: bytes) -> bytes:
        # libsecp256k1 always produces low-S signatures; coincurve hands them
        # out DER-encoded, so re-serialize in compact form.
        return serialize_compact(der_to_cdata(self._key.sign(data)))

    def public_key(self) -> bytes:
        return self._public

    def did(self) -> str:
        return self._did

    def private_bytes(self) -> bytes:
        return self._key.secret

    def __repr__(self) -> str:
        return f"<K256Keypair {self._did}>"


class P256Keypair:
    """A NIST P-256 (``ES256``) signing key."""

    jwt_alg = ES256

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self._public = key.public_key().public_bytes(
            Encoding.X962, PublicFormat.CompressedPoint
        )
        self._did = format_did_key(ES256, self._public)

    @classmethod
    def generate(cls) -> P256Keypair:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_private_bytes(cls, secret: bytes) -> P256Keypair:
        _check_scalar(ES256, secret)
        return cls(ec.derive_private_key(int.from_bytes(secret), ec.SECP256R1()))

    def sign(self, data: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(data, _ECDSA_SHA256))
        # OpenSSL returns either S; atproto requires the low one.
        order = _ORDER[ES256]
        if s > order // 2:
            s = order - s
        return r.to_bytes(32) + s.to_bytes(32)

    def public_key(self) -> bytes:
        return self._public

    def did(self) -> str:
        return self._did

    def private_bytes(self) -> bytes:
        return self._key.private_numbers().private_value.to_bytes(32)

    def __repr__(self) -> str:
        return f"<P256Keypair {self._did}>"


def _check_scalar(jwt_alg: str, secret: bytes) -> None:
    if len(secret) != 32 or not 0 < int.from_bytes(secret) < _ORDER[jwt_alg]:
        raise InvalidKey(f"not a valid {jwt_alg} private key (32-byte scalar)")


# -- did:key and multibase --------------------------------------------------


def format_did_key(jwt_alg: str, public_key: bytes) -> str:
    """
    The ``did:key`` of a public key given as a SEC1 point (compressed or
    uncompressed); the result always holds the compressed point.
    """
    compressed = _compressed_point(jwt_alg, public_key)
    return DID_KEY_PREFIX + "z" + _b58encode(_MULTICODEC[jwt_alg] + compressed)


def parse_did_key(did: str) -> tuple[str, bytes]:
    """
    ``(jwt_alg, compressed public key)`` from a ``did:key``.

    The atproto spec requires the compressed point in a ``did:key`` (as do the
    multicodec ``secp256k1-pub`` and ``p256-pub`` codes); only the legacy
    DID-document form allows an uncompressed one, so it is rejected here.

    :raises InvalidKey: if ``did`` is not a ``did:key`` of a valid
        secp256k1 or P-256 point.
    """
    # Checked before the cache, which cannot even hash some non-strings.
    if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX):
        raise InvalidKey(f"not a did:key: {did!r:.80}")
    return _parse_did_key(did)


@functools.lru_cache(maxsize=1024)
def _parse_did_key(did: str) -> tuple[str, bytes]:
    # Cached: verification parses the same few signing keys over and over.
    prefixed = _decode_multibase(did[len(DID_KEY_PREFIX) :])
    for jwt_alg, codec in _MULTICODEC.items():
        if prefixed.startswith(codec):
            point = prefixed[len(codec) :]
            if len(point) != 33:
                raise InvalidKey(
                    f"{jwt_alg} did:key must hold a 33-byte compressed point,"
                    f" not {len(point)} bytes"
                )
            _load_public_key(jwt_alg, point)
            return jwt_alg, point
    raise InvalidKey("did:key is not a secp256k1 or P-256 public key")


def multikey(did_key: str) -> str:
    """The ``publicKeyMultibase`` of a ``Multikey`` verification method."""
    parse_did_key(did_key)
    return did_key[len(DID_KEY_PREFIX) :]


def parse_multibase_key(value: str, suite: str | None) -> tuple[str, bytes]:
    """
    ``(jwt_alg, compressed public key)`` from a DID-document verification
    method's ``publicKeyMultibase`` and ``type`` (``suite``).

    ``Multikey`` (or no type) is the ``did:key`` body.  The legacy
    ``EcdsaSecp256k1VerificationKey2019`` and
    ``EcdsaSecp256r1VerificationKey2019`` types hold the bare point, which the
    spec allows uncompressed.

    :raises InvalidKey: for an unknown type or a malformed key.
    """
    if suite is None or suite == MULTIKEY:
        if not isinstance(value, str):
            raise InvalidKey(f"publicKeyMultibase is not a string: {value!r:.80}")
        return parse_did_key(DID_KEY_PREFIX + value)
    jwt_alg = _LEGACY_SUITES.get(suite)
    if jwt_alg is None:
        raise InvalidKey(f"unsupported verification method type {suite!r:.80}")
    return jwt_alg, _compressed_point(jwt_alg, _decode_multibase(value))


def _decode_multibase(value: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("z"):
        raise InvalidKey(f"not a base58btc multibase string: {value!r:.80}")
    return _b58decode(value[1:])


# A local base58btc rather than ``multiformats``: its generic multibase and
# multicodec tables cost ~0.1 s to import and buy nothing for two fixed
# prefixes, and a strict decoder is a few lines.
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_DIGITS = {char: digit for digit, char in enumerate(_B58_ALPHABET)}


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data)
    digits = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(_B58_ALPHABET[digit])
    # Each leading zero byte is written as a leading "1" (the zero digit).
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(digits))


def _b58decode(text: str) -> bytes:
    if not 0 < len(text) <= _MAX_BASE58_LENGTH:
        raise InvalidKey(f"base58btc key of unsupported length {len(text)}")
    number = 0
    for char in text:
        digit = _B58_DIGITS.get(char)
        if digit is None:
            raise InvalidKey(f"invalid base58btc character {char!r}")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + number.to_bytes((number.bit_length() + 7) // 8)


# -- public points ----------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _load_public_key(
    jwt_alg: str, point: bytes
) -> coincurve.PublicKey | ec.EllipticCurvePublicKey:
    """
    The library object for a SEC1 point, validated to lie on the curve.
    Cached because loading a compressed point costs a modular square root.
    """
    # Check the encoding ourselves: libsecp256k1 would also take the odd
    # "hybrid" (0x06/0x07) form, which no atproto key uses.
    if not (
        (len(point) == 33 and point[0] in (2, 3))
        or (len(point) == 65 and point[0] == 4)
    ):
        raise InvalidKey("public key is not a compressed or uncompressed SEC1 point")
    try:
        if jwt_alg == ES256K:
            return coincurve.PublicKey(point)
        if jwt_alg == ES256:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise InvalidKey(f"public key is not a point on the {jwt_alg} curve") from None
    raise InvalidKey(f"unsupported key algorithm {jwt_alg!r:.80}")


def _compressed_point(jwt_alg: str, point: bytes) -> bytes:
    key = _load_public_key(jwt_alg, point)
    if len(point) == 33:
        return point
    if isinstance(key, coincurve.PublicKey):
        return key.format(compressed=True)
    return key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


# -- verification -----------------------------------------------------------


def verify_signature(did_key: str, data: bytes, signature: bytes) -> bool:
    """
    Whether ``signature`` is a valid atproto signature of ``data`` by the key
    ``did_key``.  False, never an exception, for a bad signature or key.
    """
    try:
        jwt_alg, point = parse_did_key(did_key)
    except InvalidKey:
        return False
    return _verify(jwt_alg, _load_public_key(jwt_alg, point), data, signature)


def verify_with_public_key(
    jwt_alg: str, public_key: bytes, data: bytes, signature: bytes
) -> bool:
    """
    Like :func:`verify_signature`, for a SEC1 point (compressed or
    uncompressed) and its JWT algorithm name.
    """
    try:
        key = _load_public_key(jwt_alg, public_key)
    except InvalidKey:
        return False
    return _verify(jwt_alg, key, data, signature)


def _verify(
    jwt_alg: str,
    key: coincurve.PublicKey | ec.EllipticCurvePublicKey,
    data: bytes,
    signature: bytes,
) -> bool:
    # Only the 64-byte compact form, with r and s in range and s low; this
    # rejects DER encodings and the high-S twin of every valid signature.
    if len(signature) != 64:
        return False
    order = _ORDER[jwt_alg]
    r = int.from_bytes(signature[:32])
    s = int.from_bytes(signature[32:])
    if not (0 < r < order and 0 < s <= order // 2):
        return False
    if isinstance(key, coincurve.PublicKey):
        # coincurve verifies DER only; the conversion is two C calls.
        return key.verify(cdata_to_der(deserialize_compact(signature)), data)
    try:
        key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True
