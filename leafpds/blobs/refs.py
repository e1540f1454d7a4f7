"""Finding the blobs a record refers to."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from leafpds.ipld.cid import CID, InvalidCID, parse_cid


@dataclass(frozen=True)
class BlobRef:
    cid: CID
    mime_type: str
    #: None for a legacy reference, which does not say.
    size: int | None


def find_blob_refs(value: Any) -> list[BlobRef]:
    """
    Every blob reference in a data-model value, in document order: the
    ``{"$type": "blob", "ref", "mimeType", "size"}`` form and the legacy
    ``{"cid", "mimeType"}`` one.
    """
    return list(_walk(value))


def _walk(value: Any) -> Iterator[BlobRef]:
    if isinstance(value, list):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        ref = _as_blob_ref(value)
        if ref is not None:
            yield ref
            return
        for item in value.values():
            yield from _walk(item)


def _as_blob_ref(value: dict) -> BlobRef | None:
    mime_type = value.get("mimeType")
    if not isinstance(mime_type, str):
        return None
    if value.get("$type") == "blob":
        cid, size = value.get("ref"), value.get("size")
        if isinstance(cid, CID) and isinstance(size, int) and not isinstance(size, bool):
            return BlobRef(cid, mime_type, size)
        return None
    if value.keys() == {"cid", "mimeType"} and isinstance(value["cid"], str):
        try:
            return BlobRef(parse_cid(value["cid"]), mime_type, None)
        except InvalidCID:
            return None
    return None
