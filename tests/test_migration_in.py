"""
An account migrating in, over real HTTP between two leafpds on loopback
that share one PLC directory (the first's embedded one): createAccount with
the DID and a service JWT from the old PDS (every way such a token can be
wrong), importRepo of the old PDS's export (every way a CAR can be wrong,
each refused with nothing changed), the missing blobs uploaded, the next
write re-signed here, and activation once the DID points here.  The
firehose is read over a real WebSocket.
"""

import base64
import io
import json
import time

import pytest_twisted
from twisted.web.client import FileBodyProducer

from leafpds import crypto
from leafpds.ipld import codec
from leafpds.ipld.car import _varint, encode_car, read_car
from leafpds.identity.plc import build_operation, operation_cid, sign_operation
from leafpds.ipld.cid import parse_cid
from leafpds.repo.archive import verify_repo_car
from leafpds.repo.commit import verify_commit
from leafpds.repo.mst import MST, MemoryBlockSource, NodeCache
from tests.harness import make_settings, start_pds
from tests.test_admin import (
    PASSWORD, POST, account_with_a_post_and_blob, assert_error, bearer, create, firehose_from,
    login, newest_seq, plain_post,
)
from tests.vectors import load_lines

CREATE_ACCOUNT = "com.atproto.server.createAccount"
CAR = "application/vnd.ipld.car"


@pytest_twisted.async_yield_fixture
async def two(tmp_path):
    """(old PDS A, new PDS B), B resolving DIDs through A's embedded PLC directory."""
    a = await start_pds(make_settings(tmp_path / "a"))
    await a.service.ready
    b = await start_pds(make_settings(
        tmp_path / "b", plc_url=a.service.app.plc.base_url, max_import_size=2_000_000,
    ))
    assert a.service.app.service_did != b.service.app.service_did
    yield a, b
    await b.service.stopService()
    await a.service.stopService()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(key: crypto.Keypair, claims: dict, header: dict | None = None) -> str:
    """A JWT signed with ``key`` (for tokens getServiceAuth would not make)."""
    header = header or {"typ": "JWT", "alg": key.jwt_alg}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"


async def service_token(a, auth, aud, lxm=CREATE_ACCOUNT):
    answer = await a.get("com.atproto.server.getServiceAuth", {"aud": aud, "lxm": lxm}, headers=auth)
    assert answer.code == 200, answer.body
    return answer.json()["token"]


async def populated(a, name, posts=30):
    """An account on A with a post holding a blob, ``posts`` plain posts and a profile."""
    created, _, blob_cid = await account_with_a_post_and_blob(a, name)
    did, auth = created["did"], bearer(created["accessJwt"])
    writes = [
        {"$type": "com.atproto.repo.applyWrites#create", "collection": POST, "value": plain_post(f"post {n}")}
        for n in range(posts)
    ]
    writes.append({
        "$type": "com.atproto.repo.applyWrites#create", "collection": "app.bsky.actor.profile",
        "rkey": "self", "value": {"$type": "app.bsky.actor.profile", "displayName": name},
    })
    answer = await a.post("com.atproto.repo.applyWrites", {"repo": did, "writes": writes}, headers=auth)
    assert answer.code == 200, answer.body
    return created, auth, blob_cid


async def arrive(a, b, created, auth, handle=None):
    """createAccount on B for A's account; B's session."""
    token = await service_token(a, auth, b.service.app.service_did)
    name = created["handle"].split(".")[0]
    body = {"did": created["did"], "handle": handle or created["handle"],
            "email": f"{name}@new.example.com", "password": PASSWORD}
    answer = await b.post(CREATE_ACCOUNT, body, headers=bearer(token))
    assert answer.code == 200, answer.body
    return answer.json()


async def export(pds, did):
    answer = await pds.get("com.atproto.sync.getRepo", {"did": did})
    assert answer.code == 200, answer.body
    return answer.body


async def import_car(b, auth, car, **kwargs):
    return await b.request("POST", "/xrpc/com.atproto.repo.importRepo", data=car,
                           headers={**auth, "Content-Type": CAR}, **kwargs)


async def all_records(pds, did):
    """Every record of the repo as getRecord answers it, by at-uri."""
    described = (await pds.get("com.atproto.repo.describeRepo", {"repo": did})).json()
    found = {}
    for collection in described["collections"]:
        listed = await pds.get("com.atproto.repo.listRecords", {"repo": did, "collection": collection, "limit": 100})
        for record in listed.json()["records"]:
            rkey = record["uri"].split("/")[-1]
            got = await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": collection, "rkey": rkey})
            assert got.code == 200 and got.json() == record
            found[record["uri"]] = (record["cid"], record["value"])
    return found


async def stored(pds, did):
    """Everything of the repo in the database: root, blocks, records, blob links, blob rows."""
    def read(conn):
        rows = lambda sql: sorted(conn.execute(sql, (did,)).fetchall())  # noqa: E731
        return (
            rows("SELECT commit_cid, rev FROM repo_roots WHERE did = ?"),
            rows("SELECT cid, data FROM blocks WHERE did = ?") + rows("SELECT cid, data FROM fresh_blocks WHERE did = ?"),
            rows("SELECT collection, rkey, cid, data FROM records WHERE did = ?"),
            rows("SELECT blob_cid, collection, rkey FROM record_blobs WHERE did = ?"),
            rows("SELECT cid, temp_key FROM blobs WHERE did = ?"),
            rows("SELECT status FROM accounts WHERE did = ?"),
        )
    return await pds.service.app.db.read(read)


