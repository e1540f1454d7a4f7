"""
The IPLD layer: the DAG-CBOR codec and CIDs against independent
implementations (``dag_cbor``, ``multiformats``), CAR files against the
atproto SDK's reader, and the atproto JSON form against the official
data-model vectors.
"""

import base64
import io
import json

import dag_cbor
import multiformats
import pytest
from atproto import CAR
from hypothesis import given, settings
from hypothesis import strategies as st

from leafpds.ipld import atjson, codec
from leafpds.ipld.car import CarError, CarReader, CarWriter, encode_car, read_car
from leafpds.ipld.cid import CID, InvalidCID, cid_for_cbor, cid_for_raw, parse_cid
from tests.vectors import load_json

# -- strategies ---------------------------------------------------------------

cids = st.builds(
    lambda prefix, digest: CID(prefix + digest),
    st.sampled_from([b"\x01\x71\x12\x20", b"\x01\x55\x12\x20"]),
    st.binary(min_size=32, max_size=32),
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text()
    | st.binary()
    | cids
)
# Keys starting with "$" are left out: in JSON "$type", "$link" and "$bytes"
# have meanings that a random value would not satisfy.
keys = st.text().filter(lambda key: not key.startswith("$"))
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def to_multiformats(value):
    """The same value with multiformats CIDs, for the dag_cbor oracle."""
    if isinstance(value, CID):
        return multiformats.CID.decode(value.cid_bytes)
    if isinstance(value, dict):
        return {key: to_multiformats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_multiformats(item) for item in value]
    return value


def cid_string(prefix: bytes, digest: bytes = b"\x11" * 32) -> str:
    return CID(prefix + digest).encode()


# -- codec --------------------------------------------------------------------


@settings(max_examples=300)
@given(values)
def test_encode_matches_dag_cbor_package(value):
    assert codec.encode(value) == dag_cbor.encode(to_multiformats(value))


@settings(max_examples=300)
@given(values)
def test_decode_round_trips(value):
    data = codec.encode(value)
    assert codec.decode(data) == value
    assert codec.encode(codec.decode(data)) == data


def test_encode_with_cid():
    cid, data = codec.encode_with_cid({"a": 1})
    assert data == codec.encode({"a": 1})
    assert cid == cid_for_cbor(data)


def test_map_keys_sorted_by_length_then_bytes():
    assert codec.encode({"bb": 1, "a": 2, "c": 3}) == bytes.fromhex("a3616102616303626262" "01")


@pytest.mark.parametrize(
    "hex_data",
    [
        "a2616201616101",  # keys out of order
        "a2616101616102",  # duplicate key
        "a26262620161610201",  # longer key first
        "1801",  # 1 written in two bytes
        "190001",  # 1 written in three bytes
        "3817",  # -24 written in two bytes
        "5801ff",  # one-byte string with a long length
        "9f01ff",  # indefinite-length array
        "bf616101ff",  # indefinite-length map
        "5f4101ff",  # indefinite-length bytes
        "0101",  # trailing bytes
        "c101",  # tag 1
        "d82a4401711220",  # CID without the 0x00 prefix
        "d82a6161",  # CID as a text string
        "f7",  # undefined
        "f820",  # simple value
        "f93c00",  # half float
        "a10101",  # integer map key
        "61ff",  # invalid UTF-8
        "",  # nothing
        "8201",  # truncated array
    ],
)
def test_decode_refuses_non_canonical(hex_data):
    with pytest.raises(codec.DecodeError):
        codec.decode(bytes.fromhex(hex_data))


# -- CID ----------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_cids_match_multiformats(data):
    for ours, codec_name in ((cid_for_cbor(data), "dag-cbor"), (cid_for_raw(data), "raw")):
        theirs = multiformats.CID(
            "base32", 1, codec_name, multiformats.multihash.digest(data, "sha2-256")
        )
        assert ours.cid_bytes == bytes(theirs)
        assert ours.encode() == theirs.encode("base32")


def test_parse_cid_forms():
    cid = cid_for_cbor(b"block")
    assert parse_cid(cid.encode()) == cid
    assert parse_cid(cid.cid_bytes) == cid
    blob = cid_for_raw(b"blob")
    assert parse_cid(blob.encode()) == blob
    fixture = "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2a"
    assert parse_cid(fixture).encode() == fixture


