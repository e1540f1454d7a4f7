"""
Validating data against lexicons: XRPC query parameters, JSON bodies and
records.

Values are data-model values (:mod:`leafpds.ipld.atjson`): CIDs are
:class:`~leafpds.ipld.cid.CID` objects, bytes are ``bytes`` and a blob is a
dict with ``$type: "blob"``.

Record validation runs on every write, so each definition is compiled once
into a closure (cached on the :class:`Lexicons`) that checks a value without
looking at the schema again.  A failing check raises the internal
:class:`_Invalid`, which collects the path on its way out; the happy path
builds no path strings at all.  Refs are resolved on first use, which lets
definitions refer to themselves and to documents added later.
"""

import functools
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Callable

from leafpds.ipld.cid import CID
from leafpds.lexicon.schema import METHOD_TYPES, LexiconError, Lexicons, absolute_ref
from leafpds.syntax import FORMATS, InvalidSyntax

__all__ = [
    "ValidationError",
    "validate_params",
    "validate_input",
    "validate_output",
    "validate_record",
    "grapheme_count",
]

# A compiled check: returns None or raises _Invalid.
Check = Callable[[Any], None]


class ValidationError(ValueError):
    """
    Data that does not match its lexicon.  ``path`` starts with a root label
    (``Record``, ``Params``, ``Input``, ``Output``) followed by the keys and
    indices down to the bad value, as in ``Record/embed/images/0/alt``.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.path = path
        self.reason = reason


class _Invalid(Exception):
    """A failed check; ``parts`` is the path to the value, innermost first."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parts: list[str] = []


def _run(check: Check, value: Any, root: str) -> None:
    try:
        check(value)
    except _Invalid as e:
        raise _error(e, root) from None


def _error(invalid: _Invalid, root: str) -> ValidationError:
    return ValidationError("/".join([root, *reversed(invalid.parts)]), invalid.reason)


# Entry points.


def validate_record(
    lex: Lexicons, collection: str, value: Any, rkey: str | None = None
) -> None:
    """
    Check a record against the record lexicon ``collection``: ``$type``,
    the schema and, when ``rkey`` is given, the lexicon's record key type.
    :class:`LexiconError` if ``collection`` has no record lexicon.
    """
    key_type, check = lex.compiled(
        ("record", collection), lambda: _compile_record(lex, collection)
    )
    if rkey is not None:
        _check_record_key(key_type, rkey)
    if not isinstance(value, dict):
        raise ValidationError("Record", "must be an object")
    if value.get("$type") != collection:
        raise ValidationError("Record/$type", f"must be {collection}")
    _run(check, value, "Record")


def validate_input(lex: Lexicons, nsid: str, value: Any) -> None:
    """Check a procedure's JSON input body (a no-op if the lexicon gives no schema)."""
    check = lex.compiled(("input", nsid), lambda: _compile_body(lex, nsid, "input"))
    if check is not None:
        _run(check, value, "Input")


def validate_output(lex: Lexicons, nsid: str, value: Any) -> None:
    """Check a method's JSON output body (a no-op if the lexicon gives no schema)."""
    check = lex.compiled(("output", nsid), lambda: _compile_body(lex, nsid, "output"))
    if check is not None:
        _run(check, value, "Output")


def validate_params(lex: Lexicons, nsid: str, raw: Mapping[str, list[str]]) -> dict[str, Any]:
    """
    Decode and check a method's query-string parameters: integers and
    booleans are parsed, arrays come from repeated parameters, defaults are
    filled in.  Like the reference implementation, parameters the lexicon
    does not declare are dropped, and an empty value counts as absent;
    a repeated parameter that is not an array takes its first value.
    """
    decoders, required = lex.compiled(("params", nsid), lambda: _compile_params(lex, nsid))
    params: dict[str, Any] = {}
    for name, decode, default in decoders:
        strings = [string for string in raw.get(name, ()) if string != ""]
        if strings:
            try:
                params[name] = decode(strings)
            except _Invalid as e:
                e.parts.append(name)
                raise _error(e, "Params") from None
        elif default is not None:
            params[name] = default
    for name in required:
        if name not in params:
            raise ValidationError("Params", f'must have the property "{name}"')
    return params


# Records, bodies and parameters.


