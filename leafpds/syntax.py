"""
Validators for the atproto string formats (https://atproto.com/specs/).

Each ``validate_*`` function returns ``None`` for a valid value and raises
:class:`InvalidSyntax` otherwise.  They run on every record write, so every
pattern is compiled once and matched with ``fullmatch`` (``$`` would accept a
trailing newline).

Only syntax is checked here.  Policy, such as refusing to register handles
under ``.local`` or ``.onion`` (syntactically valid, per the handle spec),
belongs to the callers that need it.
"""

import re
from typing import Callable, NamedTuple


class InvalidSyntax(ValueError):
    """A string does not match the atproto format it claims to have."""


def _fail(kind: str, value: str, reason: str) -> InvalidSyntax:
    shown = value if len(value) <= 64 else value[:61] + "..."
    return InvalidSyntax(f"invalid {kind} {shown!r}: {reason}")


# Handles are hostnames: ASCII labels of 1-63 characters that neither start
# nor end with a hyphen, at least two of them, and a top-level domain that
# starts with a letter (which also rules out IPv4 addresses).
_HANDLE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+"
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
)
_HANDLE_MAX = 253


def validate_handle(value: str) -> None:
    if len(value) > _HANDLE_MAX:
        raise _fail("handle", value, f"longer than {_HANDLE_MAX} characters")
    if not _HANDLE.fullmatch(value):
        raise _fail("handle", value, "not a hostname with at least two labels")


def normalize_handle(value: str) -> str:
    """The canonical (lower-case) form of a valid handle."""
    validate_handle(value)
    return value.lower()


# Percent-encoding is allowed but, as the DID spec permits, not checked.
_DID = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_DID_MAX = 2048


def validate_did(value: str) -> None:
    if len(value) > _DID_MAX:
        raise _fail("did", value, f"longer than {_DID_MAX} characters")
    if not _DID.fullmatch(value):
        raise _fail("did", value, "expected did:<lowercase method>:<identifier>")


def validate_at_identifier(value: str) -> None:
    # Unambiguous: a handle can never contain a colon.
    if value.startswith("did:"):
        validate_did(value)
    else:
        validate_handle(value)


# A reversed domain (whose first label, the TLD, starts with a letter), then a
# name: a letter followed by letters and digits.
_NSID = re.compile(
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)
# The spec also caps the domain authority at 253 characters, but the official
# vectors (and the reference implementations) accept a longer one, so only the
# overall limit is enforced.
_NSID_MAX = 317


def validate_nsid(value: str) -> None:
    if len(value) > _NSID_MAX:
        raise _fail("nsid", value, f"longer than {_NSID_MAX} characters")
    if not _NSID.fullmatch(value):
        raise _fail("nsid", value, "expected a reversed domain and a name")


_RECORD_KEY = re.compile(r"[a-zA-Z0-9._:~-]{1,512}")


def validate_record_key(value: str) -> None:
    if value in (".", ".."):
        raise _fail("record-key", value, "'.' and '..' are not allowed")
    if not _RECORD_KEY.fullmatch(value):
        raise _fail(
            "record-key", value, "expected 1-512 characters from A-Za-z0-9._:~-"
        )


# The first character keeps the value within 64 bits.
_TID = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")


def validate_tid(value: str) -> None:
    if not _TID.fullmatch(value):
        raise _fail("tid", value, "expected 13 characters of base32-sortable")


class AtUri(NamedTuple):
    authority: str
    collection: str | None
    rkey: str | None


_AT_URI_MAX = 8 * 1024


def parse_at_uri(value: str) -> AtUri:
    """
    Split an AT URI in the restricted form Lexicon uses:
    ``at://AUTHORITY[/COLLECTION[/RKEY]]``, with no query, fragment or
    trailing slash.
    """
    if len(value) > _AT_URI_MAX:
        raise _fail("at-uri", value, f"longer than {_AT_URI_MAX} characters")
    if not value.startswith("at://"):
        raise _fail("at-uri", value, "must start with 'at://'")
    parts = value[5:].split("/")
    if len(parts) > 3:
        raise _fail("at-uri", value, "path has more than collection and rkey")
    try:
        validate_at_identifier(parts[0])
        if len(parts) > 1:
            validate_nsid(parts[1])
        if len(parts) > 2:
            validate_record_key(parts[2])
    except InvalidSyntax as e:
        raise _fail("at-uri", value, str(e)) from None
    return AtUri(
        parts[0],
        parts[1] if len(parts) > 1 else None,
        parts[2] if len(parts) > 2 else None,
    )


def validate_at_uri(value: str) -> None:
    parse_at_uri(value)