@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2",  # one short
        "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2b",  # stray bits
        "BAFYREIDFAYVFUWQA7QLNOPDJIQRXZS6BLMOEU4RUJCJTNCI5BELUDIRZ2A",
        "bAFYREIDFAYVFUWQA7QLNOPDJIQRXZS6BLMOEU4RUJCJTNCI5BELUDIRZ2A",
        " bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2",
        "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR",  # CIDv0
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",  # dag-pb
        "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz!a",
        cid_string(b"\x01\x70\x12\x20"),  # dag-pb codec
        cid_string(b"\x01\x71\x13\x20"),  # sha2-512 code
        "\x00\x01\x71\x12\x20" + "a" * 54,  # identity multibase
        b"\x12\x20" + b"\x11" * 32,  # binary CIDv0
        b"\x01\x71\x12\x20" + b"\x11" * 31,  # short digest
        b"\x01\x71\x12\x20" + b"\x11" * 33,  # long digest
        b"\x01\x72\x12\x20" + b"\x11" * 32,  # unknown codec
        b"",
    ],
)
def test_parse_cid_refuses(value):
    with pytest.raises(InvalidCID):
        parse_cid(value)


# -- CAR ----------------------------------------------------------------------


def sample_blocks(count: int = 5) -> list[tuple[CID, bytes]]:
    blocks = [codec.encode_with_cid({"n": n, "text": "x" * n * 40}) for n in range(count)]
    blob = b"raw bytes"
    blocks.append((cid_for_raw(blob), blob))
    blocks.append((cid_for_raw(b""), b""))
    return blocks


def varint(n: int) -> bytes:
    return multiformats.varint.encode(n)


def section(cid: CID, data: bytes) -> bytes:
    return varint(len(cid.cid_bytes) + len(data)) + cid.cid_bytes + data


def header(value) -> bytes:
    data = dag_cbor.encode(value)
    return varint(len(data)) + data


def root_header(root: CID) -> bytes:
    return header({"version": 1, "roots": [multiformats.CID.decode(root.cid_bytes)]})


def test_car_writer_round_trip():
    blocks = sample_blocks()
    root = blocks[0][0]
    out = io.BytesIO()
    writer = CarWriter(out.write, root)
    for cid, data in blocks:
        writer.add(cid, data)
    car = out.getvalue()
    assert car == encode_car(root, blocks)
    assert read_car(car) == (root, blocks)

    reader = CarReader()
    assert reader.feed(car) == blocks
    reader.finish()
    assert reader.root == root
    assert reader.roots == [root]


def test_car_writer_streams():
    writes = []
    writer = CarWriter(writes.append, None)
    assert len(writes) == 1  # the header, at once
    for cid, data in sample_blocks(3):
        writer.add(cid, data)
        assert writes[-1] == section(cid, data)
    assert len(writes) == 1 + len(sample_blocks(3))


def test_car_without_root():
    blocks = sample_blocks(2)
    car = encode_car(None, blocks)
    assert car.startswith(header({"version": 1, "roots": []}))
    assert read_car(car) == (None, blocks)
    reader = CarReader()
    assert reader.roots is None
    reader.feed(car)
    assert reader.roots == []
    assert reader.root is None


def test_car_fed_byte_by_byte():
    blocks = sample_blocks()
    car = encode_car(blocks[0][0], blocks)
    reader = CarReader()
    received = []
    for i in range(len(car)):
        received.extend(reader.feed(car[i : i + 1]))
    reader.finish()
    assert received == blocks
    assert reader.root == blocks[0][0]


@pytest.mark.parametrize("chunk", [2, 3, 7, 64, 1000])
def test_car_fed_in_chunks(chunk):
    blocks = sample_blocks(30)
    car = encode_car(blocks[0][0], blocks)
    reader = CarReader()
    received = []
    for i in range(0, len(car), chunk):
        received.extend(reader.feed(car[i : i + chunk]))
    reader.finish()
    assert received == blocks


def test_every_truncation_refused():
    blocks = sample_blocks(3)
    car = encode_car(blocks[0][0], blocks)
    # A CAR cut at a section boundary is a valid shorter CAR; cut anywhere else is not.
    boundaries = set()
    boundary = len(root_header(blocks[0][0]))
    for cid, data in blocks:
        boundaries.add(boundary)
        boundary += len(section(cid, data))
    for cut in range(len(car)):
        if cut in boundaries:
            assert read_car(car[:cut])[0] == blocks[0][0]
            continue
        with pytest.raises(CarError, match="truncated"):
            read_car(car[:cut])
        reader = CarReader()
        reader.feed(car[:cut])
        with pytest.raises(CarError, match="truncated"):
            reader.finish()


