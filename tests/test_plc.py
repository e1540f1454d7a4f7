"""
did:plc: operations checked against published logs and independent
libraries, then the directory and its client over real HTTP on loopback.
"""

import base64
import hashlib
import json
from datetime import datetime
from pathlib import Path

import dag_cbor
import pytest
import pytest_twisted
import treq
from atproto_core.did_doc import DidDocument, is_valid_did_doc
from atproto_crypto.verify import verify_signature as sdk_verify_signature
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.scripts.twistd import ServerOptions
from twisted.web.resource import Resource
from twisted.web.server import Site

from leafpds import crypto
from leafpds.identity.plc import (
    AtprotoIdentity,
    PLCClient,
    PLCError,
    PLCOperationError,
    build_operation,
    build_tombstone,
    did_for_genesis,
    document_for,
    operation_cid,
    parse_document,
    sign_operation,
    validate_operation_shape,
    verify_operation,
)
from leafpds.identity.plc_server import make_plc_service
from leafpds.identity.plc_tap import Options

PDS = "https://pds.example.com"


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def genesis(rotation_keys, signer=None, handle="alice.test", signing_key=None, endpoint=PDS):
    """A signed genesis operation and its DID."""
    signer = signer or rotation_keys[0]
    op = sign_operation(
        build_operation(
            rotation_keys=[key.did() for key in rotation_keys],
            signing_key=(signing_key or crypto.K256Keypair.generate()).did(),
            handle=handle,
            pds_endpoint=endpoint,
            prev=None,
        ),
        signer,
    )
    return did_for_genesis(op), op


def update(last, signer, **changes):
    """The operation after ``last`` with some fields changed, signed by ``signer``."""
    op = {key: value for key, value in last.items() if key != "sig"}
    op["prev"] = operation_cid(last).encode()
    op.update(changes)
    return sign_operation(op, signer)


# -- operations, against independent libraries ---------------


@pytest.mark.parametrize("keypair", [crypto.K256Keypair, crypto.P256Keypair])
def test_our_operations_check_out_with_independent_libraries(keypair):
    rotation = keypair.generate()
    did, op = genesis([rotation])
    unsigned = {key: value for key, value in op.items() if key != "sig"}
    # dag_cbor and the atproto SDK share no code with cbrrr and leafpds.crypto.
    assert dag_cbor.encode(op) == dag_cbor.encode(dag_cbor.decode(dag_cbor.encode(op)))
    digest = hashlib.sha256(dag_cbor.encode(op)).digest()
    assert did == "did:plc:" + base64.b32encode(digest).decode().lower()[:24]
    assert "=" not in op["sig"]
    signature = base64.urlsafe_b64decode(op["sig"] + "==")
    assert sdk_verify_signature(rotation.did(), dag_cbor.encode(unsigned), signature)
    assert verify_operation(op, [rotation.did()]) == rotation.did()


def test_document_shape_and_the_sdk_reads_it():
    signing = crypto.P256Keypair.generate()
    did, op = genesis([crypto.K256Keypair.generate()], signing_key=signing)
    doc = document_for(did, op)
    assert doc == {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/ecdsa-2019/v1",
        ],
        "id": did,
        "alsoKnownAs": ["at://alice.test"],
        "verificationMethod": [
            {
                "id": f"{did}#atproto",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": signing.did().removeprefix("did:key:"),
            }
        ],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": PDS}],
    }
    assert is_valid_did_doc(doc)
    sdk = DidDocument.from_dict(doc)
    assert (sdk.get_handle(), sdk.get_pds_endpoint(), sdk.get_did_key()) == ("alice.test", PDS, signing.did())
    assert parse_document(doc) == AtprotoIdentity(did, "alice.test", signing.did(), PDS)


