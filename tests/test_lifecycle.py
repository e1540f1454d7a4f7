"""
An account's own lifecycle over real HTTP: deactivate/activate with every
read and write path, checkAccountStatus, and deletion with the code mailed
to a real SMTP stand-in; the firehose read over a real WebSocket.
"""

import base64

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from leafpds.accounts import lifecycle
from leafpds.ipld.car import read_car
from leafpds.lexicon import validate_output
from leafpds.tid import TIDClock
from tests.harness import make_settings, start_pds
from tests.smtp_standin import Inbox
from tests.test_admin import (
    ADMIN, ADMIN_PASSWORD, PASSWORD, POST, account_with_a_post_and_blob, admin_get, admin_post, assert_error,
    bearer, firehose_from, login, newest_seq, plain_post, repo_reads, sync_reads, unserved_repo_error,
)
from tests.test_oauth_xrpc import grant

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

STATUS = "com.atproto.admin.updateSubjectStatus"
SMTP_PASSWORD = "smtp-Pa55-w0rd"


@pytest_twisted.async_yield_fixture
async def world(tmp_path):
    """(leafpds with an admin password, mailing to the inbox; the inbox)."""
    inbox = Inbox(username="mailer", password=SMTP_PASSWORD).start()
    pds = await start_pds(make_settings(
        tmp_path / "data", admin_password=ADMIN_PASSWORD,
        smtp_url=f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{inbox.port}", email_from="pds@example.com",
    ))
    yield pds, inbox
    await pds.service.stopService()
    inbox.stop()


async def write(pds, did, auth):
    return await pds.post("com.atproto.repo.createRecord",
                          {"repo": did, "collection": POST, "record": plain_post("hi")}, headers=auth)


async def account_status(pds, auth):
    answer = await pds.get("com.atproto.server.checkAccountStatus", headers=auth)
    assert answer.code == 200, answer.body
    validate_output(pds.service.app.lexicons, "com.atproto.server.checkAccountStatus", answer.json())
    return answer.json()


def my_events(frames, did):
    return [(h["t"], b) for h, b in frames if b.get("did", b.get("repo")) == did]


async def handle_resolves(pds, did):
    """alice.test resolves to ``did`` (None: to nothing) by resolveHandle and the well-known name."""
    answer = await pds.get("com.atproto.identity.resolveHandle", {"handle": "alice.test"})
    known = await pds.request("GET", "/.well-known/atproto-did", headers={"Host": "alice.test"})
    if did is None:
        assert_error(answer, 400, "HandleNotFound")
        assert known.code == 404
    else:
        assert answer.json() == {"did": did}
        assert (known.code, known.body) == (200, did.encode())


