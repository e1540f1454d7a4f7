"""
The admin API (com.atproto.admin.*) end to end: a running leafpds with its
embedded PLC directory, driven over HTTP with HTTP Basic ``admin``; the
firehose read over a real WebSocket; the effects checked on every read path.
"""

import base64
import json

import pytest
import pytest_twisted
import treq

from leafpds import crypto
from leafpds.accounts import accounts as accounts_module
from leafpds.errors import XRPCError
from leafpds.lexicon import validate_output
from tests.harness import make_settings, start_pds
from tests.test_firehose import Reader, decode

PASSWORD = "correct horse battery"
ADMIN_PASSWORD = "admin secret"
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()}
POST = "app.bsky.feed.post"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def assert_error(answer, status, name):
    assert (answer.code, answer.json()["error"]) == (status, name), answer.body
    assert answer.json()["message"]


@pytest_twisted.async_yield_fixture
async def pds(tmp_path):
    running = await start_pds(make_settings(tmp_path / "data", admin_password=ADMIN_PASSWORD))
    yield running
    await running.service.stopService()


async def create(pds, name, **extra):
    body = {"handle": f"{name}.test", "email": f"{name}@example.com", "password": PASSWORD, **extra}
    answer = await pds.post("com.atproto.server.createAccount", body)
    assert answer.code == 200, answer.body
    return answer.json()


async def admin_get(pds, nsid, params=None):
    answer = await pds.get(nsid, params, headers=ADMIN)
    if answer.code == 200:
        validate_output(pds.service.app.lexicons, nsid, answer.json())
    return answer


async def admin_post(pds, nsid, body):
    answer = await pds.post(nsid, body, headers=ADMIN)
    if answer.code == 200 and answer.body:
        validate_output(pds.service.app.lexicons, nsid, answer.json())
    return answer


async def login(pds, identifier, password=PASSWORD):
    return await pds.post("com.atproto.server.createSession", {"identifier": identifier, "password": password})


async def firehose_from(pds, cursor):
    """The frames (header, body) after seq ``cursor`` up to the newest, over a WebSocket."""
    newest = await pds.service.app.db.read(
        lambda conn: conn.execute("SELECT max(seq) FROM repo_seq").fetchone()[0]
    )
    reader = Reader(pds, f"?cursor={cursor}")
    reader.target = newest
    await reader.done
    return [decode(frame) for frame in reader.frames]


async def newest_seq(pds):
    return await pds.service.app.db.read(lambda conn: conn.execute("SELECT max(seq) FROM repo_seq").fetchone()[0])


# -- auth --------------------------------------------------------------------------

ADMIN_QUERIES = {
    "com.atproto.admin.getAccountInfo": {"did": "did:plc:abc"},
    "com.atproto.admin.getAccountInfos": {"dids": "did:plc:abc"},
    "com.atproto.admin.searchAccounts": {},
    "com.atproto.admin.getInviteCodes": {},
    "com.atproto.admin.getSubjectStatus": {"did": "did:plc:abc"},
}
ADMIN_PROCEDURES = {
    "com.atproto.admin.updateAccountHandle": {"did": "did:plc:abc", "handle": "x.test"},
    "com.atproto.admin.updateAccountEmail": {"account": "did:plc:abc", "email": "x@example.com"},
    "com.atproto.admin.updateAccountPassword": {"did": "did:plc:abc", "password": "x" * 10},
    "com.atproto.admin.updateAccountSigningKey": {"did": "did:plc:abc", "signingKey": "did:key:z"},
    "com.atproto.admin.deleteAccount": {"did": "did:plc:abc"},
    "com.atproto.admin.disableInviteCodes": {"codes": ["x"]},
    "com.atproto.admin.enableAccountInvites": {"account": "did:plc:abc"},
    "com.atproto.admin.disableAccountInvites": {"account": "did:plc:abc"},
    "com.atproto.admin.sendEmail": {"recipientDid": "did:plc:abc", "content": "hi", "senderDid": "did:plc:abc"},
    "com.atproto.admin.updateSubjectStatus": {
        "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": "did:plc:abc"},
        "takedown": {"applied": True},
    },
}


