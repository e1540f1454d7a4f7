"""Tests for leafpds.lexicon: schema documents, records, bodies and parameters."""

import copy
import json
from typing import Any

import grapheme  # installed with lexrpc; an independent UAX #29 implementation
import pytest
from hypothesis import given
from hypothesis import strategies as st

from leafpds.ipld.atjson import from_json
from leafpds.lexicon import (
    LexiconError,
    Lexicons,
    ValidationError,
    grapheme_count,
    parse_lexicon_document,
    validate_input,
    validate_output,
    validate_params,
    validate_record,
)
from leafpds.lexicon.schema import _json_resources, _package_files, absolute_ref
from leafpds.lexicon.validate import _def_check

from tests.vectors import VECTORS, load_json

RECORD = "example.lexicon.record"
CID = "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
BLOB_CID = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
POST_URI = f"at://{DID}/app.bsky.feed.post/3kznmn7xqxl22"


@pytest.fixture(scope="module")
def bundled() -> Lexicons:
    return Lexicons.load_default()


@pytest.fixture(scope="module")
def catalog() -> Lexicons:
    lexicons = Lexicons()
    for path in sorted((VECTORS / "lexicon" / "catalog").glob("*.json")):
        lexicons.add(json.loads(path.read_text(encoding="utf-8")))
    return lexicons


def lexicons_of(*docs: dict[str, Any]) -> Lexicons:
    lexicons = Lexicons()
    for doc in docs:
        lexicons.add(doc)
    return lexicons


def reason(excinfo: pytest.ExceptionInfo[ValidationError]) -> str:
    return str(excinfo.value)


# Lexicon documents.


def _named(cases: list[dict[str, Any]]) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[case["name"] for case in cases])


@_named(load_json("lexicon/lexicon-valid.json"))
def test_valid_lexicon_documents(case: dict[str, Any]) -> None:
    assert parse_lexicon_document(case["lexicon"]) is case["lexicon"]


@_named(load_json("lexicon/lexicon-invalid.json"))
def test_invalid_lexicon_documents(case: dict[str, Any]) -> None:
    with pytest.raises(LexiconError):
        parse_lexicon_document(case["lexicon"])


def _doc(defs: dict[str, Any], nsid: str = "com.example.test") -> dict[str, Any]:
    return {"lexicon": 1, "id": nsid, "defs": defs}


@pytest.mark.parametrize(
    "defs",
    [
        {},
        {"demo": {"type": "string", "format": "colour"}},
        {"demo": {"type": "widget"}},
        {"demo": {"type": "union", "refs": "#a"}},
        {"demo": {"type": "object", "properties": {"a": {"type": "ref", "ref": "#"}}}},
        {"demo": {"type": "object", "properties": {"a": {"type": "ref", "ref": "not an nsid"}}}},
        {"demo": {"type": "object", "properties": {"a": {"type": "token"}}}},
        {"demo": {"type": "integer", "minimum": 5, "maximum": 1}},
        {"demo": {"type": "string", "maxLength": "10"}},
        {"demo": {"type": "array"}},
        {"demo": {"type": "params", "properties": {}}},
        {"main": {"type": "record", "key": "uuid", "record": {"type": "object", "properties": {}}}},
        {
            "main": {
                "type": "query",
                "parameters": {"type": "params", "properties": {"a": {"type": "object"}}},
            }
        },
        {"main": {"type": "query", "output": {"schema": {"type": "object", "properties": {}}}}},
        {"main": {"type": "query", "output": {"encoding": "*/*", "schema": {"type": "string"}}}},
        {"main": {"type": "query", "input": {"encoding": "application/json"}}},
        {"main": {"type": "subscription", "message": {"schema": {"type": "object"}}}},
    ],
)
def test_more_invalid_lexicon_documents(defs: dict[str, Any]) -> None:
    with pytest.raises(LexiconError):
        parse_lexicon_document(_doc(defs))


def test_unknown_primary_type_in_main_is_kept() -> None:
    # New primary types are how Lexicon grows: one bundled document already
    # has a "space".
    lexicons = lexicons_of(_doc({"main": {"type": "space", "key": "any"}}))
    assert lexicons.get_def("com.example.test")["type"] == "space"
    assert lexicons.method_type("com.example.test") is None
    assert not lexicons.has_record("com.example.test")