def test_parse_document_reads_legacy_methods_and_tolerates_missing_parts():
    key = crypto.K256Keypair.generate()
    legacy_multibase = "z" + crypto._b58encode(key.public_key())  # bare point, no multicodec
    doc = {
        "id": "did:plc:abc",
        "alsoKnownAs": ["https://elsewhere.example", "at://Alice.Example.com"],
        "verificationMethod": [
            {"id": "#atproto", "type": "EcdsaSecp256k1VerificationKey2019", "publicKeyMultibase": legacy_multibase}
        ],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": PDS}],
    }
    identity = parse_document(doc)
    assert (identity.handle, identity.signing_key, identity.pds_endpoint) == ("alice.example.com", key.did(), PDS)

    bare = parse_document({"id": "did:plc:abc", "alsoKnownAs": ["at://not a handle"], "service": "nope"})
    assert (bare.handle, bare.signing_key, bare.pds_endpoint) == (None, None, None)
    wrong_type = dict(doc, service=[{"id": "#atproto_pds", "type": "Other", "serviceEndpoint": PDS}])
    assert parse_document(wrong_type).pds_endpoint is None
    with pytest.raises(PLCOperationError):
        parse_document({"alsoKnownAs": []})


def _op(**changes):
    rotation = crypto.K256Keypair.generate()
    _did, op = genesis([rotation])
    unsigned = {key: value for key, value in op.items() if key != "sig"}
    unsigned.update(changes)
    return sign_operation(unsigned, rotation)


BAD_SHAPES = {
    "not an object": [],
    "unknown type": _op(type="plc_update"),
    "missing field": {key: value for key, value in _op().items() if key != "services"},
    "extra field": {**_op(), "note": "hi"},
    "rotation keys not a list": _op(rotationKeys="did:key:zQ3sh"),
    "malformed rotation key": _op(rotationKeys=["did:key:zNotAKey"]),
    "not a did:key": _op(rotationKeys=["did:web:example.com"]),
    "malformed signing key": _op(verificationMethods={"atproto": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"}),
    "bad handle": _op(alsoKnownAs=["at://-alice.test"]),
    "alias not a URI": _op(alsoKnownAs=["alice"]),
    "duplicate alias": _op(alsoKnownAs=["at://alice.test", "at://alice.test"]),
    "too many aliases": _op(alsoKnownAs=[f"at://a{i}.test" for i in range(11)]),
    "endpoint not http": _op(services={"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": "ftp://x.test"}}),
    "endpoint without host": _op(services={"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": "https://"}}),
    "endpoint with bad port": _op(services={"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": "https://x.test:99999"}}),
    "service without type": _op(services={"atproto_pds": {"endpoint": PDS}}),
    "prev not a CID": _op(prev="not-a-cid"),
    "padded sig": {**_op(), "sig": _op()["sig"] + "="},
    "sig with a newline": {**_op(), "sig": _op()["sig"][:10] + "\n" + _op()["sig"][10:]},
    "too large": _op(services={f"s{i}": {"type": "x" * 250, "endpoint": PDS + "/" + "p" * 200} for i in range(10)}),
    "tombstone without prev": {"type": "plc_tombstone", "prev": None, "sig": "AAAA"},
}


@pytest.mark.parametrize("name", BAD_SHAPES)
def test_validate_operation_shape_refuses(name):
    with pytest.raises(PLCOperationError):
        validate_operation_shape(BAD_SHAPES[name])


def test_validate_operation_shape_accepts_the_good_ones():
    validate_operation_shape(_op())
    validate_operation_shape(_op(rotationKeys=[crypto.P256Keypair.generate().did()]))


# -- the directory over HTTP -------------------------------------------------------


class Running:
    def __init__(self, service):
        self.service = service
        self.url = f"http://127.0.0.1:{service.port.getHost().port}"
        self.client = PLCClient(self.url, reactor)

    async def get(self, path):
        response = await treq.get(f"{self.url}/{path}")
        return response.code, await response.content()

    async def post(self, did, body: bytes):
        response = await treq.post(f"{self.url}/{did}", data=body, headers={"Content-Type": "application/json"})
        return response.code, await response.content()

    async def audit(self, did):
        code, body = await self.get(f"{did}/log/audit")
        return json.loads(body) if code == 200 else code


async def start_directory(data_dir):
    service = make_plc_service("tcp:0:interface=127.0.0.1", data_dir, reactor)
    service.startService()
    await service.listening
    return Running(service)


