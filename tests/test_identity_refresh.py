"""
com.atproto.identity.refreshIdentity: an account's DID document re-read
afresh, its handle verified both ways, stored if it changed, and announced
with ``#identity``.  A real leafpds over HTTP with its embedded PLC
directory, did:web documents served by a loopback HTTP server, handles
outside this PDS's domain resolved by a loopback DNS server, the firehose
read over a WebSocket.
"""

import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.names import dns

from leafpds.identity.plc import ATPROTO_KEY, build_operation, build_tombstone, operation_cid, sign_operation
from leafpds.lexicon import validate_output
from tests.documents_server import DocumentsServer
from tests.harness import make_settings, start_pds
from tests.test_admin import ADMIN_PASSWORD, PASSWORD, assert_error, bearer, firehose_from, newest_seq
from tests.test_handles import Network
from tests.test_plc_operations import arrive_on_web, did_web_document, identities

REFRESH = "com.atproto.identity.refreshIdentity"
DID_JSON = "/.well-known/did.json"


@pytest_twisted.async_yield_fixture
async def world(tmp_path):
    """
    (leafpds serving handles under ``pds.test``, allowed to fetch documents
    from loopback and resolving other ``.test`` handles with the loopback
    DNS server; the documents server; the network).
    """
    documents = DocumentsServer.start()
    network = Network()
    network.start()
    # Unlimited: these tests refresh one account more often than anyone may (the limit has its test).
    pds = await start_pds(make_settings(
        tmp_path / "data", allow_private_services=True, admin_password=ADMIN_PASSWORD, handle_domain=".pds.test",
        no_rate_limits=True,
    ))
    await pds.service.ready
    resolver = network.resolver()
    pds.service.app.accounts.resolve_handle = resolver.resolve
    yield pds, documents, network
    resolver.stop()
    await pds.service.stopService()
    await documents.stop()
    await gatherResults([port.stopListening() for port in network.ports])


async def session(pds, auth):
    answer = await pds.get("com.atproto.server.getSession", headers=auth)
    assert answer.code == 200, answer.body
    return answer.json()


async def refresh(pds, identifier):
    return await pds.post(REFRESH, {"identifier": identifier})


async def stored_handle(pds, did):
    return await pds.service.app.db.read(
        lambda conn: conn.execute("SELECT handle FROM accounts WHERE did = ?", (did,)).fetchone()[0]
    )


async def web_account(pds, documents):
    """An active did:web account "webby.pds.test" whose document names this PDS and its key."""
    app = pds.service.app
    did = f"did:web:localhost%3A{documents.port.getHost().port}"
    key, auth = await arrive_on_web(pds, documents, did, "webby.pds.test", "webby@example.com")
    documents.put(DID_JSON, did_web_document(did, "webby.pds.test", key.did(), app.public_url))
    assert (await pds.post("com.atproto.server.activateAccount", headers=auth)).code == 200
    return did, key, auth


@pytest_twisted.ensureDeferred
async def test_a_did_web_owner_changes_handle_and_asks_for_a_refresh(world):
    pds, documents, network = world
    app = pds.service.app
    did, key, auth = await web_account(pds, documents)
    assert (await app.dids.resolve(did))["alsoKnownAs"] == ["at://webby.pds.test"]  # cached now
    cursor = await newest_seq(pds)

    # The owner publishes a handle that does not resolve to the DID yet: refused, nothing changed.
    documents.put(DID_JSON, did_web_document(did, "webster.test", key.did(), app.public_url))
    refused = await refresh(pds, did)
    assert_error(refused, 400, "HandleNotFound")
    assert "webster.test" in refused.json()["message"]
    network.dns.set("_atproto.webster.test", dns.Record_TXT(b"did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"))
    assert_error(await refresh(pds, did), 400, "HandleNotFound")
    assert await stored_handle(pds, did) == "webby.pds.test"
    assert (await session(pds, auth))["handle"] == "webby.pds.test"
    assert await newest_seq(pds) == cursor

    # Once the handle points to the DID (looked up afresh: the refusals were remembered), it is the account's.
    network.dns.set("_atproto.webster.test", dns.Record_TXT(f"did={did}".encode()))
    hits = documents.hits[DID_JSON]
    answer = await refresh(pds, did)
    assert answer.code == 200, answer.body
    validate_output(app.lexicons, REFRESH, answer.json())
    published = did_web_document(did, "webster.test", key.did(), app.public_url)
    assert answer.json() == {"did": did, "handle": "webster.test", "didDoc": published}
    assert documents.hits[DID_JSON] == hits + 1
    assert [body["handle"] for body in identities(await firehose_from(pds, cursor), did)] == ["webster.test"]
    assert (await session(pds, auth))["handle"] == "webster.test"
    assert (await session(pds, auth))["didDoc"] == published  # the cached document is the new one
    resolved = await pds.get("com.atproto.identity.resolveHandle", {"handle": "webster.test"})
    assert resolved.json() == {"did": did}
    # The old handle under this PDS's domain is free again.
    assert_error(await pds.get("com.atproto.identity.resolveHandle", {"handle": "webby.pds.test"}), 400, "HandleNotFound")
    # The account still signs in by its new handle.
    signed_in = await pds.post("com.atproto.server.createSession", {"identifier": "webster.test", "password": PASSWORD})
    assert signed_in.code == 200, signed_in.body

    # Asked by handle, with nothing changed: the same answer, and another #identity for relays.
    cursor = await newest_seq(pds)
    again = await refresh(pds, "Webster.Test")
    assert again.code == 200, again.body
    assert again.json()["handle"] == "webster.test"
    assert [body["handle"] for body in identities(await firehose_from(pds, cursor), did)] == ["webster.test"]