def test_every_bundled_document_loads(bundled: Lexicons) -> None:
    documents = [
        json.loads(resource.read_bytes())
        for resource in _json_resources(_package_files("lexrpc") / "lexicons")
    ]
    # lexrpc==3.0 (pinned) bundles 576 documents.
    assert len(documents) == 576
    for doc in documents:
        assert parse_lexicon_document(doc) is doc
        for name, definition in doc["defs"].items():
            assert bundled.get_def(f"{doc['id']}#{name}") == definition


def _refs(node: Any, nsid: str) -> Any:
    if isinstance(node, dict):
        if node.get("type") == "ref":
            yield absolute_ref(node["ref"], nsid)
        if node.get("type") == "union":
            yield from (absolute_ref(ref, nsid) for ref in node["refs"])
        for value in node.values():
            yield from _refs(value, nsid)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value, nsid)


def test_every_bundled_ref_resolves(bundled: Lexicons) -> None:
    for resource in _json_resources(_package_files("lexrpc") / "lexicons"):
        doc = json.loads(resource.read_bytes())
        for ref in _refs(doc["defs"], doc["id"]):
            bundled.get_def(ref)


def test_every_bundled_definition_compiles(bundled: Lexicons) -> None:
    # Validating a value compiles the definition; the only acceptable
    # failure is a ValidationError about the (empty) data.
    for resource in _json_resources(_package_files("lexrpc") / "lexicons"):
        doc = json.loads(resource.read_bytes())
        nsid = doc["id"]
        for name, definition in doc["defs"].items():
            ref = absolute_ref(f"#{name}", nsid)
            if definition["type"] == "record":
                checks = [lambda: validate_record(bundled, nsid, {"$type": nsid})]
            elif bundled.method_type(ref) is not None:
                checks = [
                    lambda validate=validate: validate(bundled, nsid, {})
                    for validate in (validate_params, validate_input, validate_output)
                ]
            elif definition["type"] in ("permission-set", "space"):
                checks = []
            else:
                checks = [lambda: _def_check(bundled, ref)]
            for check in checks:
                try:
                    check()
                except ValidationError:
                    pass


def test_default_lexicons_are_loaded_once() -> None:
    assert Lexicons.load_default() is Lexicons.load_default()


def test_method_types_and_records(bundled: Lexicons) -> None:
    assert bundled.method_type("com.atproto.repo.createRecord") == "procedure"
    assert bundled.method_type("com.atproto.repo.listRecords") == "query"
    assert bundled.method_type("com.atproto.sync.subscribeRepos") == "subscription"
    assert bundled.method_type("app.bsky.feed.post") is None
    assert bundled.method_type("com.example.nothing") is None
    assert bundled.has_record("app.bsky.feed.post")
    assert bundled.has_record("app.bsky.actor.profile")
    assert not bundled.has_record("com.atproto.repo.createRecord")
    assert not bundled.has_record("com.example.nothing")


def test_get_def_forms(bundled: Lexicons) -> None:
    post = bundled.get_def("app.bsky.feed.post")
    assert post["type"] == "record"
    assert bundled.get_def("app.bsky.feed.post#main") is post
    assert bundled.get_def("app.bsky.feed.post#replyRef")["type"] == "object"
    with pytest.raises(LexiconError):
        bundled.get_def("app.bsky.feed.post#nothing")


def test_add_refuses_a_document_twice(catalog: Lexicons) -> None:
    doc = json.loads((VECTORS / "lexicon" / "catalog" / "record.json").read_text())
    with pytest.raises(LexiconError, match="already loaded"):
        catalog.add(doc)


# Records: the interop vectors against the catalog.


@_named(load_json("lexicon/record-data-valid.json"))
def test_valid_record_data(catalog: Lexicons, case: dict[str, Any]) -> None:
    validate_record(catalog, RECORD, from_json(case["data"]), case["rkey"])


