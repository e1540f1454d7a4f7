"""com.atproto.repo.* and com.atproto.sync.* end to end over HTTP."""

import pytest_twisted
from twisted.internet.threads import deferToThread

from leafpds.ipld.car import read_car
from leafpds.lexicon import validate_output
from leafpds.repo.commit import verify_commit
from leafpds.tid import tid_from_parts
from tests.test_accounts import assert_error, bearer, create

POST = "app.bsky.feed.post"


def tid(i: int) -> str:
    return tid_from_parts(1_764_000_000_000_000 + i, 0)


def post(text: str) -> dict:
    return {"$type": POST, "text": text, "createdAt": "2026-11-28T12:00:00.000Z"}


@pytest_twisted.async_yield_fixture
async def alice(pds):
    created = (await create(pds)).json()
    yield created["did"], bearer(created["accessJwt"])


async def write(pds, auth, nsid, body):
    answer = await pds.post(nsid, body, headers=auth)
    assert answer.code == 200, answer.body
    validate_output(pds.service.app.lexicons, nsid, answer.json())
    return answer.json()


@pytest_twisted.ensureDeferred
async def test_create_get_list_put_delete(pds, alice):
    did, auth = alice
    made = await write(pds, auth, "com.atproto.repo.createRecord", {"repo": did, "collection": POST, "record": post("hello")})
    assert made["uri"].startswith(f"at://{did}/{POST}/") and made["validationStatus"] == "valid"
    rkey = made["uri"].rsplit("/", 1)[1]

    got = await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST, "rkey": rkey})
    assert got.code == 200 and got.json()["value"]["text"] == "hello" and got.json()["cid"] == made["cid"]
    by_handle = await pds.get("com.atproto.repo.getRecord", {"repo": "alice.test", "collection": POST, "rkey": rkey})
    assert by_handle.json()["cid"] == made["cid"]
    wrong_cid = await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST, "rkey": rkey,
                                                            "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"})
    assert_error(wrong_cid, 400, "RecordNotFound")

    # No $type: it is set to the collection.
    untyped = await write(pds, auth, "com.atproto.repo.createRecord",
                          {"repo": did, "collection": POST, "rkey": "3kaaaaaaaaaaa", "record": {"text": "x", "createdAt": "2026-11-28T12:00:00.000Z"}})
    got = await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST, "rkey": "3kaaaaaaaaaaa"})
    assert got.json()["value"]["$type"] == POST and untyped["cid"] == got.json()["cid"]

    put = await write(pds, auth, "com.atproto.repo.putRecord",
                      {"repo": did, "collection": POST, "rkey": rkey, "record": post("edited"), "swapRecord": made["cid"]})
    assert put["cid"] != made["cid"]

    listed = await pds.get("com.atproto.repo.listRecords", {"repo": did, "collection": POST})
    assert [r["value"]["text"] for r in listed.json()["records"]] == ["edited", "x"]  # newest (highest rkey) first
    reverse = await pds.get("com.atproto.repo.listRecords", {"repo": did, "collection": POST, "reverse": "true"})
    assert [r["value"]["text"] for r in reverse.json()["records"]] == ["x", "edited"]

    deleted = await write(pds, auth, "com.atproto.repo.deleteRecord", {"repo": did, "collection": POST, "rkey": rkey})
    assert "commit" in deleted
    again = await write(pds, auth, "com.atproto.repo.deleteRecord", {"repo": did, "collection": POST, "rkey": rkey})
    assert again == {}
    gone = await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST, "rkey": rkey})
    assert_error(gone, 400, "RecordNotFound")

    described = await pds.get("com.atproto.repo.describeRepo", {"repo": "alice.test"})
    assert described.json()["collections"] == [POST] and described.json()["handleIsCorrect"] is True