# Datetimes must satisfy RFC 3339, ISO 8601 and WHATWG HTML at once: upper-case
# T and Z, whole seconds, any fraction, and a mandatory zone.
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def validate_datetime(value: str) -> None:
    match = _DATETIME.fullmatch(value)
    if match is None:
        raise _fail("datetime", value, "expected YYYY-MM-DDThh:mm:ss[.f](Z|±hh:mm)")
    year, month, day, hour, minute, second = map(int, match.group(1, 2, 3, 4, 5, 6))
    sign, offset_hours, offset_minutes = match.group(7, 8, 9)
    # Python's datetime has no year 0, which the spec allows, so check by hand.
    if not 1 <= month <= 12:
        raise _fail("datetime", value, "month out of range")
    days = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= days:
        raise _fail("datetime", value, "day out of range")
    if hour > 23 or minute > 59 or second > 59:
        raise _fail("datetime", value, "time of day out of range")
    if sign is None:
        return
    if int(offset_hours) > 23 or int(offset_minutes) > 59:
        raise _fail("datetime", value, "time zone offset out of range")
    offset = int(offset_hours) * 3600 + int(offset_minutes) * 60
    if sign == "-" and offset == 0:
        raise _fail("datetime", value, "'-00:00' is not allowed; use 'Z'")
    # A positive offset moves the UTC instant earlier; on the first day of
    # year 0 that can fall before the Current Era, which is not allowed.
    local = hour * 3600 + minute * 60 + second
    if sign == "+" and (year, month, day) == (0, 1, 1) and local < offset:
        raise _fail("datetime", value, "falls before year 0 in UTC")


# RFC 5646 "well-formed" tags, with two restrictions the atproto vectors make:
# the primary language is a lower-case two- or three-letter ISO 639 code (not
# the reserved 4-8 letter forms), and subtags after it may be any case.
# Grandfathered and private-use tags are matched case-insensitively.
_LANGUAGE = re.compile(
    r"[a-z]{2,3}(?i:"
    r"(?:-[a-z]{3}){0,3}"  # extlang
    r"(?:-[a-z]{4})?"  # script
    r"(?:-(?:[a-z]{2}|[0-9]{3}))?"  # region
    r"(?P<variants>(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*)"
    r"(?P<extensions>(?:-[0-9a-wyz](?:-[a-z0-9]{2,8})+)*)"
    r"(?:-x(?:-[a-z0-9]{1,8})+)?"  # private use
    r")"
    r"|(?i:x(?:-[a-z0-9]{1,8})+)"
    r"|(?i:en-GB-oed|i-ami|i-bnn|i-default|i-enochian|i-hak|i-klingon|i-lux"
    r"|i-mingo|i-navajo|i-pwn|i-tao|i-tay|i-tsu|sgn-BE-FR|sgn-BE-NL|sgn-CH-DE"
    r"|art-lojban|cel-gaulish|no-bok|no-nyn|zh-guoyu|zh-hakka|zh-min|zh-min-nan"
    r"|zh-xiang)",
    # Without ASCII, case-insensitive [a-z] also matches "\u017f" and "\u212a".
    re.ASCII,
)


def validate_language(value: str) -> None:
    match = _LANGUAGE.fullmatch(value)
    if match is None:
        raise _fail("language", value, "not a well-formed BCP 47 tag")
    # RFC 5646 section 2.2.9: a tag that repeats a variant or an extension
    # singleton is not valid, whatever the case.
    variants = (match["variants"] or "").lower().split("-")[1:]
    if len(variants) != len(set(variants)):
        raise _fail("language", value, "repeated variant subtag")
    singletons = [
        subtag
        for subtag in (match["extensions"] or "").lower().split("-")
        if len(subtag) == 1
    ]
    if len(singletons) != len(set(singletons)):
        raise _fail("language", value, "repeated extension singleton")


# Any multibase string encoding of a CIDv1; the base58 CIDv0 form ("Qm...")
# is not allowed in atproto.
_CID = re.compile(r"[a-zA-Z0-9+=]{8,256}")


def validate_cid(value: str) -> None:
    if not _CID.fullmatch(value):
        raise _fail("cid", value, "expected 8-256 characters of a multibase string")
    if value.startswith("Qm"):
        raise _fail("cid", value, "CIDv0 is not supported")


# RFC 3986: a scheme, a colon, then at least one more printable ASCII
# character (no whitespace).
_URI = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:[!-~]+")
_URI_MAX = 8 * 1024


def validate_uri(value: str) -> None:
    if len(value) > _URI_MAX:
        raise _fail("uri", value, f"longer than {_URI_MAX} characters")
    if not _URI.fullmatch(value):
        raise _fail("uri", value, "expected scheme:rest with no whitespace")


FORMATS: dict[str, Callable[[str], None]] = {
    "at-identifier": validate_at_identifier,
    "at-uri": validate_at_uri,
    "cid": validate_cid,
    "datetime": validate_datetime,
    "did": validate_did,
    "handle": validate_handle,
    "language": validate_language,
    "nsid": validate_nsid,
    "record-key": validate_record_key,
    "tid": validate_tid,
    "uri": validate_uri,
}


def is_valid(format: str, value: str) -> bool:
    """
    Whether ``value`` has the Lexicon string ``format``.  An unknown format
    raises ``KeyError``: that is a schema problem, not a data problem.
    """
    validate = FORMATS[format]
    try:
        validate(value)
    except InvalidSyntax:
        return False
    return True