def _compile_record(lex: Lexicons, collection: str) -> tuple[str, Check]:
    definition = lex.get_def(collection)
    if definition["type"] != "record":
        raise LexiconError(f"{collection} is a {definition['type']}, not a record")
    return definition["key"], _compile(lex, definition["record"], collection)


def _check_record_key(key_type: str, rkey: str) -> None:
    if key_type.startswith("literal:"):
        literal = key_type[len("literal:") :]
        if rkey != literal:
            raise ValidationError("Record key", f"must be {literal!r}")
        return
    # Every TID and every NSID is also a valid record key.
    format_ = "record-key" if key_type == "any" else key_type
    try:
        FORMATS[format_](rkey)
    except InvalidSyntax:
        raise ValidationError("Record key", f"must be a valid {format_}") from None


def _compile_body(lex: Lexicons, nsid: str, which: str) -> Check | None:
    definition = lex.get_def(nsid)
    if definition["type"] not in METHOD_TYPES:
        raise LexiconError(f"{nsid} is a {definition['type']}, not a method")
    schema = definition.get(which, {}).get("schema")
    if schema is None:
        return None
    check = _compile(lex, schema, nsid)
    if schema["type"] == "union":
        return check

    # A body is always an object, even when its schema is a ref.
    def body(value: Any) -> None:
        if not isinstance(value, dict):
            raise _Invalid("must be an object")
        check(value)

    return body


# A parameter decoder turns the non-empty strings given for a parameter into
# a checked value.
Decoder = Callable[[list[str]], Any]

# Bounded: int() refuses strings of more than 4300 digits, and no lexicon
# integer needs more than 19.
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def _parse_integer(string: str) -> Any:
    if not _INTEGER.fullmatch(string):
        raise _Invalid("must be an integer")
    return int(string)


def _parse_boolean(string: str) -> Any:
    if string == "true":
        return True
    if string == "false":
        return False
    raise _Invalid("must be a boolean (true or false)")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "integer": _parse_integer,
    "boolean": _parse_boolean,
    "string": str,
}


def _compile_params(lex: Lexicons, nsid: str) -> tuple[list[tuple[str, Decoder, Any]], list[str]]:
    definition = lex.get_def(nsid)
    if definition["type"] not in METHOD_TYPES:
        raise LexiconError(f"{nsid} is a {definition['type']}, not a method")
    params = definition.get("parameters", {})
    decoders = [
        (name, _compile_param(lex, schema, nsid), schema.get("default"))
        for name, schema in params.get("properties", {}).items()
    ]
    return decoders, list(params.get("required", ()))