def test_car_read_by_atproto_sdk():
    blocks = sample_blocks(4)[:4]  # dag-cbor blocks: the SDK decodes every block
    linked_cid, linked = codec.encode_with_cid({"link": blocks[0][0], "bytes": b"\x01"})
    blocks.append((linked_cid, linked))
    car = encode_car(linked_cid, blocks)
    theirs = CAR.from_bytes(car)
    assert str(theirs.root) == linked_cid.encode()
    decoded = {str(cid): value for cid, value in theirs.blocks.items()}
    assert decoded.keys() == {cid.encode() for cid, _ in blocks}
    assert decoded[linked_cid.encode()] == {"link": blocks[0][0].cid_bytes, "bytes": b"\x01"}
    for cid, data in blocks[:4]:
        assert decoded[cid.encode()] == codec.decode(data)


def test_car_written_independently():
    """A CAR assembled with dag_cbor and multiformats reads the same."""
    blocks = sample_blocks(4)
    root = blocks[1][0]
    car = root_header(root) + b"".join(section(cid, data) for cid, data in blocks)
    assert car == encode_car(root, blocks)
    assert read_car(car) == (root, blocks)


def test_car_with_many_blocks():
    blocks = [codec.encode_with_cid({"text": f"record {n}", "n": n}) for n in range(20000)]
    car = encode_car(blocks[0][0], blocks)
    root, read = read_car(car)
    assert root == blocks[0][0]
    assert read == blocks


def test_car_root_is_first_of_several():
    first, second = cid_for_cbor(b"1"), cid_for_cbor(b"2")
    roots = [multiformats.CID.decode(c.cid_bytes) for c in (first, second)]
    reader = CarReader()
    reader.feed(header({"version": 1, "roots": roots}))
    assert reader.roots == [first, second]
    assert reader.root == first


GOOD_CID, GOOD_DATA = codec.encode_with_cid({"a": 1})
GOOD_HEADER = root_header(GOOD_CID)
GOOD_SECTION = section(GOOD_CID, GOOD_DATA)
OTHER_CID = multiformats.CID(
    "base32", 1, "dag-pb", multiformats.multihash.digest(b"x", "sha2-256")
)


@pytest.mark.parametrize(
    "car, message",
    [
        (b"", "truncated"),
        (b"\x80" * 10, "longer than 9 bytes"),
        (b"\x81\x00" + b"\xa0", "not minimally encoded"),
        (b"\x00", "header is empty"),
        (header([1]), "not a map"),
        (varint(3) + b"\xa1\x61\x61", "not DAG-CBOR"),
        (varint(5) + bytes.fromhex("a2616201616101"), "not DAG-CBOR"),
        (header({"version": 2, "roots": []}), "version"),
        (header({"version": True, "roots": []}), "version"),
        (header({"version": 1}), "exactly the keys"),
        (header({"version": 1, "roots": [], "extra": 1}), "exactly the keys"),
        (header({"version": 1, "roots": {}}), "not a list"),
        (header({"version": 1, "roots": ["bafy"]}), "not a CIDv1"),
        (header({"version": 1, "roots": [OTHER_CID]}), "not a CIDv1"),
        (varint(64 * 1024 + 1), "larger than"),
        (GOOD_HEADER + b"\xff" * 10, "longer than 9 bytes"),
        (GOOD_HEADER + b"\x80\x00", "not minimally encoded"),
        (GOOD_HEADER + varint(35) + GOOD_CID.cid_bytes[:35], "cannot hold"),
        (GOOD_HEADER + b"\x00", "cannot hold"),
        (GOOD_HEADER + varint(36 + 2 * 1024 * 1024 + 1), "larger than"),
        (GOOD_HEADER + varint(34 + 3) + b"\x12\x20" + b"\x11" * 32 + b"abc", "not a CIDv1"),
        (GOOD_HEADER + varint(40) + bytes(OTHER_CID) + b"abcd", "not a CIDv1"),
        (GOOD_HEADER + varint(len(GOOD_SECTION)) + GOOD_CID.cid_bytes + b"x", "truncated"),
        (GOOD_HEADER + section(GOOD_CID, GOOD_DATA + b"\x00"), "does not match"),
        (GOOD_HEADER + section(cid_for_raw(GOOD_DATA), GOOD_DATA[:-1]), "does not match"),
        (GOOD_HEADER + GOOD_SECTION + GOOD_SECTION[:-1], "truncated"),
    ],
    ids=lambda param: param if isinstance(param, str) else "car",
)
def test_malformed_car_refused(car, message):
    with pytest.raises(CarError, match=message):
        read_car(car)
    # The streaming reader refuses the same input, fed one byte at a time.
    with pytest.raises(CarError, match=message):
        reader = CarReader()
        for i in range(len(car)):
            reader.feed(car[i : i + 1])
        reader.finish()


