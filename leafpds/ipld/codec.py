"""
DAG-CBOR, through cbrrr: canonical on encode, strict on decode (map key
order, minimal integers, definite lengths, no trailing bytes).
"""

from typing import Any

import cbrrr

from leafpds.ipld.cid import CID, cid_for_cbor

__all__ = ["encode", "decode", "encode_with_cid", "DecodeError"]


class DecodeError(ValueError):
    """Bytes that are not canonical DAG-CBOR."""


def encode(value: Any) -> bytes:
    """Encode a data-model value (dicts, lists, str, bytes, int, bool, None, CID)."""
    return cbrrr.encode_dag_cbor(value)


def encode_with_cid(value: Any) -> tuple[CID, bytes]:
    """Encode a block and compute its CID in one step."""
    data = cbrrr.encode_dag_cbor(value)
    return cid_for_cbor(data), data


def decode(data: bytes) -> Any:
    """Decode one DAG-CBOR value, refusing non-canonical input."""
    try:
        return cbrrr.decode_dag_cbor(data)
    except (cbrrr.CbrrrDecodeError, ValueError, EOFError, TypeError) as e:
        raise DecodeError(f"invalid DAG-CBOR: {e}") from None