async def account_status(pds, auth):
    answer = await pds.get("com.atproto.server.checkAccountStatus", headers=auth)
    assert answer.code == 200, answer.body
    return answer.json()


async def missing_blobs(pds, auth):
    answer = await pds.get("com.atproto.repo.listMissingBlobs", headers=auth)
    assert answer.code == 200, answer.body
    return [entry["cid"] for entry in answer.json()["blobs"]]


def mine(frames, did):
    return [(h["t"], body) for h, body in frames if body.get("did", body.get("repo")) == did]


@pytest_twisted.ensureDeferred
async def test_an_account_moves_in_with_its_records_and_blobs(two):
    a, b = two
    created, old_auth, blob_cid = await populated(a, "alice")
    did = created["did"]
    # Someone at home on B, whose writes end each firehose read.
    bystander = bearer((await create(b, "bob"))["accessJwt"])
    start = await newest_seq(b)

    arrived = await arrive(a, b, created, old_auth)
    assert (arrived["did"], arrived["handle"]) == (did, "alice.test")
    assert arrived["didDoc"]["id"] == did
    auth = bearer(arrived["accessJwt"])
    # Deactivated, with a key of its own here and an empty repo.
    app = b.service.app
    key = await app.keys.signing_key(did)
    assert key.did() != (await a.service.app.keys.signing_key(did)).did()
    status = await account_status(b, auth)
    assert (status["activated"], status["indexedRecords"], status["expectedBlobs"]) == (False, 0, 0)
    session = await login(b, did)
    assert session.code == 200 and session.json()["status"] == "deactivated"

    car = await export(a, did)
    answer = await import_car(b, auth, car)
    assert answer.code == 200, answer.body
    assert await all_records(b, did) == await all_records(a, did)
    latest_a = (await a.get("com.atproto.sync.getLatestCommit", {"did": did})).json()
    status = await account_status(b, auth)
    assert (status["repoCommit"], status["repoRev"]) == (latest_a["cid"], latest_a["rev"])
    assert (status["indexedRecords"], status["expectedBlobs"], status["importedBlobs"]) == (32, 1, 0)
    assert status["repoBlocks"] == len({cid for cid, _ in read_car(car)[1]})
    assert await missing_blobs(b, auth) == [blob_cid]

    # The missing blob, fetched from A and uploaded: nothing is missing.
    blob = await a.get("com.atproto.sync.getBlob", {"did": did, "cid": blob_cid})
    uploaded = await b.request("POST", "/xrpc/com.atproto.repo.uploadBlob", data=blob.body,
                               headers={**auth, "Content-Type": "image/png"})
    assert uploaded.code == 200 and uploaded.json()["blob"]["ref"]["$link"] == blob_cid
    assert await missing_blobs(b, auth) == []
    status = await account_status(b, auth)
    assert (status["expectedBlobs"], status["importedBlobs"]) == (1, 1)
    # The blob is permanent (linked), not a temporary upload awaiting collection.
    assert (await stored(b, did))[4] == [(parse_cid(blob_cid).cid_bytes, None)]

    # Nothing of it went to B's firehose: not the account, not the import.
    await b.post("com.atproto.repo.createRecord",
                 {"repo": "bob.test", "collection": POST, "record": plain_post("hi")}, headers=bystander)
    frames = await firehose_from(b, start)
    assert frames and mine(frames, did) == []

    # The DID now points here (A holds its rotation key; the PLC helper's
    # methods do this in production), and activation announces the repo.
    await point_did_at(a, b, did)
    before = await newest_seq(b)
    assert (await b.post("com.atproto.server.activateAccount", headers=auth)).code == 200
    frames = mine(await firehose_from(b, before), did)
    assert [t for t, _ in frames] == ["#account", "#identity", "#sync"]
    assert frames[2][1]["rev"] == latest_a["rev"]

    # The next write is a commit on top of the import, signed here.
    before = await newest_seq(b)
    made = await b.post("com.atproto.repo.createRecord",
                        {"repo": did, "collection": POST, "record": plain_post("from B")}, headers=auth)
    assert made.code == 200, made.body
    frames = mine(await firehose_from(b, before), did)
    assert [t for t, _ in frames] == ["#commit"]
    event = frames[0][1]
    assert event["since"] == latest_a["rev"] and event["rev"] > latest_a["rev"]
    root, blocks = read_car(event["blocks"])
    blocks = dict(blocks)
    commit = verify_commit(blocks[root], key.did(), did)
    assert root.encode() == made.json()["commit"]["cid"]
    old_commit = dict(read_car(car)[1])[read_car(car)[0]]
    assert event["prevData"] == codec.decode(old_commit)["data"]
    # And the whole repo, exported from B, verifies with B's key.
    verified = verify_repo_car(await export(b, did), did, key.did())
    assert verified.commit == commit and len(verified.records) == 33


async def point_did_at(a, b, did):
    """A PLC operation, signed with A's rotation key, naming B's key, endpoint and signing key."""
    plc = a.service.app.plc
    last = await plc.last_operation(did)
    op = sign_operation(build_operation(
        rotation_keys=[b.service.app.accounts.rotation_key.did()],
        signing_key=(await b.service.app.keys.signing_key(did)).did(),
        handle=last["alsoKnownAs"][0].removeprefix("at://"),
        pds_endpoint=b.service.app.public_url,
        prev=operation_cid(last).encode(),
    ), a.service.app.accounts.rotation_key)
    await plc.submit(did, op)
    b.service.app.plc.forget(did)