@pytest_twisted.ensureDeferred
async def test_a_refresh_that_cannot_verify_changes_nothing(world):
    pds, documents, network = world
    app = pds.service.app
    did, key, auth = await web_account(pds, documents)
    other = (await pds.post("com.atproto.server.createAccount", {
        "handle": "other.pds.test", "email": "other@example.com", "password": PASSWORD,
    })).json()
    cursor = await newest_seq(pds)

    async def unchanged():
        assert await stored_handle(pds, did) == "webby.pds.test"
        assert (await session(pds, auth))["handle"] == "webby.pds.test"
        assert await newest_seq(pds) == cursor

    # Accounts not hosted here.
    for identifier, name in [
        ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "DidNotFound"),
        ("did:web:elsewhere.example.com", "DidNotFound"),
        ("nobody.pds.test", "HandleNotFound"),
        ("somebody.example.com", "HandleNotFound"),
    ]:
        assert_error(await refresh(pds, identifier), 400, name)
    assert_error(await refresh(pds, "not a handle"), 400, "InvalidRequest")
    await unchanged()
    # The document is gone, deactivated (410), out of reach for now, or no longer names a handle.
    published = documents.documents.pop(DID_JSON)
    assert_error(await refresh(pds, did), 400, "DidNotFound")
    await unchanged()
    documents.put(DID_JSON, {"gone": True}, status=410)
    assert_error(await refresh(pds, did), 400, "DidDeactivated")
    await unchanged()
    documents.documents[DID_JSON] = published
    documents.documents[DID_JSON].status = 503
    refused = await refresh(pds, did)
    assert_error(refused, 502, "UpstreamFailure")
    assert "503" in refused.json()["message"]
    await unchanged()
    no_handle = did_web_document(did, "webby.pds.test", key.did(), app.public_url)
    no_handle["alsoKnownAs"] = []
    documents.put(DID_JSON, no_handle)
    assert_error(await refresh(pds, did), 400, "HandleNotFound")
    await unchanged()
    # A handle under this PDS's domain is an account's only once claimed with
    # updateHandle: neither a free one nor another account's.
    for handle in ("free.pds.test", "other.pds.test"):
        documents.put(DID_JSON, did_web_document(did, handle, key.did(), app.public_url))
        assert_error(await refresh(pds, did), 400, "HandleNotFound")
        await unchanged()
    assert await stored_handle(pds, other["did"]) == "other.pds.test"


