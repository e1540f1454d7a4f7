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

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.names import dns
from twisted.web.client import FileBodyProducer

from leafpds import crypto
from leafpds.errors import XRPCError
from leafpds.ipld import atjson, codec
from leafpds.ipld.car import _varint, encode_car, read_car
from leafpds.identity.plc import build_operation, operation_cid, sign_operation
from leafpds.ipld.cid import parse_cid
from leafpds.repo import archive
from leafpds.repo.archive import verify_repo_car
from leafpds.repo.commit import verify_commit
from leafpds.repo.mst import MST, MemoryBlockSource, NodeCache
from tests.harness import make_settings, start_pds
from tests.test_admin import (
    PASSWORD, POST, account_with_a_post_and_blob, assert_error, bearer, create, firehose_from,
    login, newest_seq, plain_post,
)
from tests.test_handles import Network
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
    """Every record of an active repo as getRecord answers it, by at-uri."""
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


async def exported_records(pds, did, auth):
    """
    Every record of the repo as its owner exports it, by at-uri: a repo
    migrating in is deactivated, so getRepo serves it to its own token and
    the com.atproto.repo reads to no one (as the official PDS).
    """
    answer = await pds.get("com.atproto.sync.getRepo", {"did": did}, headers=auth)
    assert answer.code == 200, answer.body
    root, blocks = read_car(answer.body)
    blocks = dict(blocks)
    tree = MST.load(MemoryBlockSource(blocks), codec.decode(blocks[root])["data"], cache=NodeCache())
    return {
        f"at://{did}/{key}": (cid.encode(), json.loads(atjson.dumps(codec.decode(blocks[cid]))))
        for key, cid in tree.walk()
    }


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
    assert await exported_records(b, did, auth) == await all_records(a, did)
    # Not served to anyone else until it is activated.
    listed = await b.get("com.atproto.repo.listRecords", {"repo": did, "collection": POST})
    assert_error(listed, 400, "InvalidRequest")
    assert_error(await b.get("com.atproto.sync.getRepo", {"did": did}), 400, "RepoDeactivated")
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
    # Served to everyone now, from the records index the import built.
    assert await all_records(b, did) == await all_records(a, did)

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


@pytest_twisted.ensureDeferred
async def test_create_account_refuses_every_bad_service_token(two):
    a, b = two
    created, old_auth, _ = await populated(a, "alice", posts=0)
    _, other_auth, _ = await populated(a, "carol", posts=0)
    did, aud = created["did"], b.service.app.service_did
    key = await a.service.app.keys.signing_key(did)
    body = {"did": did, "handle": "alice.test", "email": "alice@new.example.com", "password": PASSWORD}
    now = int(time.time())

    def claims(**changed):
        return {"iss": did, "aud": aud, "lxm": CREATE_ACCOUNT, "iat": now, "exp": now + 60, **changed}

    cases = [
        (None, "AuthenticationRequired"),
        (await service_token(a, old_auth, "did:web:elsewhere.example"), "BadJwtAudience"),
        (await service_token(a, old_auth, aud, "com.atproto.repo.createRecord"), "BadJwtLexiconMethod"),
        (mint(key, {k: v for k, v in claims().items() if k != "lxm"}), "BadJwtLexiconMethod"),
        (mint(key, claims(iat=now - 120, exp=now - 60)), "JwtExpired"),
        (mint(crypto.K256Keypair.generate(), claims()), "BadJwtSignature"),
        (mint(crypto.P256Keypair.generate(), claims()), "BadJwtSignature"),
        (mint(key, claims(), {"typ": "at+jwt", "alg": key.jwt_alg}), "BadJwtType"),
        (mint(key, claims(iss="did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")), "BadJwtIss"),
        # A valid token, but from another account.
        (await service_token(a, other_auth, aud), "AuthenticationRequired"),
        ("not-a-jwt", "BadJwt"),
    ]
    for token, name in cases:
        answer = await b.post(CREATE_ACCOUNT, body, headers=bearer(token) if token else {})
        assert_error(answer, 401, name)
        assert await stored(b, did) == ([], [], [], [], [], [])

    # A good token works once; the DID then has a repo here.
    await arrive(a, b, created, old_auth)
    again = await b.post(CREATE_ACCOUNT, {**body, "handle": "alice2.test", "email": "other@example.com"},
                         headers=bearer(await service_token(a, old_auth, aud)))
    assert_error(again, 400, "AlreadyExists")
    # So does the DID of an account made here.
    home = await create(b, "dave")
    home_key = await b.service.app.keys.signing_key(home["did"])
    token = mint(home_key, claims(iss=home["did"]))
    taken = await b.post(CREATE_ACCOUNT, {**body, "did": home["did"], "handle": "dave2.test",
                                          "email": "dave2@example.com"}, headers=bearer(token))
    assert_error(taken, 400, "AlreadyExists")


