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
    Parse a base32 string CID (``b...``) or a binary CID and check that it is
    a CIDv1 sha2-256 with the dag-cbor or raw codec.
    """
    try:
        cid = CID.decode(value) if isinstance(value, str) else CID(bytes(value))
    except Exception as e:
        raise InvalidCID(f"invalid CID: {e}") from None
    if not (cid.is_cidv1_dag_cbor_sha256_32() or cid.is_cidv1_raw_sha256_32()):
        raise InvalidCID("unsupported CID (expected CIDv1 sha2-256, dag-cbor or raw)")
    return cid