@pytest_twisted.ensureDeferred
async def test_every_admin_method_needs_the_admin_password(pds):
    alice = await create(pds, "alice")
    wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:nope").decode()}
    for nsid, params in ADMIN_QUERIES.items():
        assert_error(await pds.get(nsid, params), 401, "AuthMissing")
        assert_error(await pds.get(nsid, params, headers=wrong), 401, "AuthenticationRequired")
        assert_error(await pds.get(nsid, params, headers=bearer(alice["accessJwt"])), 400, "InvalidToken")
    for nsid, body in ADMIN_PROCEDURES.items():
        assert_error(await pds.post(nsid, body), 401, "AuthMissing")
        assert_error(await pds.post(nsid, body, headers=wrong), 401, "AuthenticationRequired")


@pytest_twisted.ensureDeferred
async def test_admin_inputs_are_checked_by_the_lexicons(pds):
    assert_error(await admin_get(pds, "com.atproto.admin.getAccountInfo", {"did": "nope"}), 400, "InvalidRequest")
    assert_error(await admin_post(pds, "com.atproto.admin.deleteAccount", {}), 400, "InvalidRequest")
    assert_error(await admin_get(pds, "com.atproto.admin.getInviteCodes", {"limit": "0"}), 400, "InvalidRequest")
    bad_subject = {"subject": {"$type": "com.atproto.admin.defs#repoRef", "did": "not a did"}}
    assert_error(await admin_post(pds, "com.atproto.admin.updateSubjectStatus", bad_subject), 400, "InvalidRequest")


# -- account views --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_account_info_infos_and_search(pds):
    alice = await create(pds, "alice")
    bob = await create(pds, "bob", email="bob@elsewhere.org")
    carol = await create(pds, "carol", email="ALIce2@Example.com")

    info = (await admin_get(pds, "com.atproto.admin.getAccountInfo", {"did": alice["did"]})).json()
    assert info["did"] == alice["did"] and info["handle"] == "alice.test"
    assert info["email"] == "alice@example.com"
    assert info["invites"] == [] and info["invitesDisabled"] is False and info["indexedAt"]

    missing = await admin_get(pds, "com.atproto.admin.getAccountInfo", {"did": "did:plc:nobodynobodynobodynobo"})
    assert_error(missing, 400, "NotFound")

    infos = await admin_get(pds, "com.atproto.admin.getAccountInfos",
                            [("dids", bob["did"]), ("dids", "did:plc:nobodynobodynobodynobo"), ("dids", alice["did"])])
    assert [i["handle"] for i in infos.json()["infos"]] == ["bob.test", "alice.test"]

    found = (await admin_get(pds, "com.atproto.admin.searchAccounts", {"email": "alice"})).json()
    assert sorted(a["handle"] for a in found["accounts"]) == ["alice.test", "carol.test"]
    assert "cursor" not in found
    # A LIKE wildcard in the query is a plain character.
    assert (await admin_get(pds, "com.atproto.admin.searchAccounts", {"email": "%"})).json()["accounts"] == []

    # Every account, one per page, each once.
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = (await admin_get(pds, "com.atproto.admin.searchAccounts", params)).json()
        seen += [a["did"] for a in page["accounts"]]
        cursor = page.get("cursor")
        if not cursor:
            break
    assert sorted(seen) == sorted([alice["did"], bob["did"], carol["did"]])