@pytest_twisted.ensureDeferred
async def test_a_did_plc_account_refreshes_what_its_plc_data_says(world):
    pds, documents, network = world
    app = pds.service.app
    created = (await pds.post("com.atproto.server.createAccount", {
        "handle": "alice.pds.test", "email": "alice@example.com", "password": PASSWORD,
    })).json()
    did, auth = created["did"], bearer(created["accessJwt"])
    cursor = await newest_seq(pds)

    answer = await refresh(pds, "alice.pds.test")
    assert answer.code == 200, answer.body
    assert answer.json() == {"did": did, "handle": "alice.pds.test", "didDoc": await app.plc.resolve(did)}
    assert [body["handle"] for body in identities(await firehose_from(pds, cursor), did)] == ["alice.pds.test"]

    # The DID's data changes at the directory without this PDS's updateHandle
    # (as a rotation key its owner holds would change it), to a handle elsewhere.
    last = await app.plc.last_operation(did)
    op = sign_operation(build_operation(
        rotation_keys=last["rotationKeys"], signing_key=last["verificationMethods"][ATPROTO_KEY],
        handle="alice.test", pds_endpoint=app.public_url, prev=operation_cid(last).encode(),
    ), app.accounts.rotation_key)
    await app.plc.submit(did, op)
    cursor = await newest_seq(pds)
    assert_error(await refresh(pds, did), 400, "HandleNotFound")
    assert (await session(pds, auth))["handle"] == "alice.pds.test"
    assert await newest_seq(pds) == cursor

    network.dns.set("_atproto.alice.test", dns.Record_TXT(f"did={did}".encode()))
    answer = await refresh(pds, did)
    assert answer.code == 200, answer.body
    assert answer.json()["handle"] == "alice.test"
    assert answer.json()["didDoc"]["alsoKnownAs"] == ["at://alice.test"]
    assert [body["handle"] for body in identities(await firehose_from(pds, cursor), did)] == ["alice.test"]
    assert (await session(pds, auth))["handle"] == "alice.test"
    assert (await pds.get("com.atproto.identity.resolveHandle", {"handle": "alice.test"})).json() == {"did": did}
    # The account's status still holds (this PDS's key and endpoint are unchanged).
    assert (await pds.get("com.atproto.server.checkAccountStatus", headers=auth)).json()["validDid"] is True

    # The directory out of reach: no answer to give, nothing changed.
    cursor = await newest_seq(pds)
    base_url, app.plc.base_url = app.plc.base_url, "http://127.0.0.1:9"  # the discard port: nothing listens
    try:
        refused = await refresh(pds, did)
        assert_error(refused, 502, "UpstreamFailure")
        assert "unreachable" in refused.json()["message"]
    finally:
        app.plc.base_url = base_url
    # A DID tombstoned at the directory is deactivated.
    last = await app.plc.last_operation(did)
    await app.plc.submit(did, sign_operation(build_tombstone(operation_cid(last).encode()), app.accounts.rotation_key))
    assert_error(await refresh(pds, did), 400, "DidDeactivated")
    assert (await session(pds, auth))["handle"] == "alice.test"
    assert await newest_seq(pds) == cursor


@pytest_twisted.ensureDeferred
async def test_refreshes_are_limited_per_account(tmp_path):
    pds = await start_pds(make_settings(tmp_path / "data"))
    try:
        for name in ("alice", "bob"):
            made = await pds.post("com.atproto.server.createAccount", {
                "handle": f"{name}.test", "email": f"{name}@example.com", "password": PASSWORD,
            })
            assert made.code == 200, made.body
        # Refusals count too: each one fetched the document.
        pds.service.app.plc.base_url, base_url = "http://127.0.0.1:9", pds.service.app.plc.base_url
        assert_error(await refresh(pds, "alice.test"), 502, "UpstreamFailure")
        pds.service.app.plc.base_url = base_url
        for _ in range(4):
            assert (await refresh(pds, "alice.test")).code == 200
        cursor = await newest_seq(pds)
        limited = await refresh(pds, "alice.test")
        assert_error(limited, 429, "RateLimitExceeded")
        assert limited.header("ratelimit-limit") == "5"
        assert await newest_seq(pds) == cursor
        # Another account's refreshes are counted apart.
        assert (await refresh(pds, "bob.test")).code == 200
    finally:
        await pds.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_handle_another_account_here_holds_is_not_taken_by_a_refresh(world):
    pds, documents, network = world
    app = pds.service.app
    did, key, auth = await web_account(pds, documents)
    bob = (await pds.post("com.atproto.server.createAccount", {
        "handle": "bob.pds.test", "email": "bob@example.com", "password": PASSWORD,
    })).json()
    # Bob's DID names "shared.test", which resolves to it: a refresh makes it Bob's handle.
    last = await app.plc.last_operation(bob["did"])
    await app.plc.submit(bob["did"], sign_operation(build_operation(
        rotation_keys=last["rotationKeys"], signing_key=last["verificationMethods"][ATPROTO_KEY],
        handle="shared.test", pds_endpoint=app.public_url, prev=operation_cid(last).encode(),
    ), app.accounts.rotation_key))
    network.dns.set("_atproto.shared.test", dns.Record_TXT(f"did={bob['did']}".encode()))
    assert (await refresh(pds, bob["did"])).json()["handle"] == "shared.test"

    # The name's owner points it at the did:web account, whose document names it too.
    network.dns.set("_atproto.shared.test", dns.Record_TXT(f"did={did}".encode()))
    documents.put(DID_JSON, did_web_document(did, "shared.test", key.did(), app.public_url))
    cursor = await newest_seq(pds)
    refused = await refresh(pds, did)
    assert_error(refused, 400, "InvalidRequest")
    assert "another account" in refused.json()["message"]
    assert await stored_handle(pds, did) == "webby.pds.test"
    assert await stored_handle(pds, bob["did"]) == "shared.test"
    assert await newest_seq(pds) == cursor
    # Bob's handle no longer verifies: his refresh is refused too, and keeps it until his DID names another.
    assert_error(await refresh(pds, bob["did"]), 400, "HandleNotFound")
    assert await stored_handle(pds, bob["did"]) == "shared.test"