def corrupted_cars(car: bytes, other_car: bytes) -> dict[str, tuple[bytes, str]]:
    """Every way a repo CAR is refused, built from a good one: (CAR, the error message's start)."""
    root, blocks = read_car(car)
    blocks = dict(blocks)
    commit = codec.decode(blocks[root])
    tree = MST.load(MemoryBlockSource(blocks), commit["data"], cache=NodeCache())
    nodes = [cid for cid in tree.node_cids()]
    assert len(nodes) > 1, "the repo must have more than one tree node"
    records = {cid for _, cid in tree.walk()}
    without = lambda gone: encode_car(root, [(c, d) for c, d in blocks.items() if c != gone])  # noqa: E731
    header = lambda roots: (lambda h: _varint(len(h)) + h)(codec.encode({"version": 1, "roots": roots}))  # noqa: E731
    sections = encode_car(root, blocks.items())[len(header([root])):]
    two_roots = header([root, nodes[1]]) + sections
    assert read_car(header([root]) + sections)[0] == root
    record = next(iter(records))
    tampered = encode_car(root, [(c, d if c != record else d.replace(b"post", b"pots")) for c, d in blocks.items()])
    return {
        "another DID's repo": (other_car, "Invalid repo: the commit is for"),
        "garbage": (b"\x00garbage", "Invalid CAR file: CAR header is empty"),
        "empty": (b"", "Invalid CAR file: truncated CAR"),
        "truncated": (car[:-10], "Invalid CAR file: truncated CAR"),
        "a tree node missing": (without(nodes[-1]), "Invalid repo: MST node block missing: " + nodes[-1].encode()),
        "a record block missing": (without(record), "Invalid repo: record block missing for"),
        "a block not matching its CID": (tampered, "Invalid CAR file: block at byte"),
        "two roots": (two_roots, "Invalid CAR file: a repo has exactly one root, this has 2"),
        "no commit block": (without(root), "Invalid CAR file: the root commit block is missing"),
    }