@_named(load_json("lexicon/record-data-invalid.json"))
def test_invalid_record_data(catalog: Lexicons, case: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate_record(catalog, RECORD, from_json(case["data"]), case["rkey"])


@pytest.mark.parametrize(
    "unknown",
    [
        False,
        {"$bytes": "123"},
        {"$type": "blob", "mimeType": "text/plain", "size": 1, "ref": {"$link": CID}},
    ],
)
def test_unknown_must_be_a_plain_object(catalog: Lexicons, unknown: Any) -> None:
    # The vectors for these also lack the required "integer", so check the
    # unknown field on its own.
    data = from_json({"$type": RECORD, "integer": 1, "unknown": unknown})
    with pytest.raises(ValidationError) as excinfo:
        validate_record(catalog, RECORD, data)
    assert reason(excinfo) == "Record/unknown must be an object"


def test_record_errors_name_their_path(catalog: Lexicons) -> None:
    union = {"$type": f"{RECORD}#demoObject", "a": "x"}
    data = from_json({"$type": RECORD, "integer": 1, "union": union})
    with pytest.raises(ValidationError) as excinfo:
        validate_record(catalog, RECORD, data)
    assert excinfo.value.path == "Record/union/a"
    assert excinfo.value.reason == "must be an integer"
    assert str(excinfo.value) == "Record/union/a must be an integer"


def test_union_type_may_name_main_explicitly(catalog: Lexicons) -> None:
    lexicons = lexicons_of(
        _doc(
            {
                "main": {
                    "type": "record",
                    "key": "any",
                    "record": {
                        "type": "object",
                        "properties": {
                            "u": {"type": "union", "refs": ["com.example.inner"], "closed": True}
                        },
                    },
                }
            }
        ),
        _doc(
            {
                "main": {
                    "type": "object",
                    "required": ["x"],
                    "properties": {"x": {"type": "integer"}},
                }
            },
            "com.example.inner",
        ),
    )
    record = {"$type": "com.example.test", "u": {"$type": "com.example.inner#main", "x": 1}}
    validate_record(lexicons, "com.example.test", record)
    record["u"] = {"$type": "com.example.inner"}
    with pytest.raises(ValidationError) as excinfo:
        validate_record(lexicons, "com.example.test", record)
    assert reason(excinfo) == 'Record/u must have the property "x"'


def test_record_type_must_match_collection(catalog: Lexicons) -> None:
    with pytest.raises(ValidationError) as excinfo:
        validate_record(catalog, RECORD, {"$type": "example.lexicon.other", "integer": 1})
    assert reason(excinfo) == f"Record/$type must be {RECORD}"
    with pytest.raises(ValidationError):
        validate_record(catalog, RECORD, {"integer": 1})
    with pytest.raises(ValidationError) as excinfo:
        validate_record(catalog, RECORD, [1])
    assert reason(excinfo) == "Record must be an object"


def test_record_needs_a_record_lexicon(catalog: Lexicons) -> None:
    with pytest.raises(LexiconError):
        validate_record(catalog, "example.lexicon.query", {"$type": "example.lexicon.query"})
    with pytest.raises(LexiconError):
        validate_record(catalog, "com.example.nothing", {"$type": "com.example.nothing"})


def test_nullable_and_required(catalog: Lexicons) -> None:
    validate_record(catalog, RECORD, {"$type": RECORD, "integer": 1, "nullableString": None})
    with pytest.raises(ValidationError) as excinfo:
        validate_record(catalog, RECORD, {"$type": RECORD, "integer": None})
    assert reason(excinfo) == "Record/integer must be an integer"


def _keyed(key: str) -> Lexicons:
    record = {"type": "record", "key": key, "record": {"type": "object", "properties": {}}}
    return lexicons_of(_doc({"main": record}))


@pytest.mark.parametrize(
    "key, good, bad",
    [
        ("tid", "3kznmn7xqxl22", ["self", "3kznmn7xqxl2", "0000000000000"]),
        ("nsid", "com.example.thing", ["self", "3kznmn7xqxl22"]),
        ("literal:self", "self", ["Self", "other", "3kznmn7xqxl22"]),
        ("any", "any:thing~1", [".", "..", "a/b", "", "x" * 513]),
    ],
)
def test_record_key_types(key: str, good: str, bad: list[str]) -> None:
    lexicons = _keyed(key)
    record = {"$type": "com.example.test"}
    validate_record(lexicons, "com.example.test", record, good)
    for rkey in bad:
        with pytest.raises(ValidationError) as excinfo:
            validate_record(lexicons, "com.example.test", record, rkey)
        assert excinfo.value.path == "Record key"


def test_catalog_record_key_is_literal(catalog: Lexicons) -> None:
    with pytest.raises(ValidationError) as excinfo:
        validate_record(catalog, RECORD, {"$type": RECORD, "integer": 1}, "3kznmn7xqxl22")
    assert reason(excinfo) == "Record key must be 'demo'"


def test_recursive_definitions() -> None:
    tree = {
        "main": {
            "type": "record",
            "key": "any",
            "record": {"type": "object", "properties": {"root": {"type": "ref", "ref": "#node"}}},
        },
        "node": {
            "type": "object",
            "required": ["value"],
            "properties": {"value": {"type": "integer"}, "child": {"type": "ref", "ref": "#node"}},
        },
    }
    lexicons = lexicons_of(_doc(tree))
    good = {"value": 1, "child": {"value": 2, "child": {"value": 3}}}
    validate_record(lexicons, "com.example.test", {"$type": "com.example.test", "root": good})
    bad = copy.deepcopy(good)
    bad["child"]["child"]["value"] = "3"
    with pytest.raises(ValidationError) as excinfo:
        validate_record(lexicons, "com.example.test", {"$type": "com.example.test", "root": bad})
    assert reason(excinfo) == "Record/root/child/child/value must be an integer"


def test_tokens_and_blob_wildcards() -> None:
    lexicons = lexicons_of(
        _doc(
            {
                "main": {
                    "type": "record",
                    "key": "any",
                    "record": {
                        "type": "object",
                        "properties": {
                            "reason": {"type": "ref", "ref": "#spam"},
                            "any": {"type": "blob", "accept": ["*/*"]},
                            "exact": {"type": "blob", "accept": ["video/mp4", "image/*"]},
                            "flag": {"type": "boolean", "const": True},
                            "nothing": {"type": "null"},
                        },
                    },
                },
                "spam": {"type": "token"},
            }
        )
    )

    def blob(mime_type: str) -> dict[str, Any]:
        ref = from_json({"$link": BLOB_CID})
        return {"$type": "blob", "ref": ref, "mimeType": mime_type, "size": 10}

    def check(**fields: Any) -> None:
        validate_record(lexicons, "com.example.test", {"$type": "com.example.test", **fields})

    check(
        reason="com.example.test#spam",
        any=blob("application/x-whatever"),
        exact=blob("video/mp4"),
        flag=True,
        nothing=None,
    )
    check(exact=blob("image/webp"))
    for fields, message in [
        ({"reason": "com.example.test#ham"}, "Record/reason must be com.example.test#spam"),
        (
            {"exact": blob("video/webm")},
            "Record/exact must have a mimeType matching video/mp4 or image/*",
        ),
        (
            {"exact": {"cid": BLOB_CID, "mimeType": "image/png"}},
            "Record/exact should be a blob ref",
        ),
        ({"flag": False}, "Record/flag must be true"),
        ({"nothing": 0}, "Record/nothing must be null"),
    ]:
        with pytest.raises(ValidationError) as excinfo:
            check(**fields)
        assert reason(excinfo) == message


# Records: real app.bsky.feed.post records.


def _post(**fields: Any) -> dict[str, Any]:
    post = {
        "$type": "app.bsky.feed.post",
        "text": "hello world",
        "createdAt": "2024-05-01T12:00:00.000Z",
    }
    post.update(fields)
    return from_json(post)


def _image(mime_type: str = "image/jpeg", size: int = 12345) -> dict[str, Any]:
    return {
        "alt": "a cat",
        "image": {"$type": "blob", "ref": {"$link": BLOB_CID}, "mimeType": mime_type, "size": size},
        "aspectRatio": {"width": 4, "height": 3},
    }


def _images(*images: dict[str, Any]) -> dict[str, Any]:
    return {"$type": "app.bsky.embed.images", "images": list(images)}


def _post_error(bundled: Lexicons, post: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as excinfo:
        validate_record(bundled, "app.bsky.feed.post", post, "3kznmn7xqxl22")
    return reason(excinfo)


def test_valid_posts(bundled: Lexicons) -> None:
    strong_ref = {"uri": POST_URI, "cid": CID}
    full = _post(
        text="hi @alice.test https://example.com",
        langs=["en", "pt-BR"],
        facets=[
            {
                "index": {"byteStart": 3, "byteEnd": 14},
                "features": [{"$type": "app.bsky.richtext.facet#mention", "did": DID}],
            },
            {
                "index": {"byteStart": 15, "byteEnd": 34},
                "features": [
                    {"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com"},
                    # The features union is open: a type it does not know passes.
                    {"$type": "com.example.facet#sparkle", "colour": "gold"},
                ],
            },
        ],
        embed=_images(_image(), _image("image/png")),
        reply={"root": strong_ref, "parent": strong_ref},
        tags=["cats"],
        unexpected={"undeclared": "fields are allowed"},
    )
    validate_record(bundled, "app.bsky.feed.post", full, "3kznmn7xqxl22")
    # So is the embed union.
    validate_record(bundled, "app.bsky.feed.post", _post(embed={"$type": "com.example.embed"}))
    # 300 flags: 300 graphemes (the limit) in 600 code points and 2400 bytes.
    validate_record(bundled, "app.bsky.feed.post", _post(text="\U0001F1E9\U0001F1EA" * 300))


def test_invalid_posts(bundled: Lexicons) -> None:
    too_long = "Record/text must not be longer than 300 graphemes"
    assert _post_error(bundled, _post(text="é" * 301)) == too_long
    assert _post_error(bundled, _post(text="\U0001F1E9\U0001F1EA" * 301)) == too_long
    assert _post_error(bundled, _post(text="👩‍👩‍👦‍👦" * 130)) == (
        "Record/text must not be longer than 3000 characters"
    )
    bad_date = "Record/createdAt must be a valid datetime"
    assert _post_error(bundled, _post(createdAt="yesterday")) == bad_date
    assert _post_error(bundled, _post(createdAt="2024-02-30T12:00:00Z")) == bad_date
    no_date = _post()
    del no_date["createdAt"]
    assert _post_error(bundled, no_date) == 'Record must have the property "createdAt"'
    mention = {"$type": "app.bsky.richtext.facet#mention", "did": "alice.test"}
    facet = {"index": {"byteStart": 0, "byteEnd": 5}, "features": [mention]}
    assert _post_error(bundled, _post(facets=[facet])) == (
        "Record/facets/0/features/0/did must be a valid did"
    )
    untyped = {"index": {"byteStart": 0, "byteEnd": 5}, "features": [{"did": DID}]}
    assert _post_error(bundled, _post(facets=[untyped])) == (
        'Record/facets/0/features/0 must be an object which includes the "$type" property'
    )
    assert _post_error(bundled, _post(embed=_images(_image("text/html")))) == (
        "Record/embed/images/0/image must have a mimeType matching image/*"
    )
    assert _post_error(bundled, _post(embed=_images(_image(size=2_000_001)))) == (
        "Record/embed/images/0/image must not be larger than 2000000 bytes"
    )
    assert _post_error(bundled, _post(embed=_images(*[_image()] * 5))) == (
        "Record/embed/images must not have more than 4 elements"
    )
    legacy = {"alt": "", "image": {"cid": BLOB_CID, "mimeType": "image/png"}}
    assert _post_error(bundled, _post(embed=_images(legacy))) == (
        "Record/embed/images/0/image should be a blob ref"
    )
    assert _post_error(bundled, _post(embed={"images": []})) == (
        'Record/embed must be an object which includes the "$type" property'
    )
    assert _post_error(bundled, _post(langs=["english!"])) == (
        "Record/langs/0 must be a valid language"
    )


def test_post_record_key_must_be_a_tid(bundled: Lexicons) -> None:
    with pytest.raises(ValidationError) as excinfo:
        validate_record(bundled, "app.bsky.feed.post", _post(), "self")
    assert reason(excinfo) == "Record key must be a valid tid"


# Parameters.


def test_list_records_params(bundled: Lexicons) -> None:
    nsid = "com.atproto.repo.listRecords"
    base = {"repo": ["alice.test"], "collection": ["app.bsky.feed.post"]}
    assert validate_params(bundled, nsid, base) == {
        "repo": "alice.test",
        "collection": "app.bsky.feed.post",
        "limit": 50,
    }
    params = validate_params(
        bundled,
        nsid,
        {
            "repo": [DID],
            "collection": ["app.bsky.feed.like"],
            "limit": ["100", "7"],
            "reverse": ["true"],
            "cursor": [""],
            "unexpected": ["dropped"],
        },
    )
    assert params == {
        "repo": DID,
        "collection": "app.bsky.feed.like",
        "limit": 100,
        "reverse": True,
    }
    assert validate_params(bundled, nsid, {**base, "reverse": ["false"]})["reverse"] is False
    assert validate_params(bundled, nsid, {**base, "limit": ["1"]})["limit"] == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"limit": ["101"]}, "Params/limit can not be greater than 100"),
        ({"limit": ["0"]}, "Params/limit can not be less than 1"),
        ({"limit": ["ten"]}, "Params/limit must be an integer"),
        ({"limit": ["1.5"]}, "Params/limit must be an integer"),
        ({"limit": ["9" * 5000]}, "Params/limit must be an integer"),
        ({"reverse": ["yes"]}, "Params/reverse must be a boolean (true or false)"),
        ({"repo": ["not a handle"]}, "Params/repo must be a valid at-identifier"),
        ({"collection": ["app"]}, "Params/collection must be a valid nsid"),
        ({"repo": []}, 'Params must have the property "repo"'),
        ({"repo": [""]}, 'Params must have the property "repo"'),
    ],
)
def test_list_records_bad_params(
    bundled: Lexicons, extra: dict[str, list[str]], message: str
) -> None:
    raw = {"repo": ["alice.test"], "collection": ["app.bsky.feed.post"], **extra}
    with pytest.raises(ValidationError) as excinfo:
        validate_params(bundled, "com.atproto.repo.listRecords", raw)
    assert reason(excinfo) == message