# -- invite codes ------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def invite_pds(tmp_path):
    running = await start_pds(make_settings(tmp_path / "inv", admin_password=ADMIN_PASSWORD, invite_required=True))
    yield running
    await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_invite_codes_listed_sorted_paged_and_disabled(invite_pds):
    pds = invite_pds
    made = await admin_post(pds, "com.atproto.server.createInviteCodes", {"codeCount": 3, "useCount": 2})
    first, second, third = made.json()["codes"][0]["codes"]
    alice = await create(pds, "alice", inviteCode=second)
    await create(pds, "bob", inviteCode=second)
    await create(pds, "carol", inviteCode=third)
    for_alice = (await admin_post(pds, "com.atproto.server.createInviteCode",
                                  {"useCount": 1, "forAccount": alice["did"]})).json()["code"]

    by_usage = (await admin_get(pds, "com.atproto.admin.getInviteCodes", {"sort": "usage"})).json()
    assert [c["code"] for c in by_usage["codes"]][:2] == [second, third]
    assert {u["usedBy"] for u in by_usage["codes"][0]["uses"]} == {alice["did"], (await pds.service.app.accounts.did_for_handle("bob.test"))}
    recent = (await admin_get(pds, "com.atproto.admin.getInviteCodes")).json()
    assert recent["codes"][0]["code"] == for_alice and len(recent["codes"]) == 4

    for sort in ("recent", "usage"):
        seen, cursor = [], None
        for _ in range(6):
            params = {"sort": sort, "limit": "1", **({"cursor": cursor} if cursor else {})}
            page = (await admin_get(pds, "com.atproto.admin.getInviteCodes", params)).json()
            seen += [c["code"] for c in page["codes"]]
            cursor = page.get("cursor")
            if not cursor:
                break
        assert sorted(seen) == sorted([first, second, third, for_alice]) and len(seen) == 4, sort
    assert_error(await admin_get(pds, "com.atproto.admin.getInviteCodes", {"sort": "usage", "cursor": "x::y"}), 400, "InvalidRequest")
    assert_error(await admin_get(pds, "com.atproto.admin.getInviteCodes", {"sort": "oldest"}), 400, "InvalidRequest")

    # The account's view lists its codes and the code it was invited with.
    info = (await admin_get(pds, "com.atproto.admin.getAccountInfo", {"did": alice["did"]})).json()
    assert [c["code"] for c in info["invites"]] == [for_alice]
    assert info["invitedBy"]["code"] == second

    # Disabling: by code, by account; 'admin' is refused and changes nothing.
    assert_error(await admin_post(pds, "com.atproto.admin.disableInviteCodes", {"codes": [first], "accounts": ["admin"]}), 400, "InvalidRequest")
    assert (await create(pds, "dave", inviteCode=first))["handle"] == "dave.test"
    assert (await admin_post(pds, "com.atproto.admin.disableInviteCodes", {"codes": [first]})).code == 200
    assert (await admin_post(pds, "com.atproto.admin.disableInviteCodes", {"accounts": [alice["did"]]})).code == 200
    for code in (first, for_alice):
        refused = await pds.post("com.atproto.server.createAccount",
                                 {"handle": "erin.test", "email": "erin@example.com", "password": PASSWORD, "inviteCode": code})
        assert_error(refused, 400, "InvalidInviteCode")
    codes = {c["code"]: c["disabled"] for c in (await admin_get(pds, "com.atproto.admin.getInviteCodes")).json()["codes"]}
    assert codes == {first: True, second: False, third: False, for_alice: True}


@pytest_twisted.ensureDeferred
async def test_account_invites_switch(pds):
    alice = await create(pds, "alice")
    info = lambda: admin_get(pds, "com.atproto.admin.getAccountInfo", {"did": alice["did"]})  # noqa: E731
    assert (await admin_post(pds, "com.atproto.admin.disableAccountInvites", {"account": alice["did"], "note": "spam"})).code == 200
    assert (await info()).json()["invitesDisabled"] is True
    assert (await admin_post(pds, "com.atproto.admin.enableAccountInvites", {"account": alice["did"]})).code == 200
    assert (await info()).json()["invitesDisabled"] is False
    nobody = await admin_post(pds, "com.atproto.admin.disableAccountInvites", {"account": "did:plc:nobodynobodynobodynobo"})
    assert_error(nobody, 400, "InvalidRequest")


# -- takedowns ----------------------------------------------------------------------------

REPO_REF = "com.atproto.admin.defs#repoRef"
STATUS = "com.atproto.admin.updateSubjectStatus"


def image_post(blob, text="look"):
    return {
        "$type": POST, "text": text, "createdAt": "2026-11-28T12:00:00.000Z",
        "embed": {"$type": "app.bsky.embed.images", "images": [{"alt": "", "image": blob}]},
    }


def plain_post(text):
    return {"$type": POST, "text": text, "createdAt": "2026-11-28T12:00:00.000Z"}


async def account_with_a_post_and_blob(pds, name, **extra):
    created = await create(pds, name, **extra)
    did, auth = created["did"], bearer(created["accessJwt"])
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    upload = await pds.request("POST", "/xrpc/com.atproto.repo.uploadBlob", data=png,
                               headers={**auth, "Content-Type": "image/png"})
    assert upload.code == 200, upload.body
    blob = upload.json()["blob"]
    made = await pds.post("com.atproto.repo.createRecord",
                          {"repo": did, "collection": POST, "record": image_post(blob)}, headers=auth)
    assert made.code == 200, made.body
    return created, made.json(), blob["ref"]["$link"]