def _compile_param(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Decoder:
    if schema["type"] == "unknown":
        # Whatever the string says: a query string cannot carry an object.
        return lambda strings: strings[0]
    check = _compile(lex, schema, nsid)
    if schema["type"] == "array":
        parse = _PARSERS[schema["items"]["type"]]

        def decode_array(strings: list[str]) -> Any:
            values = []
            for index, string in enumerate(strings):
                try:
                    values.append(parse(string))
                except _Invalid as e:
                    e.parts.append(str(index))
                    raise
            check(values)
            return values

        return decode_array
    parse = _PARSERS[schema["type"]]

    def decode(strings: list[str]) -> Any:
        value = parse(strings[0])
        check(value)
        return value

    return decode


# Compiling schemas into checks.


def _compile(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    """The check for a schema in a value position, within the document ``nsid``."""
    return _COMPILERS[schema["type"]](lex, schema, nsid)


def _def_check(lex: Lexicons, ref: str) -> Check:
    """The check for the named definition ``ref`` (canonical form)."""
    return lex.compiled(("def", ref), lambda: _compile_named(lex, ref))


def _compile_named(lex: Lexicons, ref: str) -> Check:
    definition = lex.get_def(ref)
    nsid = ref.partition("#")[0]
    type_ = definition["type"]
    if type_ == "record":
        return _compile(lex, definition["record"], nsid)
    if type_ == "token":
        # A token stands for itself: the value is its name.
        def token(value: Any) -> None:
            if value != ref:
                raise _Invalid(f"must be {ref}")

        return token
    if type_ not in _COMPILERS:
        raise LexiconError(f"{ref} is a {type_}, which does not describe a value")
    return _compile(lex, definition, nsid)


def _lazy(lex: Lexicons, ref: str) -> Check:
    """A check that resolves ``ref`` the first time it runs."""
    resolved: Check | None = None

    def check(value: Any) -> None:
        nonlocal resolved
        if resolved is None:
            resolved = _def_check(lex, ref)
        resolved(value)

    return check


def _compile_null(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    def check(value: Any) -> None:
        if value is not None:
            raise _Invalid("must be null")

    return check


def _compile_boolean(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    const = schema.get("const")

    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise _Invalid("must be a boolean")
        if const is not None and value is not const:
            raise _Invalid(f"must be {str(const).lower()}")

    return check


def _compile_integer(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    const = schema.get("const")
    enum = schema.get("enum")
    allowed = frozenset(enum) if enum is not None else None
    minimum = schema.get("minimum")
    maximum = schema.get("maximum")

    def check(value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid("must be an integer")
        if const is not None and value != const:
            raise _Invalid(f"must be {const}")
        if allowed is not None and value not in allowed:
            raise _Invalid(f"must be one of ({'|'.join(map(str, enum))})")
        if maximum is not None and value > maximum:
            raise _Invalid(f"can not be greater than {maximum}")
        if minimum is not None and value < minimum:
            raise _Invalid(f"can not be less than {minimum}")

    return check


def _compile_string(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    const = schema.get("const")
    enum = schema.get("enum")
    allowed = frozenset(enum) if enum is not None else None
    # knownValues is an open set: it documents, it does not restrict.
    min_length = schema.get("minLength")
    max_length = schema.get("maxLength")
    min_graphemes = schema.get("minGraphemes")
    max_graphemes = schema.get("maxGraphemes")
    format_ = schema.get("format")
    validate_format = FORMATS[format_] if format_ is not None else None

    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise _Invalid("must be a string")
        if const is not None and value != const:
            raise _Invalid(f"must be {const}")
        if allowed is not None and value not in allowed:
            raise _Invalid(f"must be one of ({'|'.join(enum)})")
        # Lengths count UTF-8 bytes.
        if max_length is not None or min_length is not None:
            size = len(value) if value.isascii() else _utf8_length(value)
            if max_length is not None and size > max_length:
                raise _Invalid(f"must not be longer than {max_length} characters")
            if min_length is not None and size < min_length:
                raise _Invalid(f"must not be shorter than {min_length} characters")
        # A string never has more graphemes than code points, so most
        # strings pass the maximum without being segmented.
        if (
            max_graphemes is not None
            and len(value) > max_graphemes
            and grapheme_count(value) > max_graphemes
        ):
            raise _Invalid(f"must not be longer than {max_graphemes} graphemes")
        if min_graphemes is not None and grapheme_count(value) < min_graphemes:
            raise _Invalid(f"must not be shorter than {min_graphemes} graphemes")
        if validate_format is not None:
            try:
                validate_format(value)
            except InvalidSyntax:
                raise _Invalid(f"must be a valid {format_}") from None

    return check


def _utf8_length(value: str) -> int:
    # surrogatepass: a lone surrogate is not valid data, but counting it
    # must not crash; the data-model checks reject it elsewhere.
    return len(value.encode("utf-8", "surrogatepass"))


def _compile_bytes(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    min_length = schema.get("minLength")
    max_length = schema.get("maxLength")

    def check(value: Any) -> None:
        if not isinstance(value, bytes):
            raise _Invalid("must be a byte array")
        if max_length is not None and len(value) > max_length:
            raise _Invalid(f"must not be larger than {max_length} bytes")
        if min_length is not None and len(value) < min_length:
            raise _Invalid(f"must not be smaller than {min_length} bytes")

    return check


def _compile_cid_link(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    def check(value: Any) -> None:
        if not isinstance(value, CID):
            raise _Invalid("must be a CID")

    return check


def _compile_blob(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    max_size = schema.get("maxSize")
    accept = schema.get("accept")
    accepts = _mime_matcher(accept) if accept is not None else None

    def check(value: Any) -> None:
        if not _is_blob(value):
            raise _Invalid("should be a blob ref")
        if max_size is not None and value["size"] > max_size:
            raise _Invalid(f"must not be larger than {max_size} bytes")
        if accepts is not None and not accepts(value["mimeType"]):
            raise _Invalid(f"must have a mimeType matching {' or '.join(accept)}")

    return check


def _is_blob(value: Any) -> bool:
    # The data-model checks ensure this shape for JSON, but records decoded
    # from DAG-CBOR reach here without them.
    if not isinstance(value, dict) or value.get("$type") != "blob":
        return False
    size = value.get("size")
    return (
        isinstance(value.get("ref"), CID)
        and isinstance(value.get("mimeType"), str)
        and isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 0
    )


def _mime_matcher(accept: list[str]) -> Callable[[str], bool]:
    """A test for MIME types: ``accept`` holds types, ``type/*`` and ``*/*``."""
    if "*/*" in accept:
        return lambda mime_type: True
    exact = frozenset(pattern for pattern in accept if not pattern.endswith("/*"))
    prefixes = tuple(pattern[:-1] for pattern in accept if pattern.endswith("/*"))
    return lambda mime_type: mime_type in exact or mime_type.startswith(prefixes)


def _compile_array(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    items = _compile(lex, schema["items"], nsid)
    min_length = schema.get("minLength")
    max_length = schema.get("maxLength")

    def check(value: Any) -> None:
        if not isinstance(value, list):
            raise _Invalid("must be an array")
        if max_length is not None and len(value) > max_length:
            raise _Invalid(f"must not have more than {max_length} elements")
        if min_length is not None and len(value) < min_length:
            raise _Invalid(f"must not have fewer than {min_length} elements")
        for index, item in enumerate(value):
            try:
                items(item)
            except _Invalid as e:
                e.parts.append(str(index))
                raise

    return check


_MISSING = object()


def _compile_object(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    required = tuple(schema.get("required", ()))
    nullable = frozenset(schema.get("nullable", ()))
    # Undeclared properties are allowed: the schema may be older than the data.
    fields = tuple(
        (name, _compile(lex, field, nsid), name in nullable)
        for name, field in schema.get("properties", {}).items()
    )

    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise _Invalid("must be an object")
        for name in required:
            if name not in value:
                raise _Invalid(f'must have the property "{name}"')
        for name, field, can_be_null in fields:
            item = value.get(name, _MISSING)
            if item is _MISSING or (item is None and can_be_null):
                continue
            try:
                field(item)
            except _Invalid as e:
                e.parts.append(name)
                raise

    return check


def _compile_ref(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    return _lazy(lex, absolute_ref(schema["ref"], nsid))


def _compile_union(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    refs = [absolute_ref(ref, nsid) for ref in schema["refs"]]
    members = {ref: _lazy(lex, ref) for ref in refs}
    closed = schema.get("closed", False)

    def check(value: Any) -> None:
        type_ = value.get("$type") if isinstance(value, dict) else None
        if not isinstance(type_, str):
            raise _Invalid('must be an object which includes the "$type" property')
        member = members.get(type_)
        if member is None and type_.endswith("#main"):
            member = members.get(type_[: -len("#main")])
        if member is not None:
            member(value)
        elif closed:
            raise _Invalid(f"$type must be one of {', '.join(refs)}")
        # An open union accepts types it does not know, unchecked.

    return check


def _compile_unknown(lex: Lexicons, schema: dict[str, Any], nsid: str) -> Check:
    # Only an object; its contents, even with a known $type, are not checked,
    # as in the reference implementation: whoever reads the value knows more.
    def check(value: Any) -> None:
        if not isinstance(value, dict) or value.get("$type") == "blob":
            raise _Invalid("must be an object")

    return check


_COMPILERS: dict[str, Callable[[Lexicons, dict[str, Any], str], Check]] = {
    "null": _compile_null,
    "boolean": _compile_boolean,
    "integer": _compile_integer,
    "string": _compile_string,
    "bytes": _compile_bytes,
    "cid-link": _compile_cid_link,
    "blob": _compile_blob,
    "array": _compile_array,
    "object": _compile_object,
    "ref": _compile_ref,
    "union": _compile_union,
    "unknown": _compile_unknown,
}


# Counting graphemes: extended grapheme clusters (Unicode UAX #29), which
# is what users see as characters and what maxGraphemes limits.
#
# Python's unicodedata has no Grapheme_Cluster_Break or
# Extended_Pictographic property, so the classes are derived from general
# categories and a few code point ranges.  That is exact for what posts
# contain (letters, combining marks, Hangul, CRLF, emoji with modifiers,
# flags, tag sequences, keycaps and ZWJ sequences) and may differ by a
# cluster for rare scripts: Prepend characters and the handful of spacing
# marks that Unicode counts as Extend.  Emoji newer than Python's Unicode
# data are unassigned here, so the emoji blocks count as pictographic
# whatever their category.

(
    _OTHER,
    _CR,
    _LF,
    _CONTROL,
    _EXTEND,
    _ZWJ,
    _REGIONAL_INDICATOR,
    _SPACING_MARK,
    _L,
    _V,
    _T,
    _LV,
    _LVT,
    _PICTOGRAPHIC,
) = range(14)

_BREAKS_AROUND = frozenset((_CR, _LF, _CONTROL))
_JOINS_PREVIOUS = frozenset((_EXTEND, _ZWJ, _SPACING_MARK))
_HANGUL_FOLLOWERS = {
    _L: frozenset((_L, _V, _LV, _LVT)),
    _LV: frozenset((_V, _T)),
    _V: frozenset((_V, _T)),
    _LVT: frozenset((_T,)),
    _T: frozenset((_T,)),
}


@functools.lru_cache(maxsize=4096)
def _break_class(char: str) -> int:
    code = ord(char)
    if 0x20 <= code < 0x7F:
        return _OTHER
    if char == "\r":
        return _CR
    if char == "\n":
        return _LF
    if code == 0x200D:
        return _ZWJ
    if 0x1F1E6 <= code <= 0x1F1FF:
        return _REGIONAL_INDICATOR
    # Emoji skin-tone modifiers, tag characters (subdivision flags), ZWNJ
    # and the half-width kana voicing marks: Extend, whatever their category.
    if (
        0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
        or code == 0x200C
        or 0xFF9E <= code <= 0xFF9F
    ):
        return _EXTEND
    if 0x1100 <= code <= 0x115F or 0xA960 <= code <= 0xA97C:
        return _L
    if 0x1160 <= code <= 0x11A7 or 0xD7B0 <= code <= 0xD7C6:
        return _V
    if 0x11A8 <= code <= 0x11FF or 0xD7CB <= code <= 0xD7FB:
        return _T
    if 0xAC00 <= code <= 0xD7A3:
        return _LV if (code - 0xAC00) % 28 == 0 else _LVT
    category = unicodedata.category(char)
    if category in ("Mn", "Me"):
        return _EXTEND
    # Thai and Lao SARA AM are letters by category but spacing marks here.
    if category == "Mc" or code in (0x0E33, 0x0EB3):
        return _SPACING_MARK
    if category in ("Cc", "Cf", "Zl", "Zp"):
        return _CONTROL
    if (
        category == "So"
        or 0x1F000 <= code <= 0x1FAFF
        or 0x1FC00 <= code <= 0x1FFFD
        or code in (0x203C, 0x2049)
    ):
        return _PICTOGRAPHIC
    return _OTHER


def grapheme_count(text: str) -> int:
    """The number of extended grapheme clusters in ``text``."""
    if text.isascii() and "\r" not in text:
        return len(text)
    count = 0
    previous: int | None = None
    regional_run = 0  # regional indicators in a row, ending at previous
    pictographic_run = False  # previous ends Pictographic Extend*
    zwj_after_pictographic = False  # previous is a ZWJ ending Pictographic Extend*
    for char in text:
        current = _break_class(char)
        if previous is None:
            joins = False
        elif previous == _CR and current == _LF:
            joins = True
        elif previous in _BREAKS_AROUND or current in _BREAKS_AROUND:
            joins = False
        elif current in _HANGUL_FOLLOWERS.get(previous, ()):
            joins = True
        elif current in _JOINS_PREVIOUS:
            joins = True
        elif current == _PICTOGRAPHIC:
            joins = zwj_after_pictographic
        elif current == _REGIONAL_INDICATOR:
            joins = regional_run % 2 == 1
        else:
            joins = False
        if not joins:
            count += 1
        zwj_after_pictographic = current == _ZWJ and pictographic_run
        pictographic_run = current == _PICTOGRAPHIC or (current == _EXTEND and pictographic_run)
        regional_run = regional_run + 1 if current == _REGIONAL_INDICATOR else 0
        previous = current
    return count