def test_array_params(bundled: Lexicons) -> None:
    nsid = "app.bsky.actor.getProfiles"
    raw = {"actors": ["alice.test", DID]}
    assert validate_params(bundled, nsid, raw) == {"actors": ["alice.test", DID]}
    for raw, message in [
        ({"actors": ["alice.test", "bad handle"]}, "Params/actors/1 must be a valid at-identifier"),
        ({"actors": ["alice.test"] * 26}, "Params/actors must not have more than 25 elements"),
        ({}, 'Params must have the property "actors"'),
    ]:
        with pytest.raises(ValidationError) as excinfo:
            validate_params(bundled, nsid, raw)
        assert reason(excinfo) == message


def test_integer_array_params(catalog: Lexicons) -> None:
    nsid = "example.lexicon.query"
    params = validate_params(catalog, nsid, {"stringField": ["x"], "array": ["1", "-2"]})
    assert params == {"stringField": "x", "array": [1, -2]}
    with pytest.raises(ValidationError) as excinfo:
        validate_params(catalog, nsid, {"stringField": ["x"], "array": ["1", "b"]})
    assert reason(excinfo) == "Params/array/1 must be an integer"


def test_params_need_a_method(bundled: Lexicons) -> None:
    with pytest.raises(LexiconError):
        validate_params(bundled, "app.bsky.feed.post", {})