def test_unsupported_cid_refused_before_its_block_arrives():
    reader = CarReader()
    reader.feed(GOOD_HEADER)
    with pytest.raises(CarError, match="not a CIDv1"):
        reader.feed(varint(1000) + bytes(OTHER_CID)[:4])


def test_car_limits_are_settable():
    big_cid, big = cid_for_raw(b"x" * 1000), b"x" * 1000
    car = encode_car(GOOD_CID, [(big_cid, big)])
    assert read_car(car)[1] == [(big_cid, big)]
    with pytest.raises(CarError, match="larger than 999 bytes"):
        read_car(car, max_block_size=999)
    with pytest.raises(CarError, match="larger than 10 bytes"):
        read_car(car, max_header_size=10)
    reader = CarReader(max_block_size=999)
    with pytest.raises(CarError, match="larger than 999 bytes"):
        reader.feed(car)


def test_car_error_is_value_error():
    assert issubclass(CarError, ValueError)


# -- atproto JSON -------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture", load_json("data-model/data-model-fixtures.json"), ids=lambda f: f["cid"]
)
def test_data_model_fixtures(fixture):
    value = atjson.loads(json.dumps(fixture["json"]))
    data = codec.encode(value)
    assert base64.b64encode(data).rstrip(b"=").decode() == fixture["cbor_base64"]
    assert cid_for_cbor(data).encode() == fixture["cid"]
    decoded = codec.decode(data)
    assert atjson.to_json(decoded) == fixture["json"]
    assert json.loads(atjson.dumps(decoded)) == fixture["json"]
    assert atjson.from_json(fixture["json"]) == value


@pytest.mark.parametrize(
    "case", load_json("data-model/data-model-valid.json"), ids=lambda c: c["note"]
)
def test_data_model_valid(case):
    # Python's json reads "123.0" as a float: from_json must take it, and
    # loads must take the text json.dumps writes back ("123.0" again).
    value = atjson.validate_record(atjson.from_json(case["json"]))
    assert atjson.loads(json.dumps(case["json"])) == value


def test_data_model_valid_integral_float_text():
    text = '{"rcrd": {"$type": "com.example.blah", "a": 123.0, "b": "blah"}}'
    value = atjson.loads(text)
    assert value["rcrd"]["a"] == 123 and type(value["rcrd"]["a"]) is int


@pytest.mark.parametrize(
    "case", load_json("data-model/data-model-invalid.json"), ids=lambda c: c["note"]
)
def test_data_model_invalid(case):
    with pytest.raises(atjson.DataModelError):
        atjson.validate_record(atjson.loads(json.dumps(case["json"])))
    with pytest.raises(atjson.DataModelError):
        atjson.validate_record(atjson.from_json(case["json"]))


@settings(max_examples=300)
@given(values)
def test_json_round_trip(value):
    assert atjson.loads(atjson.dumps(value)) == value
    assert atjson.from_json(atjson.to_json(value)) == value
    assert json.loads(atjson.dumps(value)) == atjson.to_json(value)


def test_dumps_is_compact_utf8_with_unpadded_base64():
    cid = cid_for_raw(b"blob")
    out = atjson.dumps({"b": b"\x01\x02", "c": cid, "t": "é"})
    assert out == (
        '{"b":{"$bytes":"AQI"},"c":{"$link":"' + cid.encode() + '"},"t":"é"}'
    ).encode("utf-8")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_depth_limit():
    assert atjson.loads(nested(64)) is not None
    with pytest.raises(atjson.DataModelError, match="nested"):
        atjson.loads(nested(65))
    assert atjson.loads(nested(65), max_depth=65) is not None
    with pytest.raises(atjson.DataModelError, match="nested"):
        atjson.loads(nested(3), max_depth=2)
    with pytest.raises(atjson.DataModelError, match="nested"):
        atjson.loads('{"a":' * 65 + "1" + "}" * 65)


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_very_deep_input_refused_without_recursion_error(depth):
    with pytest.raises(atjson.DataModelError, match="nested"):
        atjson.loads(nested(depth))
    value: list = []
    for _ in range(depth):
        value = [value]
    with pytest.raises(atjson.DataModelError, match="nested"):
        atjson.from_json(value)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"a": 1.5}', "not an integer"),
        ('{"a": 1e-3}', "not an integer"),
        ('{"a": NaN}', "NaN"),
        ('{"a": Infinity}', "Infinity"),
        ('{"a": -Infinity}', "Infinity"),
        ('{"a": 1e400}', "range"),
        ('{"a": 9223372036854775808}', "range"),
        ('{"a": -9223372036854775809}', "range"),
        ('{"a": 9223372036854775808.0}', "range"),
        ('{"a": "\\ud800"}', "surrogate"),
        ('{"\\udfff": 1}', "surrogate"),
        ('{"a": ', "invalid JSON"),
        ("{'a': 1}", "invalid JSON"),
        ('{"a": 1} x', "invalid JSON"),
        (b'{"a": "\xff"}', "invalid JSON"),
        ('{"l": {"$link": "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2b"}}',
         "canonical"),
        ('{"l": {"$link": null}}', "must be a string"),
        ('{"b": {"$bytes": "a"}}', "base64"),
        ('{"b": {"$bytes": "a-_b"}}', "base64"),
        ('{"b": {"$bytes": "a b="}}', "base64"),
        ('{"b": {"$bytes": null}}', "must be a string"),
        ('{"t": {"$type": ["x"]}}', "non-empty string"),
    ],
)
def test_loads_refuses(text, message):
    with pytest.raises(atjson.DataModelError, match=message):
        atjson.loads(text)


