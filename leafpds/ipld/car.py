"""
CAR v1 files (content-addressable archives): repository exports and
imports, and the blocks of a firehose event.

A CAR is a varint length-prefixed DAG-CBOR header ``{version: 1, roots:
[cid]}`` followed by sections, each ``varint(length) || CID || block``.
atproto uses only CIDv1 sha2-256 with the dag-cbor or raw codec, so every
CID is the same 36 bytes and the reader checks every block against its hash.

Writing streams: :class:`CarWriter` hands each section to a ``write``
callable as soon as it is added.  Reading streams too: :class:`CarReader` is
fed chunks as they arrive and returns the blocks completed so far;
:func:`read_car` reads a whole buffer.
"""

import hashlib
from collections.abc import Callable, Iterable

from leafpds.ipld import codec
from leafpds.ipld.cid import CID, DAG_CBOR_PREFIX, RAW_PREFIX

__all__ = [
    "CarError",
    "CarWriter",
    "CarReader",
    "encode_car",
    "read_car",
    "MAX_HEADER_SIZE",
    "MAX_BLOCK_SIZE",
]

# Our header is about 50 bytes; a few roots more is still far below this.
MAX_HEADER_SIZE = 64 * 1024
# A record is at most 1 MiB of DAG-CBOR (the atproto limit); MST nodes and
# commits are much smaller.  Twice that leaves room without inviting abuse.
MAX_BLOCK_SIZE = 2 * 1024 * 1024

_CID_LENGTH = 36  # version, codec, hash function, digest length, 32-byte digest
_PREFIX_LENGTH = len(DAG_CBOR_PREFIX)
# The multiformats unsigned-varint limit: at most 9 bytes (63 bits).
_MAX_VARINT_BYTES = 9


class CarError(ValueError):
    """Bytes that are not a CAR v1 file atproto accepts."""


def _varint(n: int) -> bytes:
    """The unsigned LEB128 varint of ``n``."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _header(root: CID | None) -> bytes:
    header = codec.encode({"version": 1, "roots": [] if root is None else [root]})
    return _varint(len(header)) + header


class CarWriter:
    """
    Writes a CAR to ``write`` one section at a time, so a repository export
    never has to be in memory whole.  The header is written at once.
    """

    def __init__(self, write: Callable[[bytes], object], root: CID | None) -> None:
        self._write = write
        write(_header(root))

    def add(self, cid: CID, data: bytes) -> None:
        """Write one block; ``cid`` must be the CID of ``data``."""
        cid_bytes = cid.cid_bytes
        self._write(_varint(len(cid_bytes) + len(data)) + cid_bytes + data)


def encode_car(root: CID | None, blocks: Iterable[tuple[CID, bytes]]) -> bytes:
    """A whole CAR in memory: for small ones, such as a firehose event's blocks."""
    parts = [_header(root)]
    append = parts.append
    for cid, data in blocks:
        cid_bytes = cid.cid_bytes
        append(_varint(len(cid_bytes) + len(data)))
        append(cid_bytes)
        append(data)
    return b"".join(parts)


def _read_varint(buf: memoryview, pos: int, offset: int) -> tuple[int, int] | None:
    """
    Read a varint at ``buf[pos:]``: its value and the position after it, or
    ``None`` if ``buf`` ends inside it.  ``offset`` is the position of
    ``buf[0]`` in the whole CAR, for error messages.
    """
    end = len(buf)
    value = 0
    shift = 0
    i = pos
    while i < end:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i - pos > 1:
                raise CarError(f"varint at byte {offset + pos} is not minimally encoded")
            return value, i
        shift += 7
        if i - pos == _MAX_VARINT_BYTES:
            raise CarError(f"varint at byte {offset + pos} is longer than 9 bytes")
    return None


def _read_header(
    buf: memoryview, offset: int, max_size: int
) -> tuple[list[CID], int] | None:
    """The header's roots and the position after it, or ``None`` if incomplete."""
    read = _read_varint(buf, 0, offset)
    if read is None:
        return None
    length, start = read
    if length == 0:
        raise CarError("CAR header is empty")
    if length > max_size:
        raise CarError(f"CAR header of {length} bytes is larger than {max_size} bytes")
    end = start + length
    if end > len(buf):
        return None
    try:
        header = codec.decode(bytes(buf[start:end]))
    except codec.DecodeError as e:
        raise CarError(f"CAR header is not DAG-CBOR: {e}") from None
    if not isinstance(header, dict):
        raise CarError("CAR header is not a map")
    if header.keys() != {"version", "roots"}:
        raise CarError(
            f"CAR header must have exactly the keys roots and version, not {sorted(header)}"
        )
    version = header["version"]
    if type(version) is not int or version != 1:
        raise CarError(f"unsupported CAR version {version!r} (expected 1)")
    roots = header["roots"]
    if not isinstance(roots, list):
        raise CarError("CAR header roots is not a list")
    for root in roots:
        if not (
            isinstance(root, CID)
            and (root.is_cidv1_dag_cbor_sha256_32() or root.is_cidv1_raw_sha256_32())
        ):
            raise CarError(f"CAR root {root!r} is not a CIDv1 sha2-256 dag-cbor or raw CID")
    return roots, end