@pytest_twisted.async_yield_fixture
async def plc(tmp_path):
    running = await start_directory(tmp_path / "plc")
    yield running
    await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_create_resolve_update_rotate_and_read_the_logs(plc):
    client = plc.client
    rotation = crypto.K256Keypair.generate()
    first_signing = crypto.K256Keypair.generate()
    did, op = genesis([rotation], signing_key=first_signing)
    await client.submit(did, op)

    doc = await client.resolve(did)
    assert doc == document_for(did, op)
    assert parse_document(doc).signing_key == first_signing.did()
    assert await client.last_operation(did) == op

    # A handle change, chained to the genesis by prev.
    renamed = update(op, rotation, alsoKnownAs=["at://alice2.test"])
    assert renamed["prev"] == operation_cid(op).encode()
    await client.submit(did, renamed)
    assert parse_document(await client.resolve(did)).handle == "alice2.test"

    # A new signing key.
    new_signing = crypto.P256Keypair.generate()
    rotated = update(renamed, rotation, verificationMethods={"atproto": new_signing.did()})
    await client.submit(did, rotated)
    assert parse_document(await client.resolve(did)).signing_key == new_signing.did()
    assert await client.last_operation(did) == rotated

    code, body = await plc.get(did)
    assert code == 200 and json.loads(body) == document_for(did, rotated)
    code, body = await plc.get(f"{did}/data")
    assert json.loads(body) == {
        "did": did,
        "verificationMethods": {"atproto": new_signing.did()},
        "rotationKeys": [rotation.did()],
        "alsoKnownAs": ["at://alice2.test"],
        "services": {"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": PDS}},
    }
    code, body = await plc.get(f"{did}/log")
    assert json.loads(body) == [op, renamed, rotated]

    audit = await client.audit_log(did)
    assert [entry["operation"] for entry in audit] == [op, renamed, rotated]
    assert [entry["cid"] for entry in audit] == [operation_cid(o).encode() for o in (op, renamed, rotated)]
    assert all(entry["did"] == did and entry["nullified"] is False for entry in audit)
    times = [entry["createdAt"] for entry in audit]
    assert times == sorted(times) and all(t.endswith("Z") and len(t) == 24 for t in times)


@pytest_twisted.ensureDeferred
async def test_tombstone_ends_the_did(plc):
    rotation = crypto.K256Keypair.generate()
    did, op = genesis([rotation])
    await plc.client.submit(did, op)
    tombstone = sign_operation(build_tombstone(operation_cid(op).encode()), rotation)
    await plc.client.submit(did, tombstone)

    for path in [did, f"{did}/data"]:
        code, body = await plc.get(path)
        assert code == 410 and json.loads(body)["message"] == f"DID not available: {did}"
    with pytest.raises(PLCError) as failure:
        await plc.client.resolve(did)
    assert failure.value.status == 410
    assert await plc.client.last_operation(did) == tombstone

    after = update(op, rotation, prev=operation_cid(tombstone).encode())
    with pytest.raises(PLCError) as failure:
        await plc.client.submit(did, after)
    assert failure.value.status == 400 and "tombstoned" in failure.value.message
    assert len(await plc.client.audit_log(did)) == 2


@pytest_twisted.ensureDeferred
async def test_unknown_did_is_404_everywhere(plc):
    did = "did:plc:" + "a" * 24
    for path in [did, f"{did}/data", f"{did}/log", f"{did}/log/audit", f"{did}/log/last"]:
        code, body = await plc.get(path)
        assert code == 404 and json.loads(body) == {"message": f"DID not registered: {did}"}
    with pytest.raises(PLCError) as failure:
        await plc.client.resolve(did)
    assert failure.value.status == 404 and "DID not registered" in failure.value.message


@pytest_twisted.ensureDeferred
async def test_health(plc):
    code, body = await plc.get("_health")
    assert code == 200 and json.loads(body)["version"].startswith("leafpds-plc")