# Bodies.


def test_procedure_input(bundled: Lexicons) -> None:
    nsid = "com.atproto.repo.createRecord"
    good = {"repo": "alice.test", "collection": "app.bsky.feed.post", "record": {"text": "hi"}}
    validate_input(bundled, nsid, good)
    for value, message in [
        ([good], "Input must be an object"),
        ({**good, "record": 5}, "Input/record must be an object"),
        ({**good, "validate": "yes"}, "Input/validate must be a boolean"),
        ({"repo": "alice.test", "record": {}}, 'Input must have the property "collection"'),
        ({**good, "rkey": "a" * 600}, "Input/rkey must not be longer than 512 characters"),
    ]:
        with pytest.raises(ValidationError) as excinfo:
            validate_input(bundled, nsid, value)
        assert reason(excinfo) == message


def test_procedure_input_with_refs(bundled: Lexicons) -> None:
    nsid = "com.atproto.repo.applyWrites"
    create = {
        "$type": "com.atproto.repo.applyWrites#create",
        "collection": "app.bsky.feed.post",
        "value": {},
    }
    validate_input(bundled, nsid, {"repo": DID, "writes": [create]})
    delete = {"$type": "com.atproto.repo.applyWrites#delete", "collection": "app.bsky.feed.post"}
    with pytest.raises(ValidationError) as excinfo:
        validate_input(bundled, nsid, {"repo": DID, "writes": [create, delete]})
    assert reason(excinfo) == 'Input/writes/1 must have the property "rkey"'
    with pytest.raises(ValidationError) as excinfo:
        # The writes union is closed.
        other = {**create, "$type": "com.example.write"}
        validate_input(bundled, nsid, {"repo": DID, "writes": [other]})
    assert excinfo.value.path == "Input/writes/0"