def _read_blocks(
    buf: memoryview, pos: int, offset: int, max_block_size: int
) -> tuple[list[tuple[CID, bytes]], int]:
    """
    The complete sections in ``buf[pos:]``, checked, and the position after
    the last of them.
    """
    blocks = []
    end = len(buf)
    max_length = _CID_LENGTH + max_block_size
    while pos < end:
        read = _read_varint(buf, pos, offset)
        if read is None:
            break
        length, start = read
        if length < _CID_LENGTH:
            raise CarError(
                f"block at byte {offset + pos}: a section of {length} bytes"
                " cannot hold a CIDv1 sha2-256"
            )
        if length > max_length:
            raise CarError(
                f"block at byte {offset + pos}: {length - _CID_LENGTH} bytes"
                f" is larger than {max_block_size} bytes"
            )
        # Check the CID as soon as its prefix is here, not once a whole
        # (possibly large) block has arrived.
        if start + _PREFIX_LENGTH <= end:
            prefix = buf[start : start + _PREFIX_LENGTH]
            if prefix != DAG_CBOR_PREFIX and prefix != RAW_PREFIX:
                raise CarError(
                    f"block at byte {offset + pos}: CID {bytes(prefix).hex()}..."
                    " is not a CIDv1 sha2-256 dag-cbor or raw CID"
                )
        section_end = start + length
        if section_end > end:
            break
        data_start = start + _CID_LENGTH
        data = bytes(buf[data_start:section_end])
        if hashlib.sha256(data).digest() != buf[start + _PREFIX_LENGTH : data_start]:
            cid = CID(bytes(buf[start:data_start]))
            raise CarError(f"block at byte {offset + pos} does not match its CID {cid.encode()}")
        blocks.append((CID(bytes(buf[start:data_start])), data))
        pos = section_end
    return blocks, pos


class CarReader:
    """
    Reads a CAR fed in chunks of any size, checking everything: varints,
    the header, every CID and every block's hash, and the size limits.

    :attr:`roots` is ``None`` until the header has been read.  Once a call
    has raised :class:`CarError` the reader must not be fed again.
    """

    def __init__(
        self, *, max_header_size: int = MAX_HEADER_SIZE, max_block_size: int = MAX_BLOCK_SIZE
    ) -> None:
        self.max_header_size = max_header_size
        self.max_block_size = max_block_size
        self.roots: list[CID] | None = None
        self._buf = bytearray()
        self._offset = 0  # position of _buf[0] in the whole CAR

    @property
    def root(self) -> CID | None:
        """The first root (atproto's commit), or ``None``."""
        return self.roots[0] if self.roots else None

    def feed(self, data: bytes) -> list[tuple[CID, bytes]]:
        """Add a chunk; return the ``(cid, block)`` pairs it completed."""
        buf = self._buf
        buf += data
        blocks: list[tuple[CID, bytes]] = []
        pos = 0
        with memoryview(buf) as view:
            if self.roots is None:
                header = _read_header(view, self._offset, self.max_header_size)
                if header is None:
                    return blocks
                self.roots, pos = header
            blocks, pos = _read_blocks(view, pos, self._offset, self.max_block_size)
        del buf[:pos]
        self._offset += pos
        return blocks

    def finish(self) -> None:
        """The input has ended: raise if it ended inside the header or a block."""
        if self.roots is None:
            raise CarError("truncated CAR: the input ended inside the header")
        if self._buf:
            raise CarError(
                f"truncated CAR: the input ended inside the block at byte {self._offset}"
            )


def read_car(
    data: bytes,
    *,
    max_header_size: int = MAX_HEADER_SIZE,
    max_block_size: int = MAX_BLOCK_SIZE,
) -> tuple[CID | None, list[tuple[CID, bytes]]]:
    """Read a whole CAR: its first root (or ``None``) and its blocks, checked."""
    with memoryview(data) as view:
        header = _read_header(view, 0, max_header_size)
        if header is None:
            raise CarError("truncated CAR: the input ended inside the header")
        roots, pos = header
        blocks, pos = _read_blocks(view, pos, 0, max_block_size)
    if pos != len(data):
        raise CarError(f"truncated CAR: the input ended inside the block at byte {pos}")
    return (roots[0] if roots else None), blocks