# -- the cache ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_resolve_is_cached_until_fresh_or_expired(plc):
    clock = Clock()
    client = PLCClient(plc.url, reactor, cache_ttl=60, clock=clock)
    rotation = crypto.K256Keypair.generate()
    did, op = genesis([rotation])
    await client.submit(did, op)
    assert parse_document(await client.resolve(did)).handle == "alice.test"

    # Changed behind the client's back: it still answers from its cache.
    code, _ = await plc.post(did, json.dumps(update(op, rotation, alsoKnownAs=["at://bob.test"])).encode())
    assert code == 200
    assert parse_document(await client.resolve(did)).handle == "alice.test"
    assert parse_document(await client.resolve(did, fresh=True)).handle == "bob.test"

    last = await client.last_operation(did)
    code, _ = await plc.post(did, json.dumps(update(last, rotation, alsoKnownAs=["at://carol.test"])).encode())
    assert code == 200
    clock.advance(59)
    assert parse_document(await client.resolve(did)).handle == "bob.test"
    clock.advance(1)
    assert parse_document(await client.resolve(did)).handle == "carol.test"

    # forget() and submit() drop the entry.
    last = await client.last_operation(did)
    code, _ = await plc.post(did, json.dumps(update(last, rotation, alsoKnownAs=["at://dave.test"])).encode())
    client.forget(did)
    assert parse_document(await client.resolve(did)).handle == "dave.test"
    await client.submit(did, update(await client.last_operation(did), rotation, alsoKnownAs=["at://erin.test"]))
    assert parse_document(await client.resolve(did)).handle == "erin.test"


# -- refusals ----------------------------------------------------------------------


def _refusals():
    """name -> (did, body) given a DID in the directory, its key and its latest op."""

    def forged(did, key, last):
        op = update(last, key, alsoKnownAs=["at://mallory.test"])
        signature = bytearray(base64.urlsafe_b64decode(op["sig"] + "=="))
        signature[5] ^= 1
        return did, {**op, "sig": base64.urlsafe_b64encode(bytes(signature)).rstrip(b"=").decode()}

    def tampered(did, key, last):
        op = update(last, key, alsoKnownAs=["at://alice.test"])
        return did, {**op, "alsoKnownAs": ["at://mallory.test"]}

    def outsider(did, key, last):
        return did, update(last, crypto.K256Keypair.generate(), alsoKnownAs=["at://mallory.test"])

    def signing_key_signs(did, key, last):
        # The atproto signing key has no say over the DID.
        return did, update(last, SIGNING, alsoKnownAs=["at://mallory.test"])

    def wrong_prev(did, key, last):
        op = update(last, key, alsoKnownAs=["at://bob.test"])
        op["prev"] = operation_cid({"something": "else"}).encode()
        return did, sign_operation(op, key)

    def no_prev(did, key, last):
        op = update(last, key, alsoKnownAs=["at://bob.test"])
        op["prev"] = None
        return did, sign_operation(op, key)

    def genesis_for_another_did(did, key, last):
        _other, op = genesis([key], handle="bob.test")
        return did, op

    def genesis_under_wrong_did(did, key, last):
        _other, op = genesis([key], handle="bob.test")
        return "did:plc:" + "b" * 24, op

    def malformed_key(did, key, last):
        return did, update(last, key, verificationMethods={"atproto": "did:key:zQ3shNOPE"})

    def malformed_handle(did, key, last):
        return did, update(last, key, alsoKnownAs=["at://bob..test"])

    def malformed_endpoint(did, key, last):
        return did, update(last, key, services={"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": "pds.example.com"}})

    def missing_field(did, key, last):
        op = update(last, key, alsoKnownAs=["at://bob.test"])
        del op["verificationMethods"]
        return did, sign_operation(op, key)

    def legacy_create(did, key, last):
        op = sign_operation(
            {"type": "create", "signingKey": key.did(), "recoveryKey": key.did(),
             "handle": "bob.test", "service": PDS, "prev": None},
            key,
        )
        return did_for_genesis(op), op

    def bad_did(did, key, last):
        return "did:plc:TOO-SHORT", update(last, key, alsoKnownAs=["at://bob.test"])

    return {
        "forged signature": forged,
        "tampered after signing": tampered,
        "key not in rotationKeys": outsider,
        "signed by the signing key": signing_key_signs,
        "wrong prev": wrong_prev,
        "prev null after genesis": no_prev,
        "second genesis": genesis_for_another_did,
        "genesis hash is not the DID": genesis_under_wrong_did,
        "malformed did:key": malformed_key,
        "malformed handle": malformed_handle,
        "malformed endpoint": malformed_endpoint,
        "missing field": missing_field,
        "legacy create": legacy_create,
        "malformed DID": bad_did,
    }


