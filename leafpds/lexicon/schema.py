"""
Lexicon documents (https://atproto.com/specs/lexicon): checking that one is
a well-formed schema, and :class:`Lexicons`, the set the server knows.

The check is strict about what the validators rely on (each known field
has the right JSON type, refs are well formed, primary types sit only in
``main``) and lenient about the rest: fields this version does not know
are ignored, and an unrecognised type in ``main`` is kept as an opaque
definition, because new primary types (``permission-set`` was one) are how
the language grows.
"""

import functools
import importlib.util
import json
from importlib.resources.abc import Traversable
from typing import Any, Callable, Iterator

from leafpds.syntax import FORMATS, InvalidSyntax, validate_nsid, validate_record_key

__all__ = [
    "Lexicons",
    "LexiconError",
    "parse_lexicon_document",
    "absolute_ref",
    "METHOD_TYPES",
]


class LexiconError(ValueError):
    """A Lexicon document, or a reference into one, that is not a valid schema."""


METHOD_TYPES = frozenset(("query", "procedure", "subscription"))
_PRIMARY_TYPES = METHOD_TYPES | {"record", "permission-set"}
# Types a named definition may have besides the primary ones.  ref, union
# and unknown only make sense where a value goes, never as a named def.
_NAMED_TYPES = frozenset(
    ("null", "boolean", "integer", "string", "bytes", "cid-link", "blob", "array", "object")
)
_PARAM_ITEM_TYPES = frozenset(("boolean", "integer", "string"))
_PARAM_TYPES = _PARAM_ITEM_TYPES | {"unknown"}
_BODY_SCHEMA_TYPES = frozenset(("object", "ref", "union"))


def absolute_ref(ref: str, nsid: str) -> str:
    """
    ``ref`` (``#name``, ``nsid`` or ``nsid#name``) as written in the
    document ``nsid``, in canonical form: ``nsid`` for a main definition,
    ``nsid#name`` for any other.
    """
    if ref.startswith("#"):
        ref = nsid + ref
    if ref.endswith("#main"):
        ref = ref[: -len("#main")]
    return ref


def _check_ref(ref: Any, where: str) -> None:
    if not isinstance(ref, str) or not ref:
        raise LexiconError(f"{where}: a ref must be a non-empty string")
    target, _, name = ref.partition("#")
    if "#" in ref and (not name or "#" in name):
        raise LexiconError(f"{where}: ref {ref!r} has a bad fragment")
    if target:
        try:
            validate_nsid(target)
        except InvalidSyntax as e:
            raise LexiconError(f"{where}: ref {ref!r}: {e}") from None
    elif not name:
        raise LexiconError(f"{where}: empty ref")


def parse_lexicon_document(doc: Any) -> dict[str, Any]:
    """Check that ``doc`` is a valid Lexicon document and return it."""
    if not isinstance(doc, dict):
        raise LexiconError("a lexicon document must be a JSON object")
    if doc.get("lexicon") != 1 or isinstance(doc.get("lexicon"), bool):
        raise LexiconError("the lexicon field must be the integer 1")
    nsid = doc.get("id")
    if not isinstance(nsid, str):
        raise LexiconError("the id field must be a string")
    try:
        validate_nsid(nsid)
    except InvalidSyntax as e:
        raise LexiconError(f"the id field is not an NSID: {e}") from None
    _optional(doc, "revision", _is_int, "an integer", "document")
    _optional(doc, "description", _is_str, "a string", "document")
    defs = doc.get("defs")
    if not isinstance(defs, dict) or not defs:
        raise LexiconError(f"{nsid}: defs must be a non-empty object")
    for name, definition in defs.items():
        where = f"{nsid}#{name}"
        if not name or "#" in name:
            raise LexiconError(f"{where}: invalid definition name")
        _check_named_def(definition, name == "main", where)
    return doc