@pytest_twisted.ensureDeferred
async def test_import_refuses_every_bad_car_and_changes_nothing(two):
    a, b = two
    created, old_auth, _ = await populated(a, "alice", posts=60)
    other, _, _ = await populated(a, "carol", posts=2)
    did = created["did"]
    arrived = await arrive(a, b, created, old_auth)
    auth = bearer(arrived["accessJwt"])
    car = await export(a, did)
    # First a good import, so that "unchanged" is a populated repo.
    assert (await import_car(b, auth, car)).code == 200
    before = await stored(b, did)
    records = await exported_records(b, did, auth)
    assert len(records) == 62

    for name, (bad, message) in corrupted_cars(car, await export(a, other["did"])).items():
        answer = await import_car(b, auth, bad)
        assert_error(answer, 400, "InvalidRequest")
        assert answer.json()["message"].startswith(message), (name, answer.body)
        assert await stored(b, did) == before, name
    assert await exported_records(b, did, auth) == records

    # Wrong encodings, app passwords and strangers are refused too.
    assert_error(await b.request("POST", "/xrpc/com.atproto.repo.importRepo", data=car,
                                 headers={**auth, "Content-Type": "application/json"}), 400, "InvalidRequest")
    app_password = await b.post("com.atproto.server.createAppPassword", {"name": "app"}, headers=auth)
    app_session = await login(b, did, app_password.json()["password"])
    assert_error(await import_car(b, bearer(app_session.json()["accessJwt"]), car), 400, "InvalidToken")
    assert_error(await import_car(b, {}, car), 401, "AuthMissing")
    # Too large: cut off with 413, with or without a length up front.
    big = car + b"\x00" * 2_000_000
    assert_error(await import_car(b, auth, big), 413, "PayloadTooLarge")
    chunked = await import_car(b, auth, FileBodyProducer(io.BytesIO(big)))
    assert_error(chunked, 413, "PayloadTooLarge")
    assert await stored(b, did) == before
    # Nothing is left in the spool folder.
    spool = b.service.app.blobs.spool_dir
    assert list(spool.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_a_newer_export_imports_over_an_older_one(two):
    a, b = two
    created, old_auth, blob_cid = await populated(a, "alice", posts=5)
    did = created["did"]
    arrived = await arrive(a, b, created, old_auth)
    auth = bearer(arrived["accessJwt"])
    first_car = await export(a, did)
    assert (await import_car(b, auth, first_car)).code == 200
    first = await exported_records(b, did, auth)
    assert first == await all_records(a, did)

    # Meanwhile, on A: the post with the blob goes, others change and come.
    listed = (await a.get("com.atproto.repo.listRecords", {"repo": did, "collection": POST, "limit": 100})).json()
    with_blob = [r for r in listed["records"] if "embed" in r["value"]][0]["uri"].split("/")[-1]
    plain = [r for r in listed["records"] if "embed" not in r["value"]][0]["uri"].split("/")[-1]
    writes = [
        {"$type": "com.atproto.repo.applyWrites#delete", "collection": POST, "rkey": with_blob},
        {"$type": "com.atproto.repo.applyWrites#update", "collection": POST, "rkey": plain,
         "value": plain_post("edited")},
        {"$type": "com.atproto.repo.applyWrites#create", "collection": POST, "value": plain_post("new")},
    ]
    assert (await a.post("com.atproto.repo.applyWrites", {"repo": did, "writes": writes}, headers=old_auth)).code == 200

    assert (await import_car(b, auth, await export(a, did))).code == 200
    second = await exported_records(b, did, auth)
    assert second == await all_records(a, did) != first
    assert second[f"at://{did}/{POST}/{plain}"][1]["text"] == "edited"
    assert await missing_blobs(b, auth) == []
    status = await account_status(b, auth)
    assert (status["indexedRecords"], status["expectedBlobs"]) == (len(second), 0)
    assert status["repoRev"] == (await a.get("com.atproto.sync.getLatestCommit", {"did": did})).json()["rev"]

    # Once active, its records are served from the index the import rebuilt;
    # reading one fills B's cache, and an import over it must not leave it stale.
    await point_did_at(a, b, did)
    assert (await b.post("com.atproto.server.activateAccount", headers=auth)).code == 200
    assert await all_records(b, did) == second
    edit = {"$type": "com.atproto.repo.applyWrites#update", "collection": POST, "rkey": plain,
            "value": plain_post("edited again")}
    assert (await a.post("com.atproto.repo.applyWrites", {"repo": did, "writes": [edit]}, headers=old_auth)).code == 200
    assert (await import_car(b, auth, await export(a, did))).code == 200
    got = await b.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST, "rkey": plain})
    assert got.json()["value"]["text"] == "edited again"
    assert await all_records(b, did) == await all_records(a, did)

    # An account taken down meanwhile imports nothing (checked in the swap's transaction).
    app = b.service.app
    await app.db.write(lambda conn: conn.execute("UPDATE accounts SET status = 'takendown' WHERE did = ?", (did,)))
    before = await stored(b, did)
    with pytest.raises(XRPCError) as refused:
        await archive.import_repo(app.db, did, first_car, scratch=app.blobs.spool_dir)
    assert (refused.value.status, refused.value.name) == (401, "AccountTakedown")
    assert await stored(b, did) == before