SIGNING = crypto.K256Keypair.generate()
REFUSALS = _refusals()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("name", REFUSALS)
async def test_refused_operations_change_nothing(plc, name):
    rotation = crypto.K256Keypair.generate()
    did, op = genesis([rotation], signing_key=SIGNING)
    await plc.client.submit(did, op)
    before = await plc.audit(did)

    target, body = REFUSALS[name](did, rotation, op)
    code, answer = await plc.post(target, json.dumps(body).encode())
    assert code == 400, answer
    assert json.loads(answer)["message"]
    assert await plc.audit(did) == before
    if target != did:
        assert await plc.audit(target) == 404
    with pytest.raises(PLCError) as failure:
        await plc.client.submit(target, body)
    assert failure.value.status == 400


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("body", [b"", b"{not json", b"[1, 2", b"null", b"42", b'{"type": NaN}', b"\xff\xfe"])
async def test_garbage_bodies_are_refused(plc, body):
    did, _op = genesis([crypto.K256Keypair.generate()])
    code, answer = await plc.post(did, body)
    assert code == 400 and json.loads(answer)["message"]
    assert await plc.audit(did) == 404


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_refused(plc):
    did, _op = genesis([crypto.K256Keypair.generate()])
    code, answer = await plc.post(did, b" " * (70 * 1024))
    assert code == 400 and "too large" in json.loads(answer)["message"]


# -- forks and recovery ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_higher_priority_key_can_override_recent_operations(plc):
    recovery, pds_key = crypto.K256Keypair.generate(), crypto.K256Keypair.generate()
    did, op = genesis([recovery, pds_key], signer=pds_key)
    await plc.client.submit(did, op)
    hijack = update(op, pds_key, alsoKnownAs=["at://mallory.test"])
    await plc.client.submit(did, hijack)
    more = update(hijack, pds_key, rotationKeys=[pds_key.did()])
    await plc.client.submit(did, more)

    # The same key cannot fork its own operations.
    with pytest.raises(PLCError) as failure:
        await plc.client.submit(did, update(op, pds_key, alsoKnownAs=["at://other.test"]))
    assert failure.value.status == 400

    recovered = update(op, recovery, alsoKnownAs=["at://alice.test"], rotationKeys=[recovery.did()])
    await plc.client.submit(did, recovered)
    audit = await plc.client.audit_log(did)
    assert [(entry["operation"], entry["nullified"]) for entry in audit] == [
        (op, False), (hijack, True), (more, True), (recovered, False)
    ]
    code, body = await plc.get(f"{did}/log")
    assert json.loads(body) == [op, recovered]
    assert await plc.client.last_operation(did) == recovered
    assert parse_document(await plc.client.resolve(did)).handle == "alice.test"

    # An operation building on a nullified one is refused.
    with pytest.raises(PLCError):
        await plc.client.submit(did, update(more, pds_key, alsoKnownAs=["at://x.test"]))


@pytest_twisted.ensureDeferred
async def test_recovery_window_is_72_hours(plc):
    directory = plc.service.directory
    recovery, pds_key = crypto.K256Keypair.generate(), crypto.K256Keypair.generate()
    did, op = genesis([recovery, pds_key], signer=pds_key)
    await directory.append(did, op, at=1_000_000)
    hijack = update(op, pds_key, alsoKnownAs=["at://mallory.test"])
    await directory.append(did, hijack, at=1_000_001)
    recovered = update(op, recovery, rotationKeys=[recovery.did()])
    with pytest.raises(PLCOperationError, match="72-hour"):
        await directory.append(did, recovered, at=1_000_001 + 72 * 3600 + 0.001)
    assert [entry.nullified for entry in await directory.log(did, True)] == [False, False]
    await directory.append(did, recovered, at=1_000_001 + 72 * 3600)
    assert [entry.nullified for entry in await directory.log(did, True)] == [False, True, False]