def _check_named_def(definition: Any, is_main: bool, where: str) -> None:
    type_ = _type_of(definition, where)
    if type_ in _PRIMARY_TYPES:
        if not is_main:
            raise LexiconError(f"{where}: a {type_} definition must be named main")
        _PRIMARY_CHECKS[type_](definition, where)
    elif type_ == "token":
        pass  # a name and a description, nothing to check
    elif type_ in _NAMED_TYPES:
        _check_field(definition, where)
    elif type_ in _FIELD_CHECKS or type_ in ("params", "permission"):
        raise LexiconError(f"{where}: type {type_!r} cannot be a named definition")
    elif not is_main:
        raise LexiconError(f"{where}: unknown type {type_!r}")


def _type_of(definition: Any, where: str) -> str:
    if not isinstance(definition, dict):
        raise LexiconError(f"{where}: a definition must be an object")
    type_ = definition.get("type")
    if not isinstance(type_, str):
        raise LexiconError(f"{where}: the type field must be a string")
    _optional(definition, "description", _is_str, "a string", where)
    return type_


def _check_field(definition: Any, where: str) -> None:
    """A schema in a value position: a property, array items, a body."""
    type_ = _type_of(definition, where)
    check = _FIELD_CHECKS.get(type_)
    if check is None:
        raise LexiconError(f"{where}: {type_!r} is not a field type")
    check(definition, where)


# Field types.


def _no_fields(definition: dict[str, Any], where: str) -> None:
    pass


def _check_boolean(definition: dict[str, Any], where: str) -> None:
    for key in ("default", "const"):
        _optional(definition, key, _is_bool, "a boolean", where)


def _check_integer(definition: dict[str, Any], where: str) -> None:
    for key in ("default", "const", "minimum", "maximum"):
        _optional(definition, key, _is_int, "an integer", where)
    _optional(definition, "enum", _is_int_list, "a list of integers", where)
    _check_range(definition, "minimum", "maximum", where)


def _check_string(definition: dict[str, Any], where: str) -> None:
    format_ = definition.get("format")
    if format_ is not None and format_ not in FORMATS:
        raise LexiconError(f"{where}: unknown string format {format_!r}")
    for key in ("minLength", "maxLength", "minGraphemes", "maxGraphemes"):
        _optional(definition, key, _is_size, "a non-negative integer", where)
    for key in ("default", "const"):
        _optional(definition, key, _is_str, "a string", where)
    for key in ("enum", "knownValues"):
        _optional(definition, key, _is_str_list, "a list of strings", where)
    _check_range(definition, "minLength", "maxLength", where)
    _check_range(definition, "minGraphemes", "maxGraphemes", where)


def _check_lengths(definition: dict[str, Any], where: str) -> None:
    """minLength and maxLength, as bytes and arrays have them."""
    for key in ("minLength", "maxLength"):
        _optional(definition, key, _is_size, "a non-negative integer", where)
    _check_range(definition, "minLength", "maxLength", where)


def _check_blob(definition: dict[str, Any], where: str) -> None:
    _optional(definition, "accept", _is_str_list, "a list of strings", where)
    _optional(definition, "maxSize", _is_size, "a non-negative integer", where)


def _check_array(definition: dict[str, Any], where: str) -> None:
    if "items" not in definition:
        raise LexiconError(f"{where}: an array needs items")
    _check_field(definition["items"], f"{where}/items")
    _check_lengths(definition, where)


def _check_object(definition: dict[str, Any], where: str) -> None:
    # The spec makes properties required, but one bundled document omits it.
    properties = definition.get("properties", {})
    if not isinstance(properties, dict):
        raise LexiconError(f"{where}: properties must be an object")
    for name, schema in properties.items():
        _check_field(schema, f"{where}/{name}")
    for key in ("required", "nullable"):
        _optional(definition, key, _is_str_list, "a list of strings", where)


def _check_ref_def(definition: dict[str, Any], where: str) -> None:
    _check_ref(definition.get("ref"), where)


def _check_union(definition: dict[str, Any], where: str) -> None:
    refs = definition.get("refs")
    if not isinstance(refs, list):
        raise LexiconError(f"{where}: a union needs a list of refs")
    for ref in refs:
        _check_ref(ref, where)
    _optional(definition, "closed", _is_bool, "a boolean", where)