@pytest_twisted.ensureDeferred
async def test_list_records_pages(pds, alice):
    did, auth = alice
    writes = [{"$type": "com.atproto.repo.applyWrites#create", "collection": POST, "rkey": tid(i), "value": post(str(i))}
              for i in range(25)]
    result = await write(pds, auth, "com.atproto.repo.applyWrites", {"repo": did, "writes": writes})
    assert len(result["results"]) == 25
    seen, cursor = [], None
    while True:
        params = {"repo": did, "collection": POST, "limit": "10"}
        if cursor:
            params["cursor"] = cursor
        page = (await pds.get("com.atproto.repo.listRecords", params)).json()
        seen += [r["value"]["text"] for r in page["records"]]
        cursor = page.get("cursor")
        if not cursor:
            break
    assert seen == [str(i) for i in reversed(range(25))]


@pytest_twisted.ensureDeferred
async def test_validation_and_refusals_change_nothing(pds, alice):
    did, auth = alice
    await write(pds, auth, "com.atproto.repo.createRecord", {"repo": did, "collection": POST, "rkey": "3kexistingaaa", "record": post("a")})
    latest = (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json()

    unknown = await write(pds, auth, "com.atproto.repo.createRecord",
                          {"repo": did, "collection": "com.example.thing", "record": {"anything": 1}})
    assert unknown["validationStatus"] == "unknown"
    latest = (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json()

    cases = [
        ({"repo": did, "collection": POST, "record": {"$type": POST, "text": 12, "createdAt": "2026-11-28T12:00:00.000Z"}}, 400, "InvalidRequest", "text"),
        ({"repo": did, "collection": POST, "record": {"$type": "app.bsky.feed.like", "text": "x"}}, 400, "InvalidRequest", "$type"),
        ({"repo": did, "collection": POST, "record": post("x" * 3001)}, 400, "InvalidRequest", "text"),
        ({"repo": did, "collection": "com.example.thing", "record": {"a": 1}, "validate": True}, 400, "InvalidRequest", "Lexicon"),
        ({"repo": did, "collection": POST, "rkey": "3kexistingaaa", "record": post("dup")}, 400, "InvalidRequest", "exists"),
        ({"repo": did, "collection": POST, "rkey": "bad rkey", "record": post("x")}, 400, "InvalidRequest", ""),
        ({"repo": did, "collection": "not an nsid", "record": post("x")}, 400, "InvalidRequest", ""),
        ({"repo": did, "collection": POST, "record": post("x"), "swapCommit": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"}, 400, "InvalidSwap", "Commit was at"),
        ({"repo": "did:plc:someoneelsesrepo0000000", "collection": POST, "record": post("x")}, 401, "AuthenticationRequired", ""),
    ]
    for body, status, name, fragment in cases:
        answer = await pds.post("com.atproto.repo.createRecord", body, headers=auth)
        assert_error(answer, status, name)
        assert fragment in answer.json()["message"], answer.json()
    float_body = b'{"repo": "%s", "collection": "com.example.thing", "record": {"a": 1.5}}' % did.encode()
    floats = await pds.request("POST", "/xrpc/com.atproto.repo.createRecord", data=float_body,
                               headers={**auth, "Content-Type": "application/json"})
    assert_error(floats, 400, "InvalidRequest")
    swap = await pds.post("com.atproto.repo.putRecord",
                          {"repo": did, "collection": POST, "rkey": "3kexistingaaa", "record": post("b"), "swapRecord": None}, headers=auth)
    assert_error(swap, 400, "InvalidSwap")
    assert "Record was at" in swap.json()["message"]
    unauthenticated = await pds.post("com.atproto.repo.createRecord", {"repo": did, "collection": POST, "record": post("x")})
    assert_error(unauthenticated, 401, "AuthMissing")
    assert (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json() == latest


@pytest_twisted.ensureDeferred
async def test_apply_writes_is_all_or_nothing(pds, alice):
    did, auth = alice
    before = (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json()
    writes = [
        {"$type": "com.atproto.repo.applyWrites#create", "collection": POST, "rkey": "3kaaaaaaaaaa2", "value": post("ok")},
        {"$type": "com.atproto.repo.applyWrites#delete", "collection": POST, "rkey": "3kmissingmiss"},
    ]
    answer = await pds.post("com.atproto.repo.applyWrites", {"repo": did, "writes": writes}, headers=auth)
    assert answer.code == 400
    assert (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json() == before
    too_many = [{"$type": "com.atproto.repo.applyWrites#create", "collection": POST, "value": post(str(i))} for i in range(201)]
    assert (await pds.post("com.atproto.repo.applyWrites", {"repo": did, "writes": too_many}, headers=auth)).code == 400


@pytest_twisted.ensureDeferred
async def test_sync_methods(pds, alice):
    did, auth = alice
    made = await write(pds, auth, "com.atproto.repo.createRecord", {"repo": did, "collection": POST, "rkey": "3kaaaaaaaaaa3", "record": post("p")})
    latest = (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json()
    assert latest["cid"] == made["commit"]["cid"] and latest["rev"] == made["commit"]["rev"]
    assert (await pds.get("com.atproto.sync.getHead", {"did": did})).json() == {"root": latest["cid"]}
    status = (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()
    assert status == {"did": did, "active": True, "rev": latest["rev"]}
    listed = (await pds.get("com.atproto.sync.listRepos")).json()["repos"]
    assert listed == [{"did": did, "head": latest["cid"], "rev": latest["rev"], "active": True}]

    repo = await pds.get("com.atproto.sync.getRepo", {"did": did})
    assert repo.code == 200 and repo.header("content-type") == "application/vnd.ipld.car"
    root, blocks = read_car(repo.body)
    assert root.encode() == latest["cid"]
    blocks = dict(blocks)
    doc = await pds.service.app.plc.resolve(did)
    key = "did:key:" + doc["verificationMethod"][0]["publicKeyMultibase"]
    verify_commit(blocks[root], key, did)

    proof = await pds.get("com.atproto.sync.getRecord", {"did": did, "collection": POST, "rkey": "3kaaaaaaaaaa3"})
    proof_root, proof_blocks = read_car(proof.body)
    assert proof_root == root and made["cid"] in {c.encode() for c, _ in proof_blocks}
    absent = await pds.get("com.atproto.sync.getRecord", {"did": did, "collection": POST, "rkey": "3kzzzzzzzzzzz"})
    assert absent.code == 200

    some = await pds.get("com.atproto.sync.getBlocks", {"did": did, "cids": [made["cid"], latest["cid"]]})
    assert {c.encode() for c, _ in read_car(some.body)[1]} == {made["cid"], latest["cid"]}
    missing = await pds.get("com.atproto.sync.getBlocks", {"did": did, "cids": ["bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"]})
    assert_error(missing, 400, "InvalidRequest")

    for nsid in ["com.atproto.sync.getRepo", "com.atproto.sync.getLatestCommit", "com.atproto.sync.getRepoStatus"]:
        assert_error(await pds.get(nsid, {"did": "did:plc:nobodynobodynobodynobody"}), 400, "RepoNotFound")
    assert_error(await pds.get("com.atproto.sync.getRepo", {"did": "not a did"}), 400, "InvalidRequest")


@pytest_twisted.ensureDeferred
async def test_get_repo_since_and_the_sdk_reads_it(pds, alice):
    did, auth = alice
    first = await write(pds, auth, "com.atproto.repo.createRecord", {"repo": did, "collection": POST, "record": post("1")})
    second = await write(pds, auth, "com.atproto.repo.createRecord", {"repo": did, "collection": POST, "record": post("2")})
    diff = await pds.get("com.atproto.sync.getRepo", {"did": did, "since": first["commit"]["rev"]})
    cids = {c.encode() for c, _ in read_car(diff.body)[1]}
    assert second["cid"] in cids and first["cid"] not in cids

    full = await pds.get("com.atproto.sync.getRepo", {"did": did})
    from atproto import CAR

    car = await deferToThread(CAR.from_bytes, full.body)
    assert car.root.encode() == second["commit"]["cid"]
    assert any(isinstance(b, dict) and b.get("text") == "2" for b in car.blocks.values())
