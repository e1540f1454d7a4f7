"""
CIDs as atproto uses them: CIDv1, sha2-256, codec dag-cbor (0x71) for data
and raw (0x55) for blobs.

The CID type is cbrrr's: a one-slot object holding the binary CID, which the
codec encodes and decodes as tag 42 without any conversion.  Building one is a
prefix plus a hashlib digest, cheap enough for the MST's hot path.
"""

import hashlib

from cbrrr import CID

__all__ = ["CID", "cid_for_cbor", "cid_for_raw", "parse_cid", "InvalidCID"]

DAG_CBOR_PREFIX = b"\x01\x71\x12\x20"
RAW_PREFIX = b"\x01\x55\x12\x20"
# "b" and the unpadded base32 of a 36-byte CID: the only length parse_cid accepts.
STRING_LENGTH = 59


class InvalidCID(ValueError):
    """A string or binary CID that atproto does not accept."""


def cid_for_cbor(data: bytes) -> CID:
    """The CID of a DAG-CBOR block."""
    return CID(DAG_CBOR_PREFIX + hashlib.sha256(data).digest())


def cid_for_raw(data: bytes) -> CID:
    """The CID of a blob: raw codec."""
    return CID(RAW_PREFIX + hashlib.sha256(data).digest())


def parse_cid(value: str | bytes) -> CID:
    """
    Parse a string CID (canonical lower-case base32, ``b...``) or a binary
    CID and check that it is a CIDv1 sha2-256 with the dag-cbor or raw codec.
    """
    if isinstance(value, str):
        # Only the canonical spelling: cbrrr would also take upper case, an
        # identity-multibase string, or base32 with stray trailing bits, all
        # of which name the same CID as some other string.
        if len(value) != STRING_LENGTH or not value.startswith("b"):
            raise InvalidCID(f"invalid CID {value[:100]!r}: expected a base32 CIDv1 (b...)")
        try:
            cid = CID.decode(value)
        except ValueError:
            raise InvalidCID(f"invalid CID {value[:100]!r}: bad base32") from None
        if cid.encode() != value:
            raise InvalidCID(f"invalid CID {value[:100]!r}: not in canonical form")
    else:
        cid = CID(bytes(value))
    if not (cid.is_cidv1_dag_cbor_sha256_32() or cid.is_cidv1_raw_sha256_32()):
        raise InvalidCID("unsupported CID (expected CIDv1 sha2-256, dag-cbor or raw)")
    return cid