_FIELD_CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "null": _no_fields,
    "boolean": _check_boolean,
    "integer": _check_integer,
    "string": _check_string,
    "bytes": _check_lengths,
    "cid-link": _no_fields,
    "blob": _check_blob,
    "array": _check_array,
    "object": _check_object,
    "ref": _check_ref_def,
    "union": _check_union,
    "unknown": _no_fields,
}


# Primary types and their parts.


def _check_record(definition: dict[str, Any], where: str) -> None:
    key = definition.get("key")
    if not isinstance(key, str):
        raise LexiconError(f"{where}: a record needs a key type")
    if key.startswith("literal:"):
        try:
            validate_record_key(key[len("literal:") :])
        except InvalidSyntax as e:
            raise LexiconError(f"{where}: bad literal key: {e}") from None
    elif key not in ("tid", "nsid", "any"):
        raise LexiconError(f"{where}: unknown record key type {key!r}")
    record = definition.get("record")
    if not isinstance(record, dict) or record.get("type") != "object":
        raise LexiconError(f"{where}: record must be an object schema")
    _check_object(record, f"{where}/record")


def _check_params(params: Any, where: str) -> None:
    if _type_of(params, where) != "params":
        raise LexiconError(f"{where}: parameters must have type params")
    properties = params.get("properties", {})
    if not isinstance(properties, dict):
        raise LexiconError(f"{where}: properties must be an object")
    for name, schema in properties.items():
        at = f"{where}/{name}"
        type_ = _type_of(schema, at)
        if type_ == "array":
            if _type_of(schema.get("items"), f"{at}/items") not in _PARAM_ITEM_TYPES:
                raise LexiconError(f"{at}: array parameters hold booleans, integers or strings")
        elif type_ not in _PARAM_TYPES:
            raise LexiconError(f"{at}: a parameter cannot have type {type_!r}")
        _check_field(schema, at)
    _optional(params, "required", _is_str_list, "a list of strings", where)


def _check_body(body: Any, where: str) -> None:
    if not isinstance(body, dict):
        raise LexiconError(f"{where}: must be an object")
    if not isinstance(body.get("encoding"), str):
        raise LexiconError(f"{where}: encoding must be a string")
    if "schema" in body:
        if _type_of(body["schema"], f"{where}/schema") not in _BODY_SCHEMA_TYPES:
            raise LexiconError(f"{where}/schema: must be an object, ref or union")
        _check_field(body["schema"], f"{where}/schema")


def _check_errors(definition: dict[str, Any], where: str) -> None:
    errors = definition.get("errors", [])
    if not isinstance(errors, list) or not all(
        isinstance(error, dict) and isinstance(error.get("name"), str) for error in errors
    ):
        raise LexiconError(f"{where}: errors must be a list of objects with a name")


def _check_method(definition: dict[str, Any], where: str) -> None:
    if "parameters" in definition:
        _check_params(definition["parameters"], f"{where}/parameters")
    for key in ("input", "output"):
        if key in definition:
            if key == "input" and definition["type"] != "procedure":
                raise LexiconError(f"{where}: only a procedure has an input")
            _check_body(definition[key], f"{where}/{key}")
    _check_errors(definition, where)


def _check_subscription(definition: dict[str, Any], where: str) -> None:
    if "parameters" in definition:
        _check_params(definition["parameters"], f"{where}/parameters")
    if "message" in definition:
        message = definition["message"]
        if not isinstance(message, dict) or "schema" not in message:
            raise LexiconError(f"{where}/message: must be an object with a schema")
        if _type_of(message["schema"], f"{where}/message") != "union":
            raise LexiconError(f"{where}/message: the schema must be a union")
        _check_field(message["schema"], f"{where}/message/schema")
    _check_errors(definition, where)