def sync_reads(did, rkey, blob_cid, commit_cid):
    """Every com.atproto.sync read of one repo: (nsid, params)."""
    return [
        ("com.atproto.sync.getRepo", {"did": did}),
        ("com.atproto.sync.getCheckout", {"did": did}),
        ("com.atproto.sync.getLatestCommit", {"did": did}),
        ("com.atproto.sync.getHead", {"did": did}),
        ("com.atproto.sync.getRecord", {"did": did, "collection": POST, "rkey": rkey}),
        ("com.atproto.sync.getBlocks", {"did": did, "cids": commit_cid}),
        ("com.atproto.sync.listBlobs", {"did": did}),
        ("com.atproto.sync.getBlob", {"did": did, "cid": blob_cid}),
    ]


def unserved_repo_error(nsid, status_error):
    """
    What a com.atproto.repo read answers, to anyone, for a repo that is not
    active, as the official PDS: describeRepo names the status
    (``status_error``: RepoTakendown, RepoDeactivated); listRecords' account
    lookup leaves it out (InvalidRequest "Could not find repo"); getRecord
    answers as for a repo not hosted here.
    """
    return {
        "com.atproto.repo.describeRepo": status_error,
        "com.atproto.repo.listRecords": "InvalidRequest",
        "com.atproto.repo.getRecord": "RepoNotFound",
    }[nsid]


def repo_reads(did, handle, rkey):
    """Every com.atproto.repo read of one repo, by DID and by handle."""
    reads = []
    for name in (did, handle):
        reads += [
            ("com.atproto.repo.getRecord", {"repo": name, "collection": POST, "rkey": rkey}),
            ("com.atproto.repo.listRecords", {"repo": name, "collection": POST}),
            ("com.atproto.repo.describeRepo", {"repo": name}),
        ]
    return reads


