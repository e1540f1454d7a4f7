"""
The atproto JSON form of the data model.

In memory a data-model value is a dict with str keys, a list, str, int,
bool, None, bytes or a CID.  In JSON a CID is ``{"$link": "<cid>"}`` and
bytes are ``{"$bytes": "<base64>"}``; there are no floats, though a number
written ``123.0`` counts as the integer 123.  Reading JSON checks what the
data model requires: integers only, and only in the signed 64-bit range;
``$link`` and ``$bytes`` objects with no other keys; ``$type`` a non-empty
string; a blob (``$type: "blob"``) with exactly ``ref``, ``mimeType`` and
``size``.  The legacy blob form ``{"cid", "mimeType"}`` is an ordinary
object here: only a lexicon says where a blob is expected.

Duplicate keys in a JSON object are refused.  JSON leaves their meaning
open (Python and JavaScript keep the last, other parsers the first), and
the data model, like DAG-CBOR, has no way to hold them; refusing them means
no two readers can disagree about what a record says.
"""

import base64
import json
import math
from decimal import Decimal
from typing import Any

from leafpds.ipld.cid import CID, InvalidCID, parse_cid

__all__ = [
    "DataModelError",
    "loads",
    "from_json",
    "to_json",
    "dumps",
    "validate_record",
    "MAX_DEPTH",
]

MAX_DEPTH = 64
# atproto integers are signed 64-bit.
_MIN_INT = -(2**63)
_MAX_INT = 2**63 - 1
# A decimal whose exponent (as Decimal.adjusted() counts it) is above this is
# at least 10**19, beyond the 64-bit range.
_MAX_ADJUSTED_EXPONENT = 18

_TOO_DEEP = "nested too deeply"
_BLOB_KEYS = frozenset(("$type", "ref", "mimeType", "size"))


class DataModelError(ValueError):
    """
    A value that is not valid atproto data.  ``path`` is where, as the keys
    and list indices from the top (shown as a JSON Pointer).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []

    def __str__(self) -> str:
        if not self.path:
            return self.reason
        pointer = "".join(
            "/" + str(part).replace("~", "~0").replace("/", "~1")
            for part in self.path
        )
        return f"{self.reason} at {pointer}"


class _Refused:
    """
    What the JSON parser's hooks return for a number or object they refuse,
    so that the walk that follows reports the refusal with its path.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _parse_float(text: str) -> int | _Refused:
    # Called for every number with a fraction or an exponent.  Decimal is
    # exact, so "9007199254740993.0" stays 9007199254740993.
    number = Decimal(text)
    if number.is_zero():
        return 0
    if number.adjusted() > _MAX_ADJUSTED_EXPONENT:
        return _Refused(f"number {text} is out of the 64-bit integer range")
    if number != number.to_integral_value():
        return _Refused(f"number {text} is not an integer (floats are not allowed)")
    return int(number)