def _check_permission_set(definition: dict[str, Any], where: str) -> None:
    for key in ("title", "detail"):
        _optional(definition, key, _is_str, "a string", where)
        _optional(definition, f"{key}:lang", _is_str_map, "an object of strings", where)
    permissions = definition.get("permissions")
    if not isinstance(permissions, list):
        raise LexiconError(f"{where}: a permission-set needs a list of permissions")
    for index, permission in enumerate(permissions):
        at = f"{where}/permissions/{index}"
        if _type_of(permission, at) != "permission":
            raise LexiconError(f"{at}: must have type permission")
        if not isinstance(permission.get("resource"), str):
            raise LexiconError(f"{at}: resource must be a string")


_PRIMARY_CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "record": _check_record,
    "query": _check_method,
    "procedure": _check_method,
    "subscription": _check_subscription,
    "permission-set": _check_permission_set,
}


# Small predicates for field values.


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_size(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(item) for item in value)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


def _optional(
    definition: dict[str, Any], key: str, test: Callable[[Any], bool], what: str, where: str
) -> None:
    if key in definition and not test(definition[key]):
        raise LexiconError(f"{where}: {key} must be {what}")


def _check_range(definition: dict[str, Any], low: str, high: str, where: str) -> None:
    if low in definition and high in definition and definition[low] > definition[high]:
        raise LexiconError(f"{where}: {low} is greater than {high}")


class Lexicons:
    """
    A set of Lexicon documents, addressed by definition: ``nsid`` for a
    document's ``main`` (``nsid#main`` works too) and ``nsid#name`` for the
    others.  It also holds the validators compiled from them (see
    :mod:`leafpds.lexicon.validate`), so each definition is compiled once.
    """

    def __init__(self) -> None:
        self._defs: dict[str, dict[str, Any]] = {}
        self._compiled: dict[tuple[str, str], Any] = {}

    @classmethod
    def load_default(cls) -> "Lexicons":
        """
        The official lexicons bundled with the ``lexrpc`` package.  Loaded
        once per process and shared: do not :meth:`add` to the result.
        """
        return _default_lexicons()

    def add(self, doc: dict[str, Any]) -> None:
        """Add a document; :class:`LexiconError` if it is invalid or already here."""
        parse_lexicon_document(doc)
        nsid = doc["id"]
        if any(absolute_ref(f"#{name}", nsid) in self._defs for name in doc["defs"]):
            raise LexiconError(f"{nsid} is already loaded")
        for name, definition in doc["defs"].items():
            self._defs[absolute_ref(f"#{name}", nsid)] = definition

    def get_def(self, ref: str) -> dict[str, Any]:
        """The definition ``ref`` names; :class:`LexiconError` if there is none."""
        try:
            return self._defs[absolute_ref(ref, "")]
        except KeyError:
            raise LexiconError(f"no lexicon definition {ref}") from None

    def method_type(self, nsid: str) -> str | None:
        """``query``, ``procedure`` or ``subscription``; None if ``nsid`` is no method."""
        type_ = self._defs.get(nsid, {}).get("type")
        return type_ if type_ in METHOD_TYPES else None

    def has_record(self, nsid: str) -> bool:
        return self._defs.get(nsid, {}).get("type") == "record"

    def compiled(self, key: tuple[str, str], compile: Callable[[], Any]) -> Any:
        """``compile()``'s result, computed the first time ``key`` is asked for."""
        try:
            return self._compiled[key]
        except KeyError:
            result = self._compiled[key] = compile()
            return result


@functools.cache
def _default_lexicons() -> Lexicons:
    lexicons = Lexicons()
    for resource in _json_resources(_package_files("lexrpc") / "lexicons"):
        lexicons.add(json.loads(resource.read_bytes()))
    return lexicons


def _package_files(package: str) -> Traversable:
    """
    A package's resources, as importlib.resources.files() gives them, but
    without importing the package: importing lexrpc runs its client and
    server code (requests, websockets; 0.4 s), and only its data is used.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.loader is None:
        raise LexiconError(f"the {package} package is not installed")
    return spec.loader.get_resource_reader(spec.name).files()


def _json_resources(folder: Traversable) -> Iterator[Traversable]:
    for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if entry.is_dir():
            yield from _json_resources(entry)
        elif entry.name.endswith(".json"):
            yield entry