@pytest_twisted.ensureDeferred
async def test_deactivate_then_activate(world):
    pds, _ = world
    alice, post, blob_cid = await account_with_a_post_and_blob(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    rkey = post["uri"].split("/")[-1]
    commit = (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json()["cid"]
    before = await newest_seq(pds)

    later = "2030-01-01T00:00:00.000Z"
    answer = await pds.post("com.atproto.server.deactivateAccount", {"deleteAfter": later}, headers=auth)
    assert answer.code == 200, answer.body
    stored = await pds.service.app.db.read(
        lambda conn: conn.execute("SELECT status, delete_after FROM accounts WHERE did = ?", (did,)).fetchone())
    assert tuple(stored) == ("deactivated", later)

    # Writes refused, sync reads refused, status says so, login still works.
    assert_error(await write(pds, did, auth), 401, "AccountDeactivated")
    for nsid, params in sync_reads(did, rkey, blob_cid, commit):
        assert_error(await pds.get(nsid, params), 400, "RepoDeactivated")
    status = (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()
    assert status == {"did": did, "active": False, "status": "deactivated"}
    listed = {r["did"]: r for r in (await pds.get("com.atproto.sync.listRepos")).json()["repos"]}
    assert (listed[did]["active"], listed[did]["status"]) == (False, "deactivated")
    session = await login(pds, "alice.test")
    assert session.code == 200, session.body
    assert (session.json()["active"], session.json()["status"]) == (False, "deactivated")
    assert (await account_status(pds, auth))["activated"] is False
    # Its handle resolves for no one meanwhile (it stays the account's).
    await handle_resolves(pds, None)
    # Deactivating again says nothing more.
    assert (await pds.post("com.atproto.server.deactivateAccount", {}, headers=auth)).code == 200

    frames = my_events(await firehose_from(pds, before), did)
    assert [(t, b["active"], b["status"]) for t, b in frames] == [("#account", False, "deactivated")]

    middle = await newest_seq(pds)
    assert (await pds.post("com.atproto.server.activateAccount", headers=auth)).code == 200
    frames = my_events(await firehose_from(pds, middle), did)
    assert [t for t, _ in frames] == ["#account", "#identity", "#sync"]
    assert frames[0][1]["active"] is True and "status" not in frames[0][1]
    assert frames[1][1]["handle"] == "alice.test"
    assert frames[2][1]["rev"] == (await account_status(pds, auth))["repoRev"]
    assert (await write(pds, did, auth)).code == 200
    assert (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()["active"] is True
    assert (await account_status(pds, auth))["activated"] is True
    await handle_resolves(pds, did)
    # Activating an active account: no events.
    now = await newest_seq(pds)
    assert (await pds.post("com.atproto.server.activateAccount", headers=auth)).code == 200
    assert await newest_seq(pds) == now


@pytest_twisted.ensureDeferred
async def test_deactivated_repo_reads_by_who_asks(world):
    """
    Every repo and sync read of a deactivated repo, as the official PDS
    answers each caller: the sync methods serve the account itself (its
    session, an app password, an OAuth grant) and the admin, as before it
    was deactivated, and refuse anyone else ``RepoDeactivated``; a bad
    credential is refused, not taken for none; the com.atproto.repo reads
    take no credentials and serve nobody; writes stay refused.
    """
    pds, _ = world
    alice, post, blob_cid = await account_with_a_post_and_blob(pds, "alice")
    bob, _, _ = await account_with_a_post_and_blob(pds, "bob")
    did, auth, rkey = alice["did"], bearer(alice["accessJwt"]), post["uri"].split("/")[-1]
    app_password = (await pds.post("com.atproto.server.createAppPassword", {"name": "exporter"},
                                   headers=auth)).json()["password"]
    app_auth = bearer((await login(pds, did, app_password)).json()["accessJwt"])
    oauth = await grant(pds, did)
    head = (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json()
    sync = sync_reads(did, rkey, blob_cid, head["cid"])
    repo = repo_reads(did, "alice.test", rkey)
    served = {}
    for nsid, params in sync:
        answer = await pds.get(nsid, params)
        assert answer.code == 200, (nsid, answer.body)
        served[nsid] = answer.body
    for nsid, params in repo:
        assert (await pds.get(nsid, params)).code == 200, nsid  # getRecord by DID is cached now

    assert (await pds.post("com.atproto.server.deactivateAccount", {}, headers=auth)).code == 200

    wrong_admin = {"Authorization": "Basic " + base64.b64encode(b"admin:not the password").decode()}
    for nsid, params in sync:
        # Anyone else: refused, named.
        assert_error(await pds.get(nsid, params), 400, "RepoDeactivated")
        assert_error(await pds.get(nsid, params, headers=bearer(bob["accessJwt"])), 400, "RepoDeactivated")
        # The account itself and the admin: what it served before.
        for who, headers in (("owner", auth), ("app password", app_auth), ("admin", ADMIN)):
            answer = await pds.get(nsid, params, headers=headers)
            assert (answer.code, answer.body) == (200, served[nsid]), (nsid, who, answer.body[:200])
            assert "authorization" in answer.header("vary").lower(), nsid
        by_grant = await oauth.get(nsid, **params)
        assert (by_grant.code, by_grant.body) == (200, served[nsid]), (nsid, by_grant.body[:200])
        # A credential that does not hold is refused, whoever's repo it is.
        assert_error(await pds.get(nsid, params, headers=bearer("not-a-token")), 400, "InvalidToken")
        assert_error(await pds.get(nsid, params, headers={"Authorization": "Token abc"}), 400, "InvalidToken")
        assert_error(await pds.get(nsid, params, headers=wrong_admin), 401, "AuthenticationRequired")
        refused = await pds.get(nsid, params)
        assert "authorization" in refused.header("vary").lower(), nsid
    # Bob's own repo is his to read as before; a bad credential on it is refused all the same.
    bob_head = await pds.get("com.atproto.sync.getLatestCommit", {"did": bob["did"]}, headers=auth)
    assert bob_head.code == 200, bob_head.body
    bob_bad = await pds.get("com.atproto.sync.getLatestCommit", {"did": bob["did"]}, headers=bearer("x"))
    assert_error(bob_bad, 400, "InvalidToken")

    # getRepoStatus says what it is, to anyone, credentials or not.
    for headers in ({}, auth, bearer(bob["accessJwt"]), ADMIN, bearer("not-a-token")):
        status = await pds.get("com.atproto.sync.getRepoStatus", {"did": did}, headers=headers)
        assert status.json() == {"did": did, "active": False, "status": "deactivated"}

    # The repo reads: the same answer whoever asks (they take no credentials);
    # getRecord and listRecords exactly as for a repo not hosted here.
    nobody = "did:plc:nobodynobodynobodynobody"
    for nsid, params in repo:
        expected = unserved_repo_error(nsid, "RepoDeactivated")
        for headers in ({}, auth, bearer(bob["accessJwt"]), ADMIN):
            assert_error(await pds.get(nsid, params, headers=headers), 400, expected)
        if nsid != "com.atproto.repo.describeRepo":
            unknown = await pds.get(nsid, {**params, "repo": nobody})
            assert_error(unknown, 400, expected)
            mine = (await pds.get(nsid, params)).json()["message"]
            assert mine == f"Could not find repo: {params['repo']}"
            assert unknown.json()["message"] == f"Could not find repo: {nobody}"
    describe = await pds.get("com.atproto.repo.describeRepo", {"repo": "alice.test"})
    assert describe.json()["message"] == "Repo has been deactivated: alice.test"
    assert_error(await pds.get("com.atproto.repo.describeRepo", {"repo": nobody}), 400, "RepoNotFound")

    # Writes stay refused, by every credential; nothing changed.
    assert_error(await write(pds, did, auth), 401, "AccountDeactivated")
    assert_error(await write(pds, did, app_auth), 401, "AccountDeactivated")
    by_grant = await oauth.post("com.atproto.repo.createRecord",
                                {"repo": did, "collection": POST, "record": plain_post("x")})
    assert_error(by_grant, 401, "AccountDeactivated")
    assert (await pds.get("com.atproto.sync.getLatestCommit", {"did": did}, headers=auth)).json() == head

    # Activated again: everyone reads it as before.
    assert (await pds.post("com.atproto.server.activateAccount", headers=auth)).code == 200
    for nsid, params in sync:
        answer = await pds.get(nsid, params)
        assert (answer.code, answer.body) == (200, served[nsid]), nsid
    for nsid, params in repo:
        assert (await pds.get(nsid, params)).code == 200, nsid


@pytest_twisted.ensureDeferred
async def test_preferences_are_put_while_deactivated(world):
    """
    Preferences are not repo writes: a migration puts them on the new PDS
    before it activates the account (the official PDS refuses them only
    to a taken-down account), while records stay refused.
    """
    pds, _ = world
    alice, _, _ = await account_with_a_post_and_blob(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    assert (await pds.post("com.atproto.server.deactivateAccount", {}, headers=auth)).code == 200
    prefs = [
        {"$type": "app.bsky.actor.defs#adultContentPref", "enabled": True},
        {"$type": "app.bsky.actor.defs#savedFeedsPrefV2", "items": []},
    ]
    answer = await pds.post("app.bsky.actor.putPreferences", {"preferences": prefs}, headers=auth)
    assert answer.code == 200, answer.body
    assert (await pds.get("app.bsky.actor.getPreferences", headers=auth)).json() == {"preferences": prefs}
    assert (await account_status(pds, auth))["privateStateValues"] == 2
    assert_error(await write(pds, did, auth), 401, "AccountDeactivated")


@pytest_twisted.ensureDeferred
async def test_takedown_over_deactivation(world):
    pds, _ = world
    alice, _, _ = await account_with_a_post_and_blob(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    assert (await pds.post("com.atproto.server.deactivateAccount", {}, headers=auth)).code == 200
    subject = {"$type": "com.atproto.admin.defs#repoRef", "did": did}
    assert (await admin_post(pds, STATUS, {"subject": subject, "takedown": {"applied": True}})).code == 200
    # Taken down: its sessions ended, login refused, so it cannot activate itself.
    assert_error(await pds.post("com.atproto.server.activateAccount", headers=auth), 400, "ExpiredToken")
    assert_error(await login(pds, "alice.test"), 401, "AccountTakedown")
    app = pds.service.app
    with pytest.raises(Exception) as refused:
        await app.db.write(lifecycle._activate_unit, did, 0.0)
    assert getattr(refused.value, "name", None) == "AccountTakedown"

    before = await newest_seq(pds)
    assert (await admin_post(pds, STATUS, {"subject": subject, "takedown": {"applied": False}})).code == 200
    # The reversal restores the deactivation.
    status = (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()
    assert status == {"did": did, "active": False, "status": "deactivated"}
    frames = my_events(await firehose_from(pds, before), did)
    assert [(t, b["active"], b["status"]) for t, b in frames] == [("#account", False, "deactivated")]
    auth = bearer((await login(pds, "alice.test")).json()["accessJwt"])
    assert (await pds.post("com.atproto.server.activateAccount", headers=auth)).code == 200
    assert (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()["active"] is True


@pytest_twisted.ensureDeferred
async def test_check_account_status_counts(world):
    pds, _ = world
    alice, post, blob_cid = await account_with_a_post_and_blob(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    prefs = {"preferences": [{"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False}]}
    assert (await pds.post("app.bsky.actor.putPreferences", prefs, headers=auth)).code == 200
    latest = (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json()
    status = await account_status(pds, auth)
    repo = await pds.get("com.atproto.sync.getRepo", {"did": did})
    _, blocks = read_car(repo.body)
    assert status == {
        "activated": True, "validDid": True,
        "repoCommit": latest["cid"], "repoRev": latest["rev"],
        "repoBlocks": len({cid for cid, _ in blocks}),
        "indexedRecords": 1, "privateStateValues": 1, "expectedBlobs": 1, "importedBlobs": 1,
    }
    # The DID naming another signing key is not valid for this PDS, and activation is refused.
    app = pds.service.app
    await app.accounts.update_signing_key(did, "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme")
    assert (await account_status(pds, auth))["validDid"] is False
    assert (await pds.post("com.atproto.server.deactivateAccount", {}, headers=auth)).code == 200
    refused = await pds.post("com.atproto.server.activateAccount", headers=auth)
    assert_error(refused, 400, "InvalidRequest")
    assert refused.json()["message"] == "DID document verification method does not match expected signing key"
    assert (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()["active"] is False


@pytest_twisted.ensureDeferred
async def test_delete_account_with_password_and_mailed_code(world, tmp_path):
    pds, inbox = world
    alice, post, blob_cid = await account_with_a_post_and_blob(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    app = pds.service.app

    assert_error(await pds.post("com.atproto.server.requestAccountDelete"), 401, "AuthMissing")
    assert (await pds.post("com.atproto.server.requestAccountDelete", headers=auth)).code == 200
    (mail,) = await inbox.wait(1)
    assert mail.recipients == ["alice@example.com"]
    code = mail.code

    async def delete(**body):
        return await pds.post("com.atproto.server.deleteAccount", {"did": did, "password": PASSWORD, "token": code, **body})

    def rows(conn):
        return conn.execute("SELECT count(*) FROM records WHERE did = ?", (did,)).fetchone()[0]

    # Refusals change nothing: wrong password, wrong code, (later) a used code.
    assert_error(await delete(password="wrong password"), 401, "AuthenticationRequired")
    assert_error(await delete(token="AAAAA-BBBBB"), 400, "InvalidToken")
    assert await app.db.read(rows) == 1
    assert (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()["active"] is True
    assert (await write(pds, did, auth)).code == 200

    before = await newest_seq(pds)
    answer = await delete(token=code.lower())
    assert answer.code == 200, answer.body
    assert await app.db.read(rows) == 0
    assert not (tmp_path / "data" / "blobs" / did).exists()
    assert_error(await pds.get("com.atproto.sync.getRepoStatus", {"did": did}), 400, "RepoNotFound")
    assert_error(await login(pds, "alice.test"), 401, "AuthenticationRequired")
    frames = my_events(await firehose_from(pds, before), did)
    assert [(t, b["active"], b["status"]) for t, b in frames] == [("#account", False, "deleted")]
    assert_error(await delete(), 401, "AuthenticationRequired")


@pytest_twisted.ensureDeferred
async def test_expired_delete_code_is_refused(world):
    pds, inbox = world
    alice, _, _ = await account_with_a_post_and_blob(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    assert (await pds.post("com.atproto.server.requestAccountDelete", headers=auth)).code == 200
    (mail,) = await inbox.wait(1)
    app = pds.service.app
    await app.db.write(lambda conn: conn.execute("UPDATE email_tokens SET requested_at = '2000-01-01T00:00:00.000Z'"))
    answer = await pds.post("com.atproto.server.deleteAccount", {"did": did, "password": PASSWORD, "token": mail.code})
    assert_error(answer, 400, "ExpiredToken")
    assert (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()["active"] is True


@pytest_twisted.ensureDeferred
async def test_recommended_did_credentials_match_what_the_plc_directory_holds(pds):
    from tests.test_accounts import bearer, create

    made = (await create(pds, "rex")).json()
    did, auth = made["did"], bearer(made["accessJwt"])
    answer = await pds.get("com.atproto.identity.getRecommendedDidCredentials", headers=auth)
    assert answer.code == 200, answer.body
    validate_output(pds.service.app.lexicons, "com.atproto.identity.getRecommendedDidCredentials", answer.json())
    # What a migration in would publish is what this PDS already published for its own account.
    last = await pds.service.app.plc.last_operation(did)
    assert answer.json() == {
        "alsoKnownAs": last["alsoKnownAs"],
        "verificationMethods": last["verificationMethods"],
        "rotationKeys": last["rotationKeys"],
        "services": last["services"],
    }
    assert answer.json()["services"]["atproto_pds"]["endpoint"] == pds.service.app.public_url
    assert (await pds.get("com.atproto.identity.getRecommendedDidCredentials")).code == 401


@pytest_twisted.ensureDeferred
async def test_deletion_leaves_nothing_of_the_account_in_any_file(tmp_path):
    """
    A populated account is deleted; then every file of the data folder is
    read byte by byte for its DID, handle and email.  The one thing left is
    the ``#account`` deleted event the firehose keeps (as the official PDS).
    The embedded PLC directory (``plc/``) stands in for plc.directory, a
    service of its own that keeps every DID's history, so it is not read.
    """
    from tests.test_oauth_xrpc import grant

    from leafpds.admin.actions import DELETED_ACCOUNT

    inbox = Inbox(username="mailer", password=SMTP_PASSWORD).start()
    data = tmp_path / "data"
    pds = await start_pds(make_settings(
        data, admin_password=ADMIN_PASSWORD, invite_required=True,
        smtp_url=f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{inbox.port}", email_from="pds@example.com",
    ))
    app = pds.service.app
    try:
        async def invite(uses, **for_account):
            answer = await admin_post(pds, "com.atproto.server.createInviteCode", {"useCount": uses, **for_account})
            assert answer.code == 200, answer.body
            return answer.json()["code"]

        alice_code = await invite(2)
        alice, _, _ = await account_with_a_post_and_blob(pds, "zoltanna", inviteCode=alice_code)
        did, auth = alice["did"], bearer(alice["accessJwt"])
        handle, email = "zoltanna.test", "zoltanna@example.com"
        # An invite made for her that someone else used.
        hers = await invite(3, forAccount=did)
        bob, _, bob_blob = await account_with_a_post_and_blob(pds, "bob", inviteCode=hers)
        # Records across collections, more blobs, an app password and its
        # session, preferences, an OAuth grant, a record updated and deleted.
        for n in range(30):
            assert (await write(pds, did, auth)).code == 200
        # Pages of hers freed whole before the deletion (200 records written, then deleted).
        clock = TIDClock()
        rkeys = [clock.next() for _ in range(200)]
        for kind, value in (("create", plain_post("a longer post, " * 20)), ("delete", None)):
            writes = [{"$type": f"com.atproto.repo.applyWrites#{kind}", "collection": POST, "rkey": rkey,
                       **({"value": value} if value else {})} for rkey in rkeys]
            answer = await pds.post("com.atproto.repo.applyWrites", {"repo": did, "writes": writes}, headers=auth)
            assert answer.code == 200, answer.body
        profile = {"$type": "app.bsky.actor.profile", "displayName": "Zoltanna"}
        put = {"repo": did, "collection": "app.bsky.actor.profile", "rkey": "self", "record": profile}
        assert (await pds.post("com.atproto.repo.putRecord", put, headers=auth)).code == 200
        first = (await write(pds, did, auth)).json()["uri"].split("/")[-1]
        assert (await pds.post("com.atproto.repo.deleteRecord",
                               {"repo": did, "collection": POST, "rkey": first}, headers=auth)).code == 200
        for n in range(3):
            upload = await pds.request("POST", "/xrpc/com.atproto.repo.uploadBlob", data=bytes([n]) * 5000,
                                       headers={**auth, "Content-Type": "application/octet-stream"})
            assert upload.code == 200, upload.body
        password = (await pds.post("com.atproto.server.createAppPassword", {"name": "app"}, headers=auth)).json()["password"]
        assert (await login(pds, handle, password)).code == 200
        prefs = {"preferences": [{"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False}]}
        assert (await pds.post("app.bsky.actor.putPreferences", prefs, headers=auth)).code == 200
        assert (await (await grant(pds, did)).get("com.atproto.server.getSession")).code == 200

        # The deletion code arrives; mail sent after it stays queued (the SMTP server is gone).
        assert (await pds.post("com.atproto.server.requestAccountDelete", headers=auth)).code == 200
        (mail,) = await inbox.wait(1)
        inbox.stop()
        assert (await pds.post("com.atproto.server.requestEmailConfirmation", headers=auth)).code == 200
        assert (await admin_post(pds, "com.atproto.admin.sendEmail",
                                 {"recipientDid": did, "senderDid": did, "content": "A word, " + handle})).code == 200

        def queued(conn):
            return conn.execute("SELECT count(*) FROM mail_queue WHERE recipient = ?", (email,)).fetchone()[0]

        assert await app.db.read(queued) == 2
        assert len(list((data / "blobs" / did).iterdir())) == 4

        answer = await pds.post("com.atproto.server.deleteAccount", {"did": did, "password": PASSWORD, "token": mail.code})
        assert answer.code == 200, answer.body
        assert await app.db.read(queued) == 0

        # Invites: hers still admits people, owned by no one; the use she made stays spent.
        codes = {c["code"]: c for c in (await admin_get(pds, "com.atproto.admin.getInviteCodes")).json()["codes"]}
        assert (codes[hers]["forAccount"], codes[hers]["available"], codes[hers]["uses"][0]["usedBy"]) == (
            DELETED_ACCOUNT, 3, bob["did"])
        assert (codes[alice_code]["available"], codes[alice_code]["uses"]) == (1, [])
        bob_info = (await admin_get(pds, "com.atproto.admin.getAccountInfo", {"did": bob["did"]})).json()
        assert bob_info["invitedBy"]["code"] == hers
        assert (await pds.post("com.atproto.server.createAccount", {
            "handle": "carol.test", "email": "carol@example.com", "password": PASSWORD, "inviteCode": hers,
        })).code == 200
        for name, status in (("dave", 200), ("erin", 400)):
            answer = await pds.post("com.atproto.server.createAccount", {
                "handle": f"{name}.test", "email": f"{name}@example.com", "password": PASSWORD,
                "inviteCode": alice_code,
            })
            assert answer.code == status, answer.body

        # The emptied WAL is truncated by the checkpointer, in its own thread.
        for _ in range(500):
            if not app.db.checkpointer.purging:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        kept = await app.db.read(lambda conn: conn.execute(
            "SELECT event FROM repo_seq WHERE did = ?", (did,)).fetchall())
        assert len(kept) == 1
        event = kept[0][0]
        assert did.encode() in event
        left_running = leftovers(data, did, event, (did, handle, email, "zoltanna"))
    finally:
        await pds.service.stopService()
    # Looked at while running (the WAL as it is) and once stopped.
    assert left_running == leftovers(data, did, event, (did, handle, email, "zoltanna")) == {}
    assert did.encode() + b"#account" + event in (data / "leafpds.sqlite").read_bytes()
    assert not (data / "blobs" / did).exists()
    assert (data / "blobs" / bob["did"] / bob_blob).is_file()


def leftovers(data, did, event, needles):
    """
    {file: the needles in it}, with every copy of the event's row left out
    (its columns did, event_type, event, as SQLite lays them out side by
    side); the PLC directory's files aside.
    """
    row = did.encode() + b"#account" + event
    found = {}
    for path in sorted(data.rglob("*")):
        if not path.is_file() or path.is_relative_to(data / "plc"):
            continue
        rest = path.read_bytes().replace(row, b"")
        hits = [needle for needle in needles if needle.encode() in rest]
        if hits:
            found[str(path.relative_to(data))] = hits
    return found