@pytest_twisted.ensureDeferred
async def test_a_repo_of_the_mst_vector_keys_imports_to_the_same_tree(two):
    # The official MST example keys: a tree of many layers and shapes.
    a, b = two
    created, old_auth, _ = await populated(a, "alice", posts=0)
    did = created["did"]
    keys = load_lines("mst/example_keys.txt")
    # Their collections ("A0") made NSIDs: the same keys, under one prefix.
    collection = lambda key: "com.example." + key.split("/")[0].lower()  # noqa: E731
    writes = [
        {"$type": "com.atproto.repo.applyWrites#create", "collection": collection(key),
         "rkey": key.split("/")[1], "value": {"$type": collection(key), "n": n}}
        for n, key in enumerate(keys)
    ]
    for start in range(0, len(writes), 200):
        answer = await a.post("com.atproto.repo.applyWrites",
                              {"repo": did, "validate": False, "writes": writes[start:start + 200]}, headers=old_auth)
        assert answer.code == 200, answer.body
    arrived = await arrive(a, b, created, old_auth)
    car = await export(a, did)
    assert (await import_car(b, bearer(arrived["accessJwt"]), car)).code == 200
    root, blocks = read_car(car)
    (held_root,), held_blocks, held_records, *_ = await stored(b, did)
    assert held_root[0] == root.cid_bytes
    held = {cid: data for cid, data in held_blocks} | {cid: data for _, _, cid, data in held_records}
    assert held == {cid.cid_bytes: data for cid, data in blocks}
    assert len(held_records) == len(keys) + 2  # and the profile and the post with a blob


@pytest_twisted.async_yield_fixture
async def network():
    """DNS and /.well-known/atproto-did on loopback, for handles B does not serve."""
    net = Network()
    net.start()
    yield net
    await gatherResults([port.stopListening() for port in net.ports])


@pytest_twisted.ensureDeferred
async def test_an_arriving_account_keeps_a_handle_that_resolves_to_its_did(tmp_path, network):
    a = await start_pds(make_settings(tmp_path / "a"))
    await a.service.ready
    # B serves another domain: "alice.test" is, to B, a handle elsewhere.
    b = await start_pds(make_settings(tmp_path / "b", plc_url=a.service.app.plc.base_url, handle_domain=".pdsb.test"))
    resolver = network.resolver()
    b.service.app.accounts.resolve_handle = resolver.resolve
    try:
        created, old_auth, _ = await populated(a, "alice", posts=0)
        did = created["did"]
        body = {"did": did, "email": "alice@new.example.com", "password": PASSWORD}
        token = lambda: service_token(a, old_auth, b.service.app.service_did)  # noqa: E731
        # Not resolving to the DID: refused, nothing stored.
        for handle in ("alice.test", "someone.test"):
            refused = await b.post(CREATE_ACCOUNT, {**body, "handle": handle}, headers=bearer(await token()))
            assert_error(refused, 400, "InvalidRequest")
            assert refused.json()["message"] == "External handle did not resolve to DID"
        network.dns.set("_atproto.someone.test", dns.Record_TXT(b"did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"))
        resolver._cache.clear()
        refused = await b.post(CREATE_ACCOUNT, {**body, "handle": "someone.test"}, headers=bearer(await token()))
        assert_error(refused, 400, "InvalidRequest")
        assert await stored(b, did) == ([], [], [], [], [], [])
        # Resolving to it: the account keeps its handle.
        network.dns.set("_atproto.alice.test", dns.Record_TXT(f"did={did}".encode()))
        resolver._cache.clear()
        arrived = await b.post(CREATE_ACCOUNT, {**body, "handle": "Alice.Test"}, headers=bearer(await token()))
        assert arrived.code == 200, arrived.body
        assert arrived.json()["handle"] == "alice.test"
        # A handle under B's own domain needs no resolving.
        carol, carol_auth, _ = await populated(a, "carol", posts=0)
        made = await b.post(CREATE_ACCOUNT, {"did": carol["did"], "handle": "carol.pdsb.test",
                                             "email": "carol@new.example.com", "password": PASSWORD},
                            headers=bearer(await service_token(a, carol_auth, b.service.app.service_did)))
        assert made.code == 200, made.body
    finally:
        resolver.stop()
        await b.service.stopService()
        await a.service.stopService()