@pytest_twisted.ensureDeferred
async def test_concurrent_updates_of_one_did_cannot_both_win(plc):
    rotation = crypto.K256Keypair.generate()
    did, op = genesis([rotation])
    await plc.client.submit(did, op)
    rivals = [update(op, rotation, alsoKnownAs=[f"at://rival{i}.test"]) for i in range(8)]
    answers = await gatherResults([ensureDeferred(plc.post(did, json.dumps(rival).encode())) for rival in rivals])
    assert sorted(code for code, _ in answers) == [200] + [400] * 7
    log = await plc.client.audit_log(did)
    assert len(log) == 2 and log[1]["operation"] in rivals


# -- the client's failures -----------------------------------------------------------


class Canned(Resource):
    isLeaf = True

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__()
        self.code, self.body = code, body

    def render(self, request):
        request.setResponseCode(self.code)
        return self.body


async def listen(factory):
    return await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)


def client_for(port, **kwargs):
    return PLCClient(f"http://127.0.0.1:{port.getHost().port}", reactor, **kwargs)


@pytest_twisted.ensureDeferred
async def test_client_when_nothing_listens():
    port = await listen(Factory.forProtocol(Protocol))
    client = client_for(port)
    await port.stopListening()
    with pytest.raises(PLCError) as failure:
        await client.resolve("did:plc:" + "a" * 24)
    assert failure.value.status is None and "unreachable" in failure.value.message


@pytest_twisted.ensureDeferred
async def test_client_when_the_directory_never_answers():
    port = await listen(Factory.forProtocol(Protocol))  # accepts, reads, never replies
    try:
        with pytest.raises(PLCError) as failure:
            await client_for(port, timeout=0.2).resolve("did:plc:" + "a" * 24)
    finally:
        await port.stopListening()
    assert failure.value.status is None and "did not answer within 0.2 s" in failure.value.message


@pytest.mark.parametrize(
    "code, body, status, text",
    [
        (500, b'{"message": "database on fire"}', 500, "failed (500): database on fire"),
        (502, b"<html>Bad Gateway</html>", 502, "failed (502): <html>Bad Gateway</html>"),
        (400, b'{"message": "Invalid signature"}', 400, "refused the request (400): Invalid signature"),
        (429, b"", 429, "refused the request (429): (no message)"),
        (200, b"this is not json", None, "not JSON"),
        (200, b"[]", None, "unexpected JSON list"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_client_reports_what_went_wrong(code, body, status, text):
    port = await listen(Site(Canned(code, body)))
    try:
        with pytest.raises(PLCError) as failure:
            await client_for(port).resolve("did:plc:" + "a" * 24)
    finally:
        await port.stopListening()
    assert failure.value.status == status
    assert text in failure.value.message and text in str(failure.value)


# -- the service and twistd ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_log_survives_a_restart(tmp_path):
    first = await start_directory(tmp_path / "plc")
    rotation = crypto.K256Keypair.generate()
    did, op = genesis([rotation])
    await first.client.submit(did, op)
    await first.service.stopService()
    assert (tmp_path / "plc" / "plc.sqlite").exists()

    second = await start_directory(tmp_path / "plc")
    try:
        assert await second.client.last_operation(did) == op
    finally:
        await second.service.stopService()


def test_twistd_leafpds_plc_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exited:
        ServerOptions().parseOptions(["leafpds-plc", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for words in ["--listen", "--data-dir", "tcp:2582:interface=127.0.0.1", "./leafpds-plc-data",
                  "LEAFPDS_PLC_LISTEN", "LEAFPDS_PLC_DATA_DIR"]:
        assert words in text


def test_options_command_line_beats_environment_beats_default(monkeypatch):
    options = Options()
    options.parseOptions([])
    assert (options.listen, options.data_dir) == ("tcp:2582:interface=127.0.0.1", Path("leafpds-plc-data"))
    monkeypatch.setenv("LEAFPDS_PLC_LISTEN", "tcp:9999")
    monkeypatch.setenv("LEAFPDS_PLC_DATA_DIR", "/tmp/from-env")
    options = Options()
    options.parseOptions(["--listen", "tcp:1234"])
    assert (options.listen, options.data_dir) == ("tcp:1234", Path("/tmp/from-env"))