def test_integer_range_edges():
    assert atjson.loads("[9223372036854775807, -9223372036854775808]") == [
        2**63 - 1,
        -(2**63),
    ]
    assert atjson.loads("[1e3, -0.0, 12.50e1, 0e999999]") == [1000, 0, 125, 0]
    assert atjson.loads("9007199254740993.0") == 9007199254740993


def test_error_path_is_a_json_pointer():
    with pytest.raises(atjson.DataModelError) as info:
        atjson.loads('{"a/b": [0, {"~c": 1.5}]}')
    assert info.value.path == ["a/b", 1, "~c"]
    assert str(info.value) == "number 1.5 is not an integer (floats are not allowed) at /a~1b/1/~0c"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("123", b"\xd7m"),  # non-zero trailing bits, as in the lexicon vectors
        ("AQI", b"\x01\x02"),
        ("AQI=", b"\x01\x02"),
        ("AQID", b"\x01\x02\x03"),
        ("", b""),
        ("+/8", b"\xfb\xff"),
    ],
)
def test_bytes_decoding_is_lenient_about_padding(text, expected):
    assert atjson.loads(json.dumps({"$bytes": text})) == expected


def blob(**changes):
    value = {
        "$type": "blob",
        "ref": {"$link": cid_for_raw(b"img").encode()},
        "mimeType": "image/png",
        "size": 3,
    }
    value.update(changes)
    return {key: item for key, item in value.items() if item is not None}


def test_blob_converted():
    value = atjson.from_json({"image": blob()})
    assert value["image"]["ref"] == cid_for_raw(b"img")
    assert atjson.to_json(value) == {"image": blob()}


@pytest.mark.parametrize(
    "bad",
    [
        blob(extra=1),
        blob(ref=None),
        blob(size=None),
        blob(mimeType=None),
        blob(ref=cid_for_raw(b"img").encode()),
        blob(ref={"$bytes": "AQI"}),
        blob(size=True),
        blob(size=-1),
        blob(size=1.5),
        blob(mimeType=""),
        blob(mimeType=7),
    ],
)
def test_blob_shape_enforced(bad):
    with pytest.raises(atjson.DataModelError, match="blob|not an integer"):
        atjson.from_json({"image": bad})


def test_legacy_blob_allowed():
    legacy = {"cid": cid_for_raw(b"img").encode(), "mimeType": "image/png"}
    assert atjson.from_json({"image": legacy}) == {"image": legacy}


def test_from_json_values():
    assert atjson.from_json({"a": 123.0}) == {"a": 123}
    assert type(atjson.from_json(123.0)) is int
    for bad in (1.5, float("nan"), float("inf"), b"bytes", (1, 2), {1: 2}, cid_for_raw(b"")):
        with pytest.raises(atjson.DataModelError):
            atjson.from_json(bad)


def test_validate_record():
    assert atjson.validate_record({"$type": "a.b.c"}) == {"$type": "a.b.c"}
    for bad in ("blah", [], 1, None):
        with pytest.raises(atjson.DataModelError, match="top level"):
            atjson.validate_record(bad)


def test_dumps_refuses_what_is_not_data_model():
    with pytest.raises(atjson.DataModelError):
        atjson.dumps({"a": object()})
    with pytest.raises(atjson.DataModelError):
        atjson.dumps("\ud800")