@pytest_twisted.ensureDeferred
async def test_account_takedown_on_every_read_path_login_and_firehose_and_its_reversal(pds):
    alice, post, blob_cid = await account_with_a_post_and_blob(pds, "alice")
    bob, bob_post, bob_blob = await account_with_a_post_and_blob(pds, "bob")
    did, rkey = alice["did"], post["uri"].split("/")[-1]
    app_password = (await pds.post("com.atproto.server.createAppPassword", {"name": "app"},
                                   headers=bearer(alice["accessJwt"]))).json()["password"]
    sync = sync_reads(did, rkey, blob_cid, post["commit"]["cid"])
    repo = repo_reads(did, "alice.test", rkey)
    for nsid, params in sync + repo:
        assert (await pds.get(nsid, params)).code == 200, nsid  # (getRecord by DID is now cached)
    before = await newest_seq(pds)

    subject = {"$type": REPO_REF, "did": did}
    answer = await admin_post(pds, STATUS, {"subject": subject, "takedown": {"applied": True, "ref": "TICKET-1"}})
    assert answer.json() == {"subject": subject, "takedown": {"applied": True, "ref": "TICKET-1"}}
    status = (await admin_get(pds, "com.atproto.admin.getSubjectStatus", {"did": did})).json()
    assert status == {"subject": subject, "takedown": {"applied": True, "ref": "TICKET-1"}}

    for nsid, params in sync:
        assert_error(await pds.get(nsid, params), 400, "RepoTakendown")
        assert_error(await pds.get(nsid, params, headers=bearer(bob["accessJwt"])), 400, "RepoTakendown")
        # The admin still reads it (the official PDS's assertRepoAvailability).
        assert (await pds.get(nsid, params, headers=ADMIN)).code == 200, nsid
        # The owner's token ended with its sessions.
        assert_error(await pds.get(nsid, params, headers=bearer(alice["accessJwt"])), 400, "ExpiredToken")
    for nsid, params in repo:
        assert_error(await pds.get(nsid, params), 400, unserved_repo_error(nsid, "RepoTakendown"))
        assert_error(await pds.get(nsid, params, headers=ADMIN), 400, unserved_repo_error(nsid, "RepoTakendown"))
    repo_status = (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()
    assert repo_status == {"did": did, "active": False, "status": "takendown"}
    listed = {r["did"]: r for r in (await pds.get("com.atproto.sync.listRepos")).json()["repos"]}
    assert (listed[did]["active"], listed[did]["status"]) == (False, "takendown")
    assert listed[bob["did"]]["active"] is True and "status" not in listed[bob["did"]]

    # Login refused (the right password only learns it), sessions ended, writes refused.
    assert_error(await login(pds, "alice.test"), 401, "AccountTakedown")
    assert_error(await login(pds, "alice.test", app_password), 401, "AccountTakedown")
    assert_error(await login(pds, "alice.test", "wrong password"), 401, "AuthenticationRequired")
    write = await pds.post("com.atproto.repo.createRecord",
                           {"repo": did, "collection": POST, "record": plain_post("x")},
                           headers=bearer(alice["accessJwt"]))
    assert_error(write, 400, "ExpiredToken")
    assert_error(await pds.post("com.atproto.server.refreshSession", headers=bearer(alice["refreshJwt"])), 400, "ExpiredToken")

    # A login whose password check began before the takedown gets no session either.
    with pytest.raises(XRPCError) as refused:
        await pds.service.app.db.write(accounts_module._start_session, did, 0.0, None, False)
    assert refused.value.name == "AccountTakedown"

    # Bob is untouched.
    for nsid, params in sync_reads(bob["did"], bob_post["uri"].split("/")[-1], bob_blob, bob_post["commit"]["cid"]):
        assert (await pds.get(nsid, params)).code == 200, nsid
    assert (await login(pds, "bob.test")).code == 200

    # Applying it again with a new ref changes the ref, not the firehose.
    await admin_post(pds, STATUS, {"subject": subject, "takedown": {"applied": True, "ref": "TICKET-2"}})
    status = (await admin_get(pds, "com.atproto.admin.getSubjectStatus", {"did": did})).json()
    assert status["takedown"] == {"applied": True, "ref": "TICKET-2"}
    middle = await newest_seq(pds)

    # Reversal.
    assert (await admin_post(pds, STATUS, {"subject": subject, "takedown": {"applied": False}})).code == 200
    status = (await admin_get(pds, "com.atproto.admin.getSubjectStatus", {"did": did})).json()
    assert status["takedown"] == {"applied": False}
    for nsid, params in sync + repo:
        assert (await pds.get(nsid, params)).code == 200, nsid
    assert (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()["active"] is True
    assert (await login(pds, "alice.test")).code == 200

    frames = [(h["t"], b) for h, b in await firehose_from(pds, before)]
    assert [(t, b["did"], b["active"], b.get("status")) for t, b in frames] == [
        ("#account", did, False, "takendown"),
        ("#account", did, True, None),
    ]
    assert frames[0][1]["seq"] <= middle < frames[1][1]["seq"]


@pytest_twisted.ensureDeferred
async def test_record_takedown_hides_it_from_repo_reads_until_reversed(pds):
    alice, post, _ = await account_with_a_post_and_blob(pds, "alice")
    did, rkey = alice["did"], post["uri"].split("/")[-1]
    auth = bearer(alice["accessJwt"])
    other = (await pds.post("com.atproto.repo.createRecord",
                            {"repo": did, "collection": POST, "record": plain_post("other")},
                            headers=auth)).json()
    get = {"repo": did, "collection": POST, "rkey": rkey}
    assert (await pds.get("com.atproto.repo.getRecord", get)).code == 200  # cached now

    def listed():
        return pds.get("com.atproto.repo.listRecords", {"repo": did, "collection": POST})

    subject = {"$type": "com.atproto.repo.strongRef", "uri": post["uri"], "cid": post["cid"]}
    before = await newest_seq(pds)
    assert (await admin_post(pds, STATUS, {"subject": subject, "takedown": {"applied": True}})).code == 200
    status = (await admin_get(pds, "com.atproto.admin.getSubjectStatus", {"uri": post["uri"]})).json()
    assert status["subject"] == subject and status["takedown"]["applied"] is True and status["takedown"]["ref"]

    for params in (get, {**get, "repo": "alice.test"}, {**get, "cid": post["cid"]}):
        assert_error(await pds.get("com.atproto.repo.getRecord", params), 400, "RecordNotFound")
    assert [r["uri"] for r in (await listed()).json()["records"]] == [other["uri"]]
    # Paging skips it as well.
    page = (await pds.get("com.atproto.repo.listRecords", {"repo": did, "collection": POST, "limit": "1"})).json()
    assert [r["uri"] for r in page["records"]] == [other["uri"]]
    # The owner's edit does not lift it; the repo still has it, the firehose is told nothing.
    edited = await pds.post("com.atproto.repo.putRecord",
                            {"repo": did, "collection": POST, "rkey": rkey, "record": plain_post("edited")},
                            headers=auth)
    assert edited.code == 200, edited.body
    assert_error(await pds.get("com.atproto.repo.getRecord", get), 400, "RecordNotFound")
    assert (await pds.get("com.atproto.sync.getRecord", {"did": did, "collection": POST, "rkey": rkey})).code == 200
    assert [h["t"] for h, _ in await firehose_from(pds, before)] == ["#commit"]

    assert (await admin_post(pds, STATUS, {"subject": subject, "takedown": {"applied": False}})).code == 200
    served = await pds.get("com.atproto.repo.getRecord", get)
    assert served.code == 200 and served.json()["value"]["text"] == "edited"
    assert len((await listed()).json()["records"]) == 2

    # A record that is not there: an error, and nothing stored.
    gone = {**subject, "uri": f"at://{did}/{POST}/3kaaaaaaaaaaa"}
    assert_error(await admin_post(pds, STATUS, {"subject": gone, "takedown": {"applied": True}}), 400, "InvalidRequest")
    assert_error(await admin_get(pds, "com.atproto.admin.getSubjectStatus", {"uri": gone["uri"]}), 400, "NotFound")
    assert await pds.service.app.db.read(lambda c: c.execute("SELECT count(*) FROM record_takedowns").fetchone()[0]) == 0


@pytest_twisted.ensureDeferred
async def test_blob_takedown_stops_serving_it_until_reversed(pds):
    alice, post, blob_cid = await account_with_a_post_and_blob(pds, "alice")
    did = alice["did"]
    get = {"did": did, "cid": blob_cid}
    assert (await pds.get("com.atproto.sync.getBlob", get)).code == 200
    subject = {"$type": "com.atproto.admin.defs#repoBlobRef", "did": did, "cid": blob_cid}
    assert (await admin_post(pds, STATUS, {"subject": subject, "takedown": {"applied": True, "ref": "dmca"}})).code == 200
    status = (await admin_get(pds, "com.atproto.admin.getSubjectStatus", {"did": did, "blob": blob_cid})).json()
    assert status == {"subject": subject, "takedown": {"applied": True, "ref": "dmca"}}
    assert_error(await pds.get("com.atproto.sync.getBlob", get), 400, "InvalidRequest")
    # The record that embeds it is still served.
    assert (await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST, "rkey": post["uri"].split("/")[-1]})).code == 200

    assert (await admin_post(pds, STATUS, {"subject": subject, "takedown": {"applied": False}})).code == 200
    served = await pds.get("com.atproto.sync.getBlob", get)
    assert served.code == 200 and served.body.startswith(b"\x89PNG")

    assert_error(await admin_get(pds, "com.atproto.admin.getSubjectStatus", {"blob": blob_cid}), 400, "InvalidRequest")
    unknown = {**subject, "cid": "bafkreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"}
    assert_error(await admin_post(pds, STATUS, {"subject": unknown, "takedown": {"applied": True}}), 400, "InvalidRequest")
    nobody = {"$type": REPO_REF, "did": "did:plc:nobodynobodynobodynobo"}
    assert_error(await admin_post(pds, STATUS, {"subject": nobody, "takedown": {"applied": True}}), 400, "InvalidRequest")
    assert_error(await admin_get(pds, "com.atproto.admin.getSubjectStatus", {"did": nobody["did"]}), 400, "NotFound")
    assert_error(await admin_get(pds, "com.atproto.admin.getSubjectStatus"), 400, "InvalidRequest")