def test_no_input_schema_is_not_checked(bundled: Lexicons) -> None:
    validate_input(bundled, "com.atproto.repo.listRecords", "anything")
    validate_input(bundled, "com.atproto.repo.uploadBlob", b"bytes")


def test_output_through_a_local_ref(bundled: Lexicons) -> None:
    nsid = "com.atproto.server.createAppPassword"
    password = {"name": "phone", "password": "abcd-efgh", "createdAt": "2024-05-01T12:00:00Z"}
    validate_output(bundled, nsid, password)
    with pytest.raises(ValidationError) as excinfo:
        validate_output(bundled, nsid, {"name": "phone", "password": "x", "createdAt": "soon"})
    assert reason(excinfo) == "Output/createdAt must be a valid datetime"
    with pytest.raises(ValidationError) as excinfo:
        validate_output(bundled, nsid, "phone")
    assert reason(excinfo) == "Output must be an object"


def test_missing_ref_target_is_a_schema_error(catalog: Lexicons) -> None:
    # The catalog's procedure refers to app.bsky.actor.defs, not loaded here.
    with pytest.raises(LexiconError):
        validate_input(catalog, "example.lexicon.procedure", {"preferences": []})


# Graphemes.


@pytest.mark.parametrize(
    "text, count",
    [
        ("", 0),
        ("hello", 5),
        ("a\r\nb", 3),
        ("e\u0301", 1),
        ("\U0001F3F3\uFE0F\u200D\U0001F308", 1),  # rainbow flag: ZWJ sequence
        ("\U0001F469\u200D\U0001F469\u200D\U0001F466\u200D\U0001F466", 1),  # family
        ("\U0001F1E9\U0001F1EA\U0001F1EB\U0001F1F7\U0001F1FA", 3),  # flags and a lone indicator
        ("\U0001F44D\U0001F3FD\U0001F44D", 2),  # skin tone modifier
        ("1\uFE0F\u20E3", 1),  # keycap
        ("\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F", 1),  # England
        ("\U0001FAE8", 1),  # newer than Python's Unicode data
        ("\u1100\u1161\u11A8\uAC00", 2),  # Hangul jamo, then a syllable
        ("नमस्ते", 4),
        ("a\u200Db", 2),  # ZWJ joins only pictographs
    ],
)
def test_grapheme_count(text: str, count: int) -> None:
    assert grapheme_count(text) == count
    assert grapheme.length(text) == count


# Text built from the pieces where grapheme clusters are interesting.
_CLUSTER_PIECES = st.sampled_from(
    [
        "a", "Z", " ", "\r", "\n", "\t", "é", "\u0301", "\u0308", "\u0903", "\u093F",
        "क", "्", "ष", "\u200D", "\u200C", "\uFE0F", "\u20E3", "\U0001F1E9", "\U0001F1EA",
        "\U0001F3FB", "\U0001F3FF", "\U0001F469", "\U0001F466", "\U0001F308", "\U0001F3F3",
        "\u2764", "\U0001F525", "\U000E0067", "\U000E007F", "\u1100", "\u1161", "\u11A8",
        "\uAC00", "\uAC01", "ก", "\u0E33", "\u00AD", "日",
    ]
)


@given(st.lists(_CLUSTER_PIECES, max_size=30).map("".join))
def test_grapheme_count_matches_uax29(text: str) -> None:
    assert grapheme_count(text) == grapheme.length(text)
