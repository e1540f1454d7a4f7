"""
An account's PLC operations end to end (requestPlcOperationSignature,
signPlcOperation, submitPlcOperation), and the DID checks of did:web
accounts: real leafpds servers over HTTP sharing one real PLC directory (the
embedded one of the first), codes read from mails a loopback SMTP server
received, did:web documents served by a loopback HTTP server, the firehose
read over a WebSocket, and the directory's audit log read before and after
every refusal.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from leafpds import crypto
from leafpds.accounts import email_tokens
from leafpds.identity.plc import document_for, operation_cid, sign_operation, verify_operation
from leafpds.lexicon import validate_output
from tests.documents_server import DocumentsServer
from tests.harness import make_settings, start_pds
from tests.test_migration_in import mint
from tests.smtp_standin import Inbox
from tests.test_admin import (
    ADMIN_PASSWORD, PASSWORD, admin_post, assert_error, bearer, create, firehose_from, login, newest_seq,
)

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

SMTP_PASSWORD = "smtp-Pa55-w0rd"
REQUEST = "com.atproto.identity.requestPlcOperationSignature"
SIGN = "com.atproto.identity.signPlcOperation"
SUBMIT = "com.atproto.identity.submitPlcOperation"
CREDENTIALS = "com.atproto.identity.getRecommendedDidCredentials"
STATUS = "com.atproto.server.checkAccountStatus"


def mailing(tmp_path, name, inbox, **overrides):
    return make_settings(
        tmp_path / name,
        smtp_url=f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{inbox.port}",
        email_from=f"pds@{name}.example.com",
        **overrides,
    )


@pytest_twisted.async_yield_fixture
async def world(tmp_path):
    """(leafpds "a" with its embedded PLC directory, mailing to the inbox; the inbox)."""
    inbox = Inbox(username="mailer", password=SMTP_PASSWORD).start()
    pds = await start_pds(mailing(tmp_path, "a", inbox))
    await pds.service.ready
    yield pds, inbox
    await pds.service.stopService()
    inbox.stop()


@pytest_twisted.async_yield_fixture
async def two(world, tmp_path):
    """(a, b: a second leafpds on a's PLC directory, with a service DID of its own; the inbox)."""
    a, inbox = world
    b = await start_pds(mailing(tmp_path, "b", inbox, plc_url=a.service.app.plc.base_url))
    assert a.service.app.service_did != b.service.app.service_did
    yield a, b, inbox
    await b.service.stopService()


async def arrive_by_create(a, b, created):
    auth = bearer(created["accessJwt"])
    token = (await a.get("com.atproto.server.getServiceAuth",
                         {"aud": b.service.app.service_did, "lxm": "com.atproto.server.createAccount"}, headers=auth)).json()["token"]
    body = {"did": created["did"], "handle": created["handle"], "email": "alice@example.com", "password": PASSWORD}
    answer = await b.post("com.atproto.server.createAccount", body, headers=bearer(token))
    assert answer.code == 200, answer.body
    key = await b.service.app.keys.signing_key(created["did"])
    return key, bearer(answer.json()["accessJwt"])


async def audit(pds, did):
    return await pds.service.app.plc.audit_log(did)


async def mailed_code(pds, inbox, auth):
    count = len(inbox.received)
    assert (await pds.post(REQUEST, headers=auth)).code == 200
    mails = await inbox.wait(count + 1)
    return mails[-1].code


async def sign(pds, auth, **body):
    return await pds.post(SIGN, body, headers=auth)


async def code_is_live(pds, did):
    rows = await pds.service.app.db.read(
        lambda conn: conn.execute(
            "SELECT count(*) FROM email_tokens WHERE did = ? AND purpose = ?", (did, email_tokens.PLC_OPERATION)
        ).fetchone()
    )
    return rows[0] == 1


def identities(frames, did):
    return [body for header, body in frames if header["t"] == "#identity" and body["did"] == did]


# -- requestPlcOperationSignature --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_code_is_mailed_to_the_account(world):
    pds, inbox = world
    alice = await create(pds, "alice")
    auth = bearer(alice["accessJwt"])
    assert_error(await pds.post(REQUEST), 401, "AuthMissing")
    # A full session only: an app password cannot move the account.
    app_password = (await pds.post("com.atproto.server.createAppPassword", {"name": "app"}, headers=auth)).json()
    app_session = (await login(pds, "alice.test", app_password["password"])).json()
    assert_error(await pds.post(REQUEST, headers=bearer(app_session["accessJwt"])), 400, "InvalidToken")
    assert inbox.received == []

    assert (await pds.post(REQUEST, headers=auth)).code == 200
    (mail,) = await inbox.wait(1)
    assert mail.recipients == ["alice@example.com"]
    assert mail.subject == "PLC Update Operation Requested"
    assert f"Your confirmation code is {mail.code}" in mail.body
    assert await code_is_live(pds, alice["did"])
    # Mail to one's own address, but not without end.
    for _ in range(4):
        assert (await pds.post(REQUEST, headers=auth)).code == 200
    limited = await pds.post(REQUEST, headers=auth)
    assert_error(limited, 429, "RateLimitExceeded")


# -- the move: A signs, B submits ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_account_moves_its_identity_from_one_pds_to_another(two):
    a, b, inbox = two
    alice = await create(a, "alice")
    did, on_a = alice["did"], bearer(alice["accessJwt"])
    key_b, on_b = await arrive_by_create(a, b, alice)

    credentials = (await b.get(CREDENTIALS, headers=on_b)).json()
    assert credentials["services"]["atproto_pds"]["endpoint"] == b.service.app.public_url
    assert credentials["verificationMethods"] == {"atproto": key_b.did()}
    assert (await b.get(STATUS, headers=on_b)).json()["validDid"] is False
    # Not pointing at B yet: activation is refused.
    assert_error(await b.post("com.atproto.server.activateAccount", headers=on_b), 400, "InvalidRequest")

    code = await mailed_code(a, inbox, on_a)
    log_before = await audit(a, did)
    answer = await sign(a, on_a, token=code.lower(), **credentials)
    assert answer.code == 200, answer.body
    validate_output(a.service.app.lexicons, SIGN, answer.json())
    operation = answer.json()["operation"]
    # Signed by A's rotation key after the DID's last operation, and not submitted.
    assert verify_operation(operation, [a.service.app.accounts.rotation_key.did()])
    assert operation["prev"] == operation_cid(log_before[-1]["operation"]).encode()
    assert {k: operation[k] for k in credentials} == credentials
    assert await audit(a, did) == log_before
    assert not await code_is_live(a, did)

    cursor = await newest_seq(b) or 0  # an account that arrived by createAccount leaves no event
    answer = await b.post(SUBMIT, {"operation": operation}, headers=on_b)
    assert answer.code == 200, answer.body
    log_after = await audit(a, did)
    assert log_after[:-1] == log_before and log_after[-1]["operation"] == operation
    doc = await b.service.app.plc.resolve(did)
    assert doc["service"][0]["serviceEndpoint"] == b.service.app.public_url
    assert "did:key:" + doc["verificationMethod"][0]["publicKeyMultibase"] == key_b.did()
    assert [body["handle"] for body in identities(await firehose_from(b, cursor), did)] == ["alice.test"]

    # B now serves the DID; A no longer does, and can sign nothing more for it.
    assert (await b.get(STATUS, headers=on_b)).json()["validDid"] is True
    assert (await a.get(STATUS, headers=on_a)).json()["validDid"] is False
    cursor = await newest_seq(b) or 0  # (B may have no event yet)
    assert (await b.post("com.atproto.server.activateAccount", headers=on_b)).code == 200
    assert [h["t"] for h, body in await firehose_from(b, cursor) if body.get("did") == did] == [
        "#account", "#identity", "#sync",
    ]
    code = await mailed_code(a, inbox, on_a)
    refused = await sign(a, on_a, token=code)
    assert_error(refused, 400, "InvalidRequest")
    assert "rotation key" in refused.json()["message"]
    assert await code_is_live(a, did)  # a refusal uses no code
    assert await audit(a, did) == log_after


@pytest_twisted.ensureDeferred
async def test_the_python_atproto_sdk_moves_the_identity(two):
    """The calls a migration tool makes, through the Python atproto SDK (in threads: it blocks)."""
    from atproto import Client
    from atproto_client.exceptions import BadRequestError

    a, b, inbox = two
    alice = await create(a, "alice")
    did = alice["did"]
    key_b, _ = await arrive_by_create(a, b, alice)
    old, new = Client(base_url=a.url), Client(base_url=b.url)

    def ask():
        old.login("alice.test", PASSWORD, fetch_bsky_profile=False)
        new.login("alice.test", PASSWORD, fetch_bsky_profile=False)
        # The SDK follows the session's DID document, which names A until the
        # move: a migration tool talks to the new PDS where it is.
        new.update_base_url(b.url)
        assert old.com.atproto.identity.request_plc_operation_signature()

    def move(code):
        credentials = new.com.atproto.identity.get_recommended_did_credentials()
        with pytest.raises(BadRequestError) as wrong:
            old.com.atproto.identity.sign_plc_operation({"token": "AAAAA-BBBBB"})
        signed = old.com.atproto.identity.sign_plc_operation({
            "token": code,
            "rotation_keys": credentials.rotation_keys,
            "also_known_as": credentials.also_known_as,
            "verification_methods": credentials.verification_methods,
            "services": credentials.services,
        })
        assert new.com.atproto.identity.submit_plc_operation({"operation": signed.operation})
        new.com.atproto.server.activate_account()
        return wrong.value.response.content.error, new.com.atproto.server.check_account_status()

    await deferToThread(ask)
    (mail,) = await inbox.wait(1)
    error, status = await deferToThread(move, mail.code)
    assert error == "InvalidToken"
    assert status.valid_did and status.activated
    doc = await a.service.app.plc.resolve(did, fresh=True)  # A's cache may hold the document of before
    assert doc["service"][0]["serviceEndpoint"] == b.service.app.public_url
    assert "did:key:" + doc["verificationMethod"][0]["publicKeyMultibase"] == key_b.did()


# -- signPlcOperation's refusals ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sign_needs_the_live_code_once(world):
    pds, inbox = world
    alice = await create(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    log = await audit(pds, did)
    assert_error(await sign(pds, auth), 400, "InvalidRequest")  # no code at all
    assert_error(await sign(pds, auth, token="AAAAA-BBBBB"), 400, "InvalidToken")  # none was asked for

    code = await mailed_code(pds, inbox, auth)
    assert_error(await sign(pds, auth, token="AAAAA-BBBBB"), 400, "InvalidToken")
    # Another purpose's code is not this one.
    await pds.service.app.account_email.send_code(did, email_tokens.DELETE_ACCOUNT)
    deletion = (await inbox.wait(2))[-1].code
    assert_error(await sign(pds, auth, token=deletion), 400, "InvalidToken")
    # Another account's code neither.
    bob = await create(pds, "bob")
    assert_error(await sign(pds, bearer(bob["accessJwt"]), token=code), 400, "InvalidToken")
    assert await code_is_live(pds, did)

    # Fifteen minutes later (on a task.Clock) it has expired.
    clock = Clock()
    clock.advance(reactor.seconds())
    pds.service.app.account_email.now = clock.seconds
    clock.advance(email_tokens.LIFETIME)
    assert_error(await sign(pds, auth, token=code), 400, "ExpiredToken")
    pds.service.app.account_email.now = reactor.seconds

    code = await mailed_code(pds, inbox, auth)
    first = await sign(pds, auth, token=f" {code} ", alsoKnownAs=["at://alice.test", "https://alice.example.com"])
    assert first.code == 200, first.body
    operation = first.json()["operation"]
    # What was not asked for is the last operation's.
    last = log[-1]["operation"]
    assert operation["alsoKnownAs"] == ["at://alice.test", "https://alice.example.com"]
    assert {k: operation[k] for k in ("rotationKeys", "verificationMethods", "services")} == {
        k: last[k] for k in ("rotationKeys", "verificationMethods", "services")
    }
    assert_error(await sign(pds, auth, token=code), 400, "InvalidToken")  # used
    assert await audit(pds, did) == log  # signing submits nothing


@pytest_twisted.ensureDeferred
async def test_sign_refuses_what_it_cannot_or_should_not_sign(world):
    pds, inbox = world
    app = pds.service.app
    alice = await create(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    code = await mailed_code(pds, inbox, auth)
    # Fields a DID document cannot hold: the operation would be malformed.
    for body, words in [
        ({"services": {"atproto_pds": "http://localhost"}}, "services"),
        ({"verificationMethods": {"atproto": 7}}, "verificationMethods"),
        ({"rotationKeys": ["did:key:zNotAKey"]}, "rotation key"),
        ({"alsoKnownAs": ["at://alice.test"] * 2}, "duplicate"),
    ]:
        refused = await sign(pds, auth, token=code, **body)
        assert_error(refused, 400, "InvalidRequest")
        assert words in refused.json()["message"], refused.body
    assert await code_is_live(pds, did)

    # Once the DID's rotation keys are others, this PDS cannot sign for it.
    other = crypto.K256Keypair.generate()
    last = await app.plc.last_operation(did)
    elsewhere = {**last, "rotationKeys": [other.did()], "prev": operation_cid(last).encode()}
    await app.plc.submit(did, sign_operation(elsewhere, app.accounts.rotation_key))
    log = await audit(pds, did)
    refused = await sign(pds, auth, token=code)
    assert_error(refused, 400, "InvalidRequest")
    assert refused.json()["message"] == (
        "This server's rotation key is not among the DID's rotation keys: it cannot sign the DID's next operation"
    )
    assert await code_is_live(pds, did)
    assert await audit(pds, did) == log


# -- submitPlcOperation's refusals --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_submit_refuses_operations_that_point_elsewhere(world):
    pds, _ = world
    app = pds.service.app
    alice = await create(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    last = await app.plc.last_operation(did)
    base = {k: v for k, v in last.items() if k != "sig"} | {"prev": operation_cid(last).encode()}
    here = app.accounts.rotation_key
    someone = crypto.K256Keypair.generate().did()

    def signed(**changes):
        # Signed with a key the directory accepts: only leafpds's own checks stand in the way.
        return sign_operation({**base, **changes}, here)

    cases = [
        (signed(rotationKeys=[someone]), "Rotation keys do not include server's rotation key"),
        (signed(services={"atproto_pds": {"type": "Elsewhere", "endpoint": app.public_url}}),
         "Incorrect type on atproto_pds service"),
        (signed(services={}), "Incorrect type on atproto_pds service"),
        (signed(services={"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": "https://pds.example.com"}}),
         "Incorrect endpoint on atproto_pds service"),
        (signed(verificationMethods={"atproto": someone}), "Incorrect signing key"),
        (signed(alsoKnownAs=["at://mallory.test"]), "Incorrect handle in alsoKnownAs"),
        (signed(alsoKnownAs=[]), "Incorrect handle in alsoKnownAs"),
        # Malformed: refused before anyone is asked.
        ({"type": "plc_operation"}, "Invalid operation"),
        ({**signed(), "rotationKeys": "not a list"}, "Invalid operation"),
        (sign_operation({"type": "plc_tombstone", "prev": base["prev"]}, here), "Invalid operation"),
        # Pointing here, but the directory refuses it, and says why.
        (sign_operation({**base}, crypto.K256Keypair.generate()), "invalid signature"),
        (signed(prev=operation_cid({"not": "an operation"}).encode()), "is not an operation in force"),
        (signed(verificationMethods={**base["verificationMethods"], "extra": "did:key:zNotAKey"}),
         "verification method extra"),
    ]
    log = await audit(pds, did)
    cursor = await newest_seq(pds)
    for operation, words in cases:
        refused = await pds.post(SUBMIT, {"operation": operation}, headers=auth)
        assert_error(refused, 400, "InvalidRequest")
        assert words in refused.json()["message"], refused.body
    assert_error(await pds.post(SUBMIT, {"operation": "a string"}, headers=auth), 400, "InvalidRequest")
    assert_error(await pds.post(SUBMIT, {}, headers=auth), 400, "InvalidRequest")
    assert_error(await pds.post(SUBMIT, {"operation": signed()}), 401, "AuthMissing")
    assert await audit(pds, did) == log
    assert await newest_seq(pds) == cursor

    # The same operation pointing here is taken.
    assert (await pds.post(SUBMIT, {"operation": signed()}, headers=auth)).code == 200
    assert (await audit(pds, did))[-1]["operation"] == signed()


@pytest_twisted.ensureDeferred
async def test_submit_while_deactivated_forgets_the_cached_document(world):
    pds, inbox = world
    app = pds.service.app
    alice = await create(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    assert (await pds.post("com.atproto.server.deactivateAccount", {}, headers=auth)).code == 200
    assert (await app.dids.resolve(did))["alsoKnownAs"] == ["at://alice.test"]  # now cached

    code = await mailed_code(pds, inbox, auth)
    aliases = ["at://alice.test", "https://alice.example.com"]
    operation = (await sign(pds, auth, token=code, alsoKnownAs=aliases)).json()["operation"]
    cursor = await newest_seq(pds)
    answer = await pds.post(SUBMIT, {"operation": operation}, headers=auth)
    assert answer.code == 200, answer.body
    assert (await app.dids.resolve(did))["alsoKnownAs"] == aliases
    assert (await app.plc.resolve(did))["alsoKnownAs"] == aliases
    assert [body["handle"] for body in identities(await firehose_from(pds, cursor), did)] == ["alice.test"]
    # Still deactivated: submitting changes the identity, not the account's status.
    assert (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()["active"] is False


@pytest_twisted.ensureDeferred
async def test_the_directory_out_of_reach_is_a_clear_upstream_failure(world):
    pds, inbox = world
    alice = await create(pds, "alice")
    did, auth = alice["did"], bearer(alice["accessJwt"])
    code = await mailed_code(pds, inbox, auth)
    operation = (await sign(pds, auth, token=code)).json()["operation"]
    plc = pds.service.app.plc
    base_url, plc.base_url = plc.base_url, "http://127.0.0.1:9"  # the discard port: nothing listens
    try:
        cursor = await newest_seq(pds)
        refused = await pds.post(SUBMIT, {"operation": operation}, headers=auth)
        assert_error(refused, 502, "UpstreamFailure")
        assert "unreachable" in refused.json()["message"]
        assert await newest_seq(pds) == cursor
        code = await mailed_code(pds, inbox, auth)
        assert_error(await sign(pds, auth, token=code), 502, "UpstreamFailure")
        assert await code_is_live(pds, did)
    finally:
        plc.base_url = base_url
    assert (await pds.post(SUBMIT, {"operation": operation}, headers=auth)).code == 200


# -- did:web accounts ---------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def web(tmp_path):
    """(leafpds allowed to fetch documents from loopback, a documents server for did.json)."""
    documents = DocumentsServer.start()
    pds = await start_pds(make_settings(tmp_path / "data", allow_private_services=True, admin_password=ADMIN_PASSWORD))
    await pds.service.ready
    yield pds, documents
    await pds.service.stopService()
    await documents.stop()


async def arrive_on_web(pds, documents, did, handle, email):
    """
    createAccount for a did:web its owner controls: they publish a document
    naming a key of theirs and sign the service JWT with it; then the
    document is taken down, to be published anew as each test needs.
    """
    owner = crypto.K256Keypair.generate()
    documents.put("/.well-known/did.json", did_web_document(did, handle, owner.did(), "https://old.example.com"))
    now = int(reactor.seconds())
    claims = {"iss": did, "aud": pds.service.app.service_did, "lxm": "com.atproto.server.createAccount",
              "iat": now, "exp": now + 60}
    body = {"did": did, "handle": handle, "email": email, "password": PASSWORD}
    answer = await pds.post("com.atproto.server.createAccount", body, headers=bearer(mint(owner, claims)))
    assert answer.code == 200, answer.body
    del documents.documents["/.well-known/did.json"]
    return await pds.service.app.keys.signing_key(did), bearer(answer.json()["accessJwt"])


def did_web_document(did, handle, key, endpoint):
    """The document a did:web's owner publishes (what getRecommendedDidCredentials tells them)."""
    state = {
        "type": "plc_operation", "rotationKeys": [], "verificationMethods": {"atproto": key},
        "alsoKnownAs": [f"at://{handle}"],
        "services": {"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": endpoint}},
        "prev": None, "sig": "",
    }
    return document_for(did, state)


@pytest_twisted.ensureDeferred
async def test_a_did_web_account_is_valid_while_its_document_names_this_pds_and_key(web):
    pds, documents = web
    app = pds.service.app
    did = f"did:web:localhost%3A{documents.port.getHost().port}"
    key, auth = await arrive_on_web(pds, documents, did, "webby.test", "webby@example.com")
    here = app.public_url

    async def valid():
        answer = await pds.get(STATUS, headers=auth)
        assert answer.code == 200, answer.body
        return answer.json()["validDid"]

    async def activation_refused(message):
        refused = await pds.post("com.atproto.server.activateAccount", headers=auth)
        assert_error(refused, 400, "InvalidRequest")
        assert refused.json()["message"] == message
        assert (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()["active"] is False

    # No document yet, then documents that name another PDS or another key.
    assert await valid() is False
    await activation_refused("Could not resolve DID")
    documents.put("/.well-known/did.json", did_web_document(did, "webby.test", key.did(), "https://pds.example.com"))
    assert await valid() is False
    await activation_refused("DID document atproto_pds service endpoint does not match PDS public url")
    other = crypto.K256Keypair.generate().did()
    documents.put("/.well-known/did.json", did_web_document(did, "webby.test", other, here))
    assert await valid() is False
    await activation_refused("DID document verification method does not match expected signing key")
    # Each check fetched the document afresh.
    hits = documents.hits["/.well-known/did.json"]

    documents.put("/.well-known/did.json", did_web_document(did, "webby.test", key.did(), here))
    assert await valid() is True
    assert documents.hits["/.well-known/did.json"] == hits + 1
    cursor = await newest_seq(pds) or 0  # an account that arrived by createAccount leaves no event
    assert (await pds.post("com.atproto.server.activateAccount", headers=auth)).code == 200
    assert [h["t"] for h, body in await firehose_from(pds, cursor) if body.get("did") == did] == [
        "#account", "#identity", "#sync",
    ]
    # A did:web has no PLC operations: no code is mailed, and one is no use.
    refused = await pds.post(REQUEST, headers=auth)
    assert_error(refused, 400, "InvalidRequest")
    assert "did:plc" in refused.json()["message"]
    assert not await code_is_live(pds, did)
    code = await app.db.write(app.account_email.codes.issue_unit, did, email_tokens.PLC_OPERATION, reactor.seconds())
    refused = await sign(pds, auth, token=code)
    assert_error(refused, 400, "InvalidRequest")
    assert "did:plc" in refused.json()["message"]
    assert await code_is_live(pds, did)
    refused = await pds.post(SUBMIT, {"operation": {"type": "plc_operation"}}, headers=auth)
    assert_error(refused, 400, "InvalidRequest")
    assert "did:plc" in refused.json()["message"]


@pytest_twisted.ensureDeferred
async def test_a_did_web_account_changes_handle_once_its_document_names_it(web):
    pds, documents = web
    app = pds.service.app
    did = f"did:web:localhost%3A{documents.port.getHost().port}"
    key, auth = await arrive_on_web(pds, documents, did, "webby.test", "webby@example.com")
    documents.put("/.well-known/did.json", did_web_document(did, "webby.test", key.did(), app.public_url))
    assert (await pds.post("com.atproto.server.activateAccount", headers=auth)).code == 200
    cursor = await newest_seq(pds) or 0  # an account that arrived by createAccount leaves no event

    refused = await pds.post("com.atproto.identity.updateHandle", {"handle": "webster.test"}, headers=auth)
    assert_error(refused, 400, "InvalidRequest")
    assert "at://webster.test" in refused.json()["message"]
    assert (await pds.get("com.atproto.server.getSession", headers=auth)).json()["handle"] == "webby.test"
    assert await newest_seq(pds) == cursor

    # The owner publishes the new handle; the change re-reads the document at once.
    documents.put("/.well-known/did.json", did_web_document(did, "webster.test", key.did(), app.public_url))
    answer = await pds.post("com.atproto.identity.updateHandle", {"handle": "webster.test"}, headers=auth)
    assert answer.code == 200, answer.body
    assert (await pds.get("com.atproto.server.getSession", headers=auth)).json()["handle"] == "webster.test"
    assert [body["handle"] for body in identities(await firehose_from(pds, cursor), did)] == ["webster.test"]
    assert (await app.dids.resolve(did))["alsoKnownAs"] == ["at://webster.test"]
    # Nor can an admin write a did:web's document.
    new_key = {"did": did, "signingKey": crypto.K256Keypair.generate().did()}
    refused = await admin_post(pds, "com.atproto.admin.updateAccountSigningKey", new_key)
    assert_error(refused, 400, "InvalidRequest")
    assert "not a did:plc" in refused.json()["message"]