# -- account changes -------------------------------------------------------------------------


async def plc_document(pds, did):
    response = await treq.get(f"{pds.service.app.plc.base_url}/{did}")
    assert response.code == 200
    return json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_update_account_handle(pds):
    alice = await create(pds, "alice")
    await create(pds, "bob")
    did = alice["did"]
    before = await newest_seq(pds)
    for handle, name in [("b", "InvalidRequest"), ("ab.test", "InvalidHandle"), ("bob.test", "InvalidRequest"), ("admin.test", "HandleNotAvailable"),
                         ("alice.example.org", "UnsupportedDomain")]:
        assert_error(await admin_post(pds, "com.atproto.admin.updateAccountHandle", {"did": did, "handle": handle}), 400, name)
    nobody = {"did": "did:plc:nobodynobodynobodynobo", "handle": "carol.test"}
    assert_error(await admin_post(pds, "com.atproto.admin.updateAccountHandle", nobody), 400, "InvalidRequest")
    assert (await plc_document(pds, did))["alsoKnownAs"] == ["at://alice.test"]
    assert await newest_seq(pds) == before

    assert (await admin_post(pds, "com.atproto.admin.updateAccountHandle", {"did": did, "handle": "Alicia.test"})).code == 200
    assert (await plc_document(pds, did))["alsoKnownAs"] == ["at://alicia.test"]
    assert (await admin_get(pds, "com.atproto.admin.getAccountInfo", {"did": did})).json()["handle"] == "alicia.test"
    frames = await firehose_from(pds, before)
    assert [(h["t"], b["did"], b["handle"]) for h, b in frames] == [("#identity", did, "alicia.test")]
    # The old handle is free again.
    assert (await create(pds, "alice", email="another@example.com"))["did"] != did