def _parse_constant(name: str) -> _Refused:
    return _Refused(f"{name} is not allowed")


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Refused:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                return _Refused(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def loads(text: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """
    Parse JSON text (UTF-8 if bytes) into a data-model value, refusing
    anything that is not valid atproto data.  Objects and arrays may nest at
    most ``max_depth`` deep.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(
            text,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
            object_pairs_hook=_object_pairs,
        )
    except RecursionError:
        raise DataModelError(f"nested too deeply (the limit is {max_depth} levels)") from None
    except ValueError as e:
        # JSONDecodeError, UnicodeDecodeError, or an integer with more
        # digits than Python converts.
        raise DataModelError(f"invalid JSON: {e}") from None
    return from_json(value, max_depth=max_depth)


def from_json(value: Any, *, max_depth: int = MAX_DEPTH) -> Any:
    """
    Convert an already-parsed JSON value (as :func:`json.loads` returns it)
    to a data-model value, with the same checks as :func:`loads`.
    """
    try:
        return _convert(value, max_depth)
    except RecursionError:
        # Only if max_depth is near the interpreter's recursion limit.
        raise DataModelError(f"nested too deeply (the limit is {max_depth} levels)") from None


def _convert(value: Any, depth: int) -> Any:
    """``value`` converted; ``depth`` is how many more levels may open."""
    if isinstance(value, str):
        _check_string(value)
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        _check_int(value)
        return value
    if isinstance(value, dict):
        if depth == 0:
            raise DataModelError(_TOO_DEEP)
        return _convert_object(value, depth - 1)
    if isinstance(value, list):
        if depth == 0:
            raise DataModelError(_TOO_DEEP)
        converted = []
        for index, item in enumerate(value):
            try:
                converted.append(_convert(item, depth - 1))
            except DataModelError as e:
                e.path.insert(0, index)
                raise
        return converted
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise DataModelError(f"number {value!r} is not an integer (floats are not allowed)")
        value = int(value)
        _check_int(value)
        return value
    if isinstance(value, _Refused):
        raise DataModelError(value.reason)
    raise DataModelError(f"{type(value).__name__} is not a JSON value")


def _convert_object(obj: dict[str, Any], depth: int) -> Any:
    if "$link" in obj:
        return _link(obj)
    if "$bytes" in obj:
        return _bytes(obj)
    converted = {}
    for key, item in obj.items():
        try:
            if not isinstance(key, str):
                raise DataModelError(f"object key {key!r} is not a string")
            _check_string(key)
            converted[key] = _convert(item, depth)
        except DataModelError as e:
            e.path.insert(0, key)
            raise
    if "$type" in converted:
        type_ = converted["$type"]
        if not isinstance(type_, str) or not type_:
            error = DataModelError("$type must be a non-empty string")
            error.path.append("$type")
            raise error
        if type_ == "blob":
            _check_blob(converted)
    return converted


def _link(obj: dict[str, Any]) -> CID:
    if len(obj) != 1:
        raise DataModelError("a $link object must have no other keys")
    link = obj["$link"]
    if not isinstance(link, str):
        raise DataModelError("$link must be a string")
    try:
        return parse_cid(link)
    except InvalidCID as e:
        raise DataModelError(f"$link: {e}") from None


def _bytes(obj: dict[str, Any]) -> bytes:
    if len(obj) != 1:
        raise DataModelError("a $bytes object must have no other keys")
    text = obj["$bytes"]
    if not isinstance(text, str):
        raise DataModelError("$bytes must be a string")
    # The spec writes base64 without padding; accept it with padding too,
    # and (like the reference implementation) with non-zero trailing bits,
    # as in the lexicon vectors' "123".
    text = text.rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character
        raise DataModelError("$bytes is not valid base64") from None


def _check_blob(blob: dict[str, Any]) -> None:
    if blob.keys() != _BLOB_KEYS:
        raise DataModelError("a blob must have exactly the keys $type, ref, mimeType and size")
    if not isinstance(blob["ref"], CID):
        raise DataModelError("blob ref must be a $link")
    mime_type = blob["mimeType"]
    if not isinstance(mime_type, str) or not mime_type:
        raise DataModelError("blob mimeType must be a non-empty string")
    size = blob["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise DataModelError("blob size must be a non-negative integer")


def _check_string(text: str) -> None:
    # JSON's \ud800 escapes can produce lone surrogates, which are not
    # Unicode text and which no CBOR encoder can write.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise DataModelError("string contains a lone surrogate") from None


def _check_int(value: int) -> None:
    if not _MIN_INT <= value <= _MAX_INT:
        raise DataModelError(f"integer {value} is out of the 64-bit range")


def validate_record(value: Any) -> dict[str, Any]:
    """Check that a data-model value can be a record: an object at the top level."""
    if not isinstance(value, dict):
        raise DataModelError("a record must be an object at the top level")
    return value


def to_json(value: Any) -> Any:
    """A data-model value as a JSON value: CIDs become $link objects, bytes $bytes."""
    try:
        return _to_json(value)
    except RecursionError:
        raise DataModelError(_TOO_DEEP) from None


def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if isinstance(value, (CID, bytes)):
        return _json_default(value)
    return value


def _json_default(value: Any) -> dict[str, str]:
    if isinstance(value, CID):
        return {"$link": value.encode()}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).rstrip(b"=").decode("ascii")}
    raise DataModelError(f"{type(value).__name__} is not a data-model value")


def dumps(value: Any) -> bytes:
    """
    A data-model value as compact UTF-8 JSON.  This trusts ``value`` to be
    data-model data (it does not refuse a float, for instance); the C encoder
    does the walking and calls back only for CIDs and bytes.
    """
    try:
        text = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), default=_json_default
        )
        return text.encode("utf-8")
    except RecursionError:
        raise DataModelError(_TOO_DEEP) from None
    except UnicodeEncodeError:
        raise DataModelError("string contains a lone surrogate") from None
