"""
Keys, signatures and did:key (``leafpds.crypto``), against the official
interop vectors, ``multiformats`` (base58btc), ``cryptography`` (the ECDSA
maths) and the atproto SDK (a second verifier).
"""

import base64

import multiformats
import pytest
from atproto_crypto.verify import verify_signature as sdk_verify_signature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from leafpds import crypto
from leafpds.crypto import (
    ES256,
    ES256K,
    InvalidKey,
    K256Keypair,
    P256Keypair,
    format_did_key,
    multikey,
    parse_did_key,
    parse_multibase_key,
    verify_signature,
    verify_with_public_key,
)
from tests.vectors import load_json

SIGNATURES = load_json("crypto/signature-fixtures.json")
W3C_K256 = load_json("crypto/w3c_didkey_K256.json")
W3C_P256 = load_json("crypto/w3c_didkey_P256.json")

ORDER = {
    ES256K: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    ES256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
CURVE = {ES256K: ec.SECP256K1(), ES256: ec.SECP256R1()}
KEYPAIRS = [K256Keypair, P256Keypair]
MESSAGE = b"\xa1ehelloeworld"


def b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def split(signature: bytes) -> tuple[int, int]:
    return int.from_bytes(signature[:32]), int.from_bytes(signature[32:])


def compact(r: int, s: int) -> bytes:
    return r.to_bytes(32) + s.to_bytes(32)


def cryptography_accepts(jwt_alg, public_key, data, r, s) -> bool:
    """Plain ECDSA, without atproto's encoding and low-S rules."""
    key = ec.EllipticCurvePublicKey.from_encoded_point(CURVE[jwt_alg], public_key)
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except Exception:
        return False
    return True


def uncompressed(jwt_alg: str, public_key: bytes) -> bytes:
    key = ec.EllipticCurvePublicKey.from_encoded_point(CURVE[jwt_alg], public_key)
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def b58(data: bytes) -> str:
    """base58btc by multiformats, without the multibase ``z``."""
    return multiformats.multibase.encode(data, "base58btc")[1:]


# -- the interop vectors -------------------------------------------------------


@pytest.mark.parametrize("case", SIGNATURES, ids=lambda case: case["comment"])
def test_signature_fixture(case):
    did = case["publicKeyDid"]
    message, signature = b64(case["messageBase64"]), b64(case["signatureBase64"])
    jwt_alg, public_key = parse_did_key(did)
    assert jwt_alg == case["algorithm"]
    assert len(public_key) == 33
    assert verify_signature(did, message, signature) is case["validSignature"]
    assert (
        verify_with_public_key(jwt_alg, public_key, message, signature)
        is case["validSignature"]
    )


@pytest.mark.parametrize("case", SIGNATURES, ids=lambda case: case["comment"])
def test_signature_fixture_key_forms(case):
    did = case["publicKeyDid"]
    expected = (case["algorithm"], parse_did_key(did)[1])
    legacy = parse_multibase_key(case["publicKeyMultibase"], case["didDocSuite"])
    assert legacy == expected
    assert multikey(did) == did.removeprefix("did:key:")
    assert parse_multibase_key(multikey(did), "Multikey") == expected
    assert parse_multibase_key(multikey(did), None) == expected
    assert format_did_key(*expected) == did


@pytest.mark.parametrize(
    "case",
    [case for case in SIGNATURES if "high-s" in case["tags"]],
    ids=lambda case: case["algorithm"],
)
def test_fixture_high_s_rejected_only_for_its_s(case):
    """The maths checks out, and the low-S twin verifies: only S is wrong."""
    jwt_alg, public_key = parse_did_key(case["publicKeyDid"])
    message = b64(case["messageBase64"])
    r, s = split(b64(case["signatureBase64"]))
    assert s > ORDER[jwt_alg] // 2
    assert cryptography_accepts(jwt_alg, public_key, message, r, s)
    low = compact(r, ORDER[jwt_alg] - s)
    assert verify_signature(case["publicKeyDid"], message, low)


@pytest.mark.parametrize(
    "case",
    [case for case in SIGNATURES if "der-encoded" in case["tags"]],
    ids=lambda case: case["algorithm"],
)
def test_fixture_der_rejected_only_for_its_encoding(case):
    message = b64(case["messageBase64"])
    r, s = decode_dss_signature(b64(case["signatureBase64"]))
    assert verify_signature(case["publicKeyDid"], message, compact(r, s))


@pytest.mark.parametrize("case", W3C_K256, ids=lambda case: case["publicDidKey"])
def test_w3c_k256(case):
    secret = bytes.fromhex(case["privateKeyBytesHex"])
    keypair = K256Keypair.from_private_bytes(secret)
    assert keypair.did() == case["publicDidKey"]
    assert keypair.private_bytes() == secret
    assert parse_did_key(case["publicDidKey"]) == (ES256K, keypair.public_key())


@pytest.mark.parametrize("case", W3C_P256, ids=lambda case: case["publicDidKey"])
def test_w3c_p256(case):
    secret = multiformats.multibase.decode("z" + case["privateKeyBytesBase58"])
    keypair = P256Keypair.from_private_bytes(secret)
    assert keypair.did() == case["publicDidKey"]
    assert keypair.private_bytes() == secret
    assert parse_did_key(case["publicDidKey"]) == (ES256, keypair.public_key())


# -- signing -------------------------------------------------------------------


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_round_trip(cls):
    keypair = cls.generate()
    signature = keypair.sign(MESSAGE)
    assert len(signature) == 64
    assert verify_signature(keypair.did(), MESSAGE, signature)
    assert verify_with_public_key(
        keypair.jwt_alg, keypair.public_key(), MESSAGE, signature
    )
    assert sdk_verify_signature(keypair.did(), MESSAGE, signature)


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_signatures_always_low_s(cls):
    # OpenSSL picks either S for P-256, so 200 signatures would almost surely
    # include high ones were they not normalized.
    keypair = cls.generate()
    order = ORDER[keypair.jwt_alg]
    for n in range(200):
        message = n.to_bytes(4) * 10
        signature = keypair.sign(message)
        r, s = split(signature)
        assert len(signature) == 64
        assert 0 < r < order and 0 < s <= order // 2
        assert verify_signature(keypair.did(), message, signature)


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_tampering_fails(cls):
    keypair = cls.generate()
    signature = keypair.sign(MESSAGE)
    assert not verify_signature(keypair.did(), MESSAGE + b"!", signature)
    assert not verify_signature(keypair.did(), MESSAGE[:-1], signature)
    for index in (0, 31, 32, 63):
        broken = bytearray(signature)
        broken[index] ^= 0x01
        assert not verify_signature(keypair.did(), MESSAGE, bytes(broken))


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_high_s_twin_rejected(cls):
    keypair = cls.generate()
    r, s = split(keypair.sign(MESSAGE))
    high = ORDER[keypair.jwt_alg] - s
    assert cryptography_accepts(keypair.jwt_alg, keypair.public_key(), MESSAGE, r, high)
    assert not verify_signature(keypair.did(), MESSAGE, compact(r, high))
    assert not verify_with_public_key(
        keypair.jwt_alg, keypair.public_key(), MESSAGE, compact(r, high)
    )


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_der_rejected(cls):
    keypair = cls.generate()
    der = encode_dss_signature(*split(keypair.sign(MESSAGE)))
    assert not verify_signature(keypair.did(), MESSAGE, der)


@pytest.mark.parametrize(
    "signature",
    [b"", b"\0" * 63, b"\0" * 64, b"\0" * 65, b"\xff" * 64],
    ids=["empty", "short", "zero", "long", "out-of-range"],
)
@pytest.mark.parametrize("cls", KEYPAIRS)
def test_malformed_signatures_rejected(cls, signature):
    assert not verify_signature(cls.generate().did(), MESSAGE, signature)


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_out_of_range_r_and_s_rejected(cls):
    keypair = cls.generate()
    order = ORDER[keypair.jwt_alg]
    r, s = split(keypair.sign(MESSAGE))
    for bad in (compact(0, s), compact(order, s), compact(r, 0), compact(r, order)):
        assert not verify_signature(keypair.did(), MESSAGE, bad)


def test_other_keys_fail():
    signer = K256Keypair.generate()
    signature = signer.sign(MESSAGE)
    assert not verify_signature(K256Keypair.generate().did(), MESSAGE, signature)
    # The same scalar on the other curve is a different key.
    twin = P256Keypair.from_private_bytes(signer.private_bytes())
    assert not verify_signature(twin.did(), MESSAGE, signature)
    assert not verify_with_public_key(ES256, signer.public_key(), MESSAGE, signature)


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_private_bytes_round_trip(cls):
    keypair = cls.generate()
    secret = keypair.private_bytes()
    assert len(secret) == 32
    again = cls.from_private_bytes(secret)
    assert again.did() == keypair.did()
    assert verify_signature(keypair.did(), MESSAGE, again.sign(MESSAGE))


@pytest.mark.parametrize(
    "secret",
    [b"", b"\x01" * 31, b"\x01" * 33, b"\0" * 32, b"\xff" * 32],
    ids=["empty", "short", "long", "zero", "above-order"],
)
@pytest.mark.parametrize("cls", KEYPAIRS)
def test_invalid_private_bytes(cls, secret):
    with pytest.raises(InvalidKey):
        cls.from_private_bytes(secret)


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_repr_hides_secret(cls):
    keypair = cls.generate()
    secret = keypair.private_bytes()
    for text in (repr(keypair), str(keypair)):
        assert keypair.did() in text
        assert secret.hex() not in text
        assert secret.hex().upper() not in text
        assert repr(secret) not in text
        assert str(int.from_bytes(secret)) not in text


# -- did:key ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_did_key_round_trip(cls):
    for _ in range(20):
        keypair = cls.generate()
        did = keypair.did()
        assert did.startswith("did:key:z")
        assert parse_did_key(did) == (keypair.jwt_alg, keypair.public_key())
        assert format_did_key(keypair.jwt_alg, keypair.public_key()) == did
        assert parse_multibase_key(multikey(did), "Multikey") == parse_did_key(did)


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_did_key_matches_multiformats(cls):
    for _ in range(20):
        keypair = cls.generate()
        prefixed = multiformats.multicodec.wrap(
            "secp256k1-pub" if keypair.jwt_alg == ES256K else "p256-pub",
            keypair.public_key(),
        )
        assert keypair.did() == "did:key:z" + b58(prefixed)


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_format_did_key_compresses(cls):
    keypair = cls.generate()
    point = uncompressed(keypair.jwt_alg, keypair.public_key())
    assert format_did_key(keypair.jwt_alg, point) == keypair.did()
    signature = keypair.sign(MESSAGE)
    assert verify_with_public_key(keypair.jwt_alg, point, MESSAGE, signature)


def test_did_key_rejects_uncompressed_point():
    keypair = K256Keypair.generate()
    point = uncompressed(ES256K, keypair.public_key())
    with pytest.raises(InvalidKey, match="33-byte compressed"):
        parse_did_key("did:key:z" + b58(b"\xe7\x01" + point))


K256_DID = "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc"
K256_POINT = parse_did_key(K256_DID)[1]
# x = 7 is the x coordinate of no point on either curve.
OFF_CURVE = b"\x02" + (7).to_bytes(32)

MALFORMED_DID_KEYS = {
    "empty": "",
    "prefix only": "did:key:",
    "multibase prefix only": "did:key:z",
    "other method": "did:web:example.com",
    "uppercase method": "DID:KEY:" + K256_DID[8:],
    "no multibase prefix": "did:key:" + K256_DID[9:],
    "base32 multibase": "did:key:b" + K256_DID[9:],
    "bad base58 character": K256_DID[:-1] + "0",
    "fragment": K256_DID + "#" + K256_DID[8:],
    "trailing space": K256_DID + " ",
    "truncated": K256_DID[:-1],
    "extended": K256_DID + "z",
    "ed25519": "did:key:z" + b58(b"\xed\x01" + b"\x01" * 32),
    "no codec": "did:key:z" + b58(K256_POINT),
    "bad point prefix": "did:key:z" + b58(b"\xe7\x01\x05" + K256_POINT[1:]),
    "k256 off curve": "did:key:z" + b58(b"\xe7\x01" + OFF_CURVE),
    "p256 off curve": "did:key:z" + b58(b"\x80\x24" + OFF_CURVE),
    "huge": "did:key:z" + "2" * 100_000,
}


@pytest.mark.parametrize("did", MALFORMED_DID_KEYS.values(), ids=MALFORMED_DID_KEYS)
def test_malformed_did_key(did):
    with pytest.raises(InvalidKey):
        parse_did_key(did)
    with pytest.raises(InvalidKey):
        multikey(did)
    assert not verify_signature(did, MESSAGE, b"\0" * 64)


@pytest.mark.parametrize("value", [None, 42, b"did:key:z", ["did:key:z"]])
def test_non_string_did_key(value):
    with pytest.raises(InvalidKey):
        parse_did_key(value)
    assert not verify_signature(value, MESSAGE, b"\0" * 64)


def test_invalid_key_is_value_error():
    assert issubclass(InvalidKey, ValueError)


@pytest.mark.parametrize("cls", KEYPAIRS)
def test_legacy_multibase_uncompressed(cls):
    keypair = cls.generate()
    suite = (
        "EcdsaSecp256k1VerificationKey2019"
        if keypair.jwt_alg == ES256K
        else "EcdsaSecp256r1VerificationKey2019"
    )
    point = uncompressed(keypair.jwt_alg, keypair.public_key())
    expected = (keypair.jwt_alg, keypair.public_key())
    assert parse_multibase_key("z" + b58(point), suite) == expected
    assert parse_multibase_key("z" + b58(keypair.public_key()), suite) == expected


@pytest.mark.parametrize(
    "value, suite",
    [
        (K256_DID[8:], "Ed25519VerificationKey2020"),
        (K256_DID[8:], "JsonWebKey2020"),
        (K256_DID[8:], "EcdsaSecp256k1VerificationKey2019"),
        ("z" + b58(K256_POINT), "Multikey"),
        ("z" + b58(K256_POINT), None),
        (K256_DID[9:], "Multikey"),
        ("z" + b58(OFF_CURVE), "EcdsaSecp256k1VerificationKey2019"),
        ("", "EcdsaSecp256k1VerificationKey2019"),
        (None, "Multikey"),
    ],
    ids=[
        "ed25519 suite",
        "jwk suite",
        "legacy with codec",
        "multikey without codec",
        "untyped without codec",
        "no multibase prefix",
        "off curve",
        "empty",
        "not a string",
    ],
)
def test_malformed_multibase_key(value, suite):
    with pytest.raises(InvalidKey):
        parse_multibase_key(value, suite)


def test_verify_with_public_key_garbage():
    signature = K256Keypair.generate().sign(MESSAGE)
    assert not verify_with_public_key("ES384", K256_POINT, MESSAGE, signature)
    assert not verify_with_public_key(ES256K, b"", MESSAGE, signature)
    assert not verify_with_public_key(ES256K, OFF_CURVE, MESSAGE, signature)


@given(st.binary(min_size=1, max_size=67))
def test_base58_matches_multiformats(data):
    """Including leading zero bytes, which base58 writes as leading "1"s."""
    assert crypto._b58encode(data) == b58(data)
    assert crypto._b58decode(b58(data)) == data