@pytest_twisted.ensureDeferred
async def test_update_account_email(pds):
    alice = await create(pds, "alice")
    await create(pds, "bob")
    did = alice["did"]
    email = lambda: admin_get(pds, "com.atproto.admin.getAccountInfo", {"did": did})  # noqa: E731
    for account, address in [(did, "bob@example.com"), (did, "not an email"), ("nobody.test", "n@example.com")]:
        answer = await admin_post(pds, "com.atproto.admin.updateAccountEmail", {"account": account, "email": address})
        assert_error(answer, 400, "InvalidRequest")
    assert (await email()).json()["email"] == "alice@example.com"
    assert (await admin_post(pds, "com.atproto.admin.updateAccountEmail", {"account": "alice.test", "email": "New@Example.com"})).code == 200
    assert (await email()).json()["email"] == "new@example.com"
    assert (await login(pds, "new@example.com")).code == 200
    assert (await admin_post(pds, "com.atproto.admin.updateAccountEmail", {"account": did, "email": "alice@example.com"})).code == 200
    assert (await email()).json()["email"] == "alice@example.com"


@pytest_twisted.ensureDeferred
async def test_update_account_password_ends_every_session(pds):
    alice = await create(pds, "alice")
    did = alice["did"]
    app_password = (await pds.post("com.atproto.server.createAppPassword", {"name": "app"},
                                   headers=bearer(alice["accessJwt"]))).json()["password"]
    app_session = (await login(pds, "alice.test", app_password)).json()
    short = await admin_post(pds, "com.atproto.admin.updateAccountPassword", {"did": did, "password": "short"})
    assert_error(short, 400, "InvalidPassword")
    nobody = {"did": "did:plc:nobodynobodynobodynobo", "password": "long enough password"}
    assert_error(await admin_post(pds, "com.atproto.admin.updateAccountPassword", nobody), 400, "InvalidRequest")
    assert (await login(pds, "alice.test")).code == 200

    answer = await admin_post(pds, "com.atproto.admin.updateAccountPassword", {"did": did, "password": "brand new password"})
    assert answer.code == 200, answer.body
    for session in (alice, app_session):
        assert_error(await pds.get("com.atproto.server.getSession", headers=bearer(session["accessJwt"])), 400, "ExpiredToken")
        assert_error(await pds.post("com.atproto.server.refreshSession", headers=bearer(session["refreshJwt"])), 400, "ExpiredToken")
    assert_error(await login(pds, "alice.test"), 401, "AuthenticationRequired")
    assert (await login(pds, "alice.test", "brand new password")).code == 200
    assert (await login(pds, "alice.test", app_password)).code == 200  # app passwords stay, their sessions went


@pytest_twisted.ensureDeferred
async def test_update_account_signing_key_names_it_in_the_did_document(pds):
    alice = await create(pds, "alice")
    did = alice["did"]
    new_key = crypto.K256Keypair.generate().did()
    for key in ("did:key:zNotAKey", "did:plc:abcdefghijklmnopqrstuvwx"):
        answer = await admin_post(pds, "com.atproto.admin.updateAccountSigningKey", {"did": did, "signingKey": key})
        assert_error(answer, 400, "InvalidRequest")
    nobody = {"did": "did:plc:nobodynobodynobodynobo", "signingKey": new_key}
    assert_error(await admin_post(pds, "com.atproto.admin.updateAccountSigningKey", nobody), 400, "InvalidRequest")
    old_key = "did:key:" + (await plc_document(pds, did))["verificationMethod"][0]["publicKeyMultibase"]
    assert old_key != new_key

    before = await newest_seq(pds)
    answer = await admin_post(pds, "com.atproto.admin.updateAccountSigningKey", {"did": did, "signingKey": new_key})
    assert answer.code == 200, answer.body
    doc = await plc_document(pds, did)
    assert "did:key:" + doc["verificationMethod"][0]["publicKeyMultibase"] == new_key
    assert doc["alsoKnownAs"] == ["at://alice.test"]
    assert [(h["t"], b["did"]) for h, b in await firehose_from(pds, before)] == [("#identity", did)]
    # A later handle change keeps the key the admin named.
    assert (await admin_post(pds, "com.atproto.admin.updateAccountHandle", {"did": did, "handle": "alicia.test"})).code == 200
    doc = await plc_document(pds, did)
    assert "did:key:" + doc["verificationMethod"][0]["publicKeyMultibase"] == new_key


# -- deleting an account ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_account_leaves_nothing_of_it(pds, tmp_path):
    alice, post, blob_cid = await account_with_a_post_and_blob(pds, "alice")
    bob, _, bob_blob = await account_with_a_post_and_blob(pds, "bob")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    app = pds.service.app
    # Everything an account can have here: an app password and its session,
    # preferences, a linked sign-in, a record taken down, a blob taken down.
    app_password = (await pds.post("com.atproto.server.createAppPassword", {"name": "app"}, headers=auth)).json()["password"]
    assert (await login(pds, "alice.test", app_password)).code == 200
    prefs = {"preferences": [{"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False}]}
    assert (await pds.post("app.bsky.actor.putPreferences", prefs, headers=auth)).code == 200
    await app.accounts.link_identity(did, "github", "12345")
    await admin_post(pds, STATUS, {"subject": {"$type": "com.atproto.repo.strongRef", "uri": post["uri"], "cid": post["cid"]},
                                   "takedown": {"applied": True}})
    await admin_post(pds, STATUS, {"subject": {"$type": "com.atproto.admin.defs#repoBlobRef", "did": did, "cid": blob_cid},
                                   "takedown": {"applied": True}})
    blob_folder = tmp_path / "data" / "blobs" / did
    assert [p.name for p in blob_folder.iterdir()] == [blob_cid]

    def rows_of(conn, did):
        counts = {}
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"):
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for column in ("did", "used_by", "for_account"):
                if column in columns:
                    counts[f"{table}.{column}"] = conn.execute(
                        f"SELECT count(*) FROM {table} WHERE {column} = ?", (did,)).fetchone()[0]
        return counts

    had = await app.db.read(rows_of, did)
    for table in ("accounts", "signing_keys", "repo_roots", "records", "app_passwords", "refresh_tokens",
                  "oauth_identities", "blobs", "record_blobs", "account_prefs", "record_takedowns", "repo_seq"):
        assert had[f"{table}.did"] > 0, table
    assert had["blocks.did"] + had["fresh_blocks.did"] > 0
    bob_had = await app.db.read(rows_of, bob["did"])
    before = await newest_seq(pds)

    nobody = {"did": "did:plc:nobodynobodynobodynobo"}
    assert_error(await admin_post(pds, "com.atproto.admin.deleteAccount", nobody), 400, "InvalidRequest")
    assert (await admin_post(pds, "com.atproto.admin.deleteAccount", {"did": did})).code == 200

    left = await app.db.read(rows_of, did)
    assert {name: n for name, n in left.items() if n} == {"repo_seq.did": 1}
    assert await app.db.read(rows_of, bob["did"]) == bob_had
    assert not blob_folder.exists()  # the folder named after it too
    assert [p.name for p in (tmp_path / "data" / "blobs" / bob["did"]).iterdir()] == [bob_blob]

    # The firehose keeps one event of the account: its deletion.
    frames = await firehose_from(pds, 0)
    mine = [(h["t"], b) for h, b in frames if b.get("did", b.get("repo")) == did]
    assert [(t, b["active"], b["status"]) for t, b in mine] == [("#account", False, "deleted")]
    assert mine[0][1]["seq"] > before

    # Nothing answers for it; its sessions are gone; its handle and email are free.
    assert_error(await pds.get("com.atproto.sync.getRepoStatus", {"did": did}), 400, "RepoNotFound")
    assert_error(await pds.get("com.atproto.sync.getLatestCommit", {"did": did}), 400, "RepoNotFound")
    assert_error(await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST, "rkey": post["uri"].split("/")[-1]}), 400, "RepoNotFound")
    assert_error(await pds.get("com.atproto.server.getSession", headers=auth), 400, "ExpiredToken")
    assert_error(await login(pds, "alice.test"), 401, "AuthenticationRequired")
    assert did not in {r["did"] for r in (await pds.get("com.atproto.sync.listRepos")).json()["repos"]}
    again = await create(pds, "alice")
    assert again["did"] != did
    assert await app.accounts.did_for_identity("github", "12345") is None
