"""
Accounts and sessions end to end: a running leafpds with its embedded PLC
directory, driven over HTTP (treq) and by the Python atproto SDK.
"""

import base64
import json

import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from leafpds.lexicon import validate_output
from leafpds.repo import storage
from leafpds.repo.commit import verify_commit
from tests.harness import make_settings, start_pds

PASSWORD = "correct horse battery"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(pds, name="alice", email=None, password=PASSWORD, **extra):
    body = {"handle": f"{name}.test", "email": email or f"{name}@example.com", "password": password, **extra}
    return await pds.post("com.atproto.server.createAccount", body)


def assert_error(answer, status, name):
    assert (answer.code, answer.json()["error"]) == (status, name), answer.body
    assert answer.json()["message"]


@pytest_twisted.ensureDeferred
async def test_create_account_publishes_a_did_that_names_this_pds(pds):
    answer = await create(pds)
    assert answer.code == 200, answer.body
    body = answer.json()
    validate_output(pds.service.app.lexicons, "com.atproto.server.createAccount", body)
    did = body["did"]
    assert did.startswith("did:plc:") and body["handle"] == "alice.test"

    # The DID document, straight from the PLC directory over HTTP.
    response = await treq.get(f"{pds.service.app.plc.base_url}/{did}")
    assert response.code == 200
    doc = json.loads(await response.content())
    assert doc["id"] == did and doc["alsoKnownAs"] == ["at://alice.test"]
    (service,) = doc["service"]
    assert service["id"].endswith("#atproto_pds")
    assert service["serviceEndpoint"] == pds.service.app.public_url
    (method,) = doc["verificationMethod"]
    assert method["type"] == "Multikey"
    signing_did_key = "did:key:" + method["publicKeyMultibase"]
    assert body["didDoc"] == doc

    # That key signs the repo's genesis commit.
    def commit_block(conn):
        cid, _rev = storage.read_root(conn, did)
        return storage.SQLBlocks(conn, did).get_block(cid)

    block = await pds.service.app.db.read(commit_block)
    verify_commit(block, signing_did_key, did)

    # The handle resolves locally and through the well-known endpoint.
    resolved = await pds.get("com.atproto.identity.resolveHandle", {"handle": "Alice.Test"})
    assert resolved.json() == {"did": did}
    well_known = await pds.request("GET", "/.well-known/atproto-did", headers={"Host": "alice.test"})
    assert (well_known.code, well_known.body.decode()) == (200, did)
    unknown = await pds.request("GET", "/.well-known/atproto-did", headers={"Host": "nobody.test"})
    assert unknown.code == 404


@pytest_twisted.ensureDeferred
async def test_new_account_events_in_order(pds):
    from cbrrr import decode_multi_dag_cbor_in_violation_of_the_spec as frames

    did = (await create(pds)).json()["did"]

    def log(conn):
        return conn.execute("SELECT seq, event_type, event FROM repo_seq WHERE did = ? ORDER BY seq", (did,)).fetchall()

    rows = await pds.service.app.db.read(log)
    assert [t for _, t, _ in rows] == ["#identity", "#account", "#commit", "#sync"]
    identity = list(frames(rows[0][2]))[1]
    assert identity["handle"] == "alice.test" and identity["did"] == did
    account = list(frames(rows[1][2]))[1]
    assert account["active"] is True


@pytest_twisted.ensureDeferred
async def test_sign_in_refresh_sign_out(pds):
    created = (await create(pds)).json()
    did = created["did"]
    for identifier in ["alice.test", "ALICE.test", "alice@example.com", did]:
        answer = await pds.post(
            "com.atproto.server.createSession", {"identifier": identifier, "password": PASSWORD}
        )
        assert answer.code == 200, (identifier, answer.body)
        assert answer.json()["did"] == did
        validate_output(pds.service.app.lexicons, "com.atproto.server.createSession", answer.json())
    session = answer.json()
    me = await pds.get("com.atproto.server.getSession", headers=bearer(session["accessJwt"]))
    assert me.code == 200 and me.json()["handle"] == "alice.test" and me.json()["email"] == "alice@example.com"

    refreshed = await pds.post("com.atproto.server.refreshSession", headers=bearer(session["refreshJwt"]))
    assert refreshed.code == 200, refreshed.body
    new = refreshed.json()
    assert new["refreshJwt"] != session["refreshJwt"]
    # Within the grace period the old refresh token still answers, with the same successor.
    again = await pds.post("com.atproto.server.refreshSession", headers=bearer(session["refreshJwt"]))
    assert again.code == 200
    assert _claims(again.json()["refreshJwt"])["jti"] == _claims(new["refreshJwt"])["jti"]

    # An access token is not a refresh token, and the other way round.
    assert_error(await pds.post("com.atproto.server.refreshSession", headers=bearer(new["accessJwt"])), 400, "InvalidToken")
    assert_error(await pds.get("com.atproto.server.getSession", headers=bearer(new["refreshJwt"])), 400, "InvalidToken")

    out = await pds.post("com.atproto.server.deleteSession", headers=bearer(new["refreshJwt"]))
    assert out.code == 200, out.body
    for token in [new["refreshJwt"], session["refreshJwt"]]:
        assert_error(await pds.post("com.atproto.server.refreshSession", headers=bearer(token)), 400, "ExpiredToken")
    assert_error(await pds.get("com.atproto.server.getSession", headers=bearer(new["accessJwt"])), 400, "ExpiredToken")
    # Other sessions of the account are unaffected.
    other = await pds.post("com.atproto.server.createSession", {"identifier": did, "password": PASSWORD})
    assert (await pds.get("com.atproto.server.getSession", headers=bearer(other.json()["accessJwt"]))).code == 200


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest_twisted.ensureDeferred
async def test_auth_errors(pds):
    created = (await create(pds)).json()
    assert_error(await pds.get("com.atproto.server.getSession"), 401, "AuthMissing")
    assert_error(await pds.get("com.atproto.server.getSession", headers=bearer("garbage")), 400, "InvalidToken")
    assert_error(
        await pds.get("com.atproto.server.getSession", headers={"Authorization": "Basic abc"}), 400, "InvalidToken"
    )
    # alg=none, and a token signed with another secret.
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode()
    claims = dict(_claims(created["accessJwt"]))
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert_error(await pds.get("com.atproto.server.getSession", headers=bearer(f"{header}.{payload}.")), 400, "InvalidToken")
    import jwt

    forged = jwt.encode(claims, b"x" * 32, algorithm="HS256", headers={"typ": "at+jwt"})
    assert_error(await pds.get("com.atproto.server.getSession", headers=bearer(forged)), 400, "InvalidToken")
    # Expired.
    tokens = pds.service.app.tokens
    real_now = tokens.now
    tokens.now = lambda: real_now() - 3 * 60 * 60
    try:
        stale = tokens.access_token(created["did"], claims["sid"])
    finally:
        tokens.now = real_now
    assert_error(await pds.get("com.atproto.server.getSession", headers=bearer(stale)), 400, "ExpiredToken")
    # Wrong password, unknown account.
    for identifier, password in [("alice.test", "wrong password!"), ("nobody.test", PASSWORD)]:
        answer = await pds.post("com.atproto.server.createSession", {"identifier": identifier, "password": password})
        assert_error(answer, 401, "AuthenticationRequired")


@pytest_twisted.ensureDeferred
async def test_create_account_refusals_change_nothing(pds):
    assert (await create(pds)).code == 200

    def count(conn):
        return [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("accounts", "repo_seq", "blocks", "signing_keys")]

    before = await pds.service.app.db.read(count)
    cases = [
        (dict(name="alice", email="other@example.com"), 400, "InvalidRequest"),  # handle taken
        (dict(name="bob", email="alice@example.com"), 400, "InvalidRequest"),  # email taken
        (dict(name="ab"), 400, "InvalidHandle"),  # too short
        (dict(name="a" * 19), 400, "InvalidHandle"),  # too long
        (dict(name="bad_name"), 400, "InvalidRequest"),  # the lexicon's handle format
        (dict(name="bob", password="short"), 400, "InvalidPassword"),
        (dict(name="bob", email="not-an-email"), 400, "InvalidRequest"),
    ]
    for kwargs, status, name in cases:
        assert_error(await create(pds, **kwargs), status, name)
    elsewhere = await pds.post(
        "com.atproto.server.createAccount",
        {"handle": "bob.example.com", "email": "bob@example.com", "password": PASSWORD},
    )
    assert_error(elsewhere, 400, "UnsupportedDomain")
    no_password = await pds.post("com.atproto.server.createAccount", {"handle": "bob.test", "email": "bob@example.com"})
    assert no_password.code == 400
    no_email = await pds.post("com.atproto.server.createAccount", {"handle": "bob.test", "password": PASSWORD})
    assert no_email.code == 400
    assert await pds.service.app.db.read(count) == before


@pytest_twisted.ensureDeferred
async def test_plc_failure_creates_nothing_and_the_next_attempt_works(pds):
    plc = pds.service.app.plc
    real = plc.base_url
    plc.base_url = "http://127.0.0.1:9"  # nothing listens there
    try:
        failed = await create(pds)
    finally:
        plc.base_url = real
    assert failed.code == 502 and failed.json()["error"] == "UpstreamFailure"

    def count(conn):
        return conn.execute("SELECT count(*) FROM accounts").fetchone()[0]

    assert await pds.service.app.db.read(count) == 0
    assert (await create(pds)).code == 200


@pytest_twisted.ensureDeferred
async def test_app_passwords(pds):
    created = (await create(pds)).json()
    full = bearer(created["accessJwt"])
    made = await pds.post("com.atproto.server.createAppPassword", {"name": "my client"}, headers=full)
    assert made.code == 200, made.body
    app_password = made.json()["password"]
    listed = await pds.get("com.atproto.server.listAppPasswords", headers=full)
    assert [p["name"] for p in listed.json()["passwords"]] == ["my client"]
    assert "password" not in listed.json()["passwords"][0]
    duplicate = await pds.post("com.atproto.server.createAppPassword", {"name": "my client"}, headers=full)
    assert duplicate.code == 400

    login = await pds.post("com.atproto.server.createSession", {"identifier": "alice.test", "password": app_password})
    assert login.code == 200
    app_session = login.json()
    assert _claims(app_session["accessJwt"])["scope"] == "com.atproto.appPass"
    assert "email" not in app_session
    # An app password cannot manage app passwords.
    assert_error(
        await pds.post("com.atproto.server.createAppPassword", {"name": "x"}, headers=bearer(app_session["accessJwt"])),
        400, "InvalidToken",
    )
    revoked = await pds.post("com.atproto.server.revokeAppPassword", {"name": "my client"}, headers=full)
    assert revoked.code == 200
    # Its sessions end at once, and it no longer logs in.
    assert_error(await pds.get("com.atproto.server.getSession", headers=bearer(app_session["accessJwt"])), 400, "ExpiredToken")
    assert_error(await pds.post("com.atproto.server.refreshSession", headers=bearer(app_session["refreshJwt"])), 400, "ExpiredToken")
    again = await pds.post("com.atproto.server.createSession", {"identifier": "alice.test", "password": app_password})
    assert_error(again, 401, "AuthenticationRequired")
    # The account's own session is untouched.
    assert (await pds.get("com.atproto.server.getSession", headers=full)).code == 200


@pytest_twisted.ensureDeferred
async def test_update_handle(pds):
    created = (await create(pds)).json()
    (await create(pds, name="bobby")).json()
    did, full = created["did"], bearer(created["accessJwt"])
    taken = await pds.post("com.atproto.identity.updateHandle", {"handle": "bobby.test"}, headers=full)
    assert_error(taken, 400, "InvalidRequest")
    changed = await pds.post("com.atproto.identity.updateHandle", {"handle": "alicia.test"}, headers=full)
    assert changed.code == 200, changed.body
    response = await treq.get(f"{pds.service.app.plc.base_url}/{did}")
    assert json.loads(await response.content())["alsoKnownAs"] == ["at://alicia.test"]
    log = await treq.get(f"{pds.service.app.plc.base_url}/{did}/log/audit")
    assert len(json.loads(await log.content())) == 2
    assert (await pds.get("com.atproto.identity.resolveHandle", {"handle": "alicia.test"})).json() == {"did": did}
    gone = await pds.get("com.atproto.identity.resolveHandle", {"handle": "alice.test"})
    assert_error(gone, 400, "HandleNotFound")

    def last_event(conn):
        return conn.execute("SELECT event_type FROM repo_seq ORDER BY seq DESC LIMIT 1").fetchone()[0]

    assert await pds.service.app.db.read(last_event) == "#identity"


@pytest_twisted.ensureDeferred
async def test_invite_codes_when_required(tmp_path):
    running = await start_pds(make_settings(tmp_path, invite_required=True, admin_password="adm1n-pass"))
    try:
        described = await running.get("com.atproto.server.describeServer")
        assert described.json()["inviteCodeRequired"] is True
        assert_error(await create(running), 400, "InvalidInviteCode")
        assert_error(await create(running, inviteCode="nope-nope"), 400, "InvalidInviteCode")
        admin = {"Authorization": "Basic " + base64.b64encode(b"admin:adm1n-pass").decode()}
        code = (await running.post("com.atproto.server.createInviteCode", {"useCount": 1}, headers=admin)).json()["code"]
        assert (await create(running, inviteCode=code)).code == 200
        assert_error(await create(running, name="bob", inviteCode=code), 400, "InvalidInviteCode")  # used up
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_python_atproto_sdk_creates_and_logs_in(pds):
    from atproto import Client

    client = Client(base_url=pds.url)

    def sign_up_and_in():
        made = client.com.atproto.server.create_account(
            {"handle": "sdkuser.test", "email": "sdk@example.com", "password": PASSWORD}
        )
        other = Client(base_url=pds.url)
        other.login("sdkuser.test", PASSWORD, fetch_bsky_profile=False)
        session = other.com.atproto.server.get_session()
        return made, session

    made, session = await deferToThread(sign_up_and_in)
    assert made.did.startswith("did:plc:") and made.handle == "sdkuser.test"
    assert session.did == made.did and session.handle == "sdkuser.test"


@pytest_twisted.ensureDeferred
async def test_keys_are_sealed_at_rest_and_a_wrong_master_secret_refuses_to_start(tmp_path):
    settings = make_settings(tmp_path)
    running = await start_pds(settings)
    try:
        did = (await create(running)).json()["did"]
        key = await running.service.app.keys.signing_key(did)
    finally:
        await running.service.stopService()
    database = b"".join(path.read_bytes() for path in tmp_path.glob("leafpds.sqlite*"))
    assert key.private_bytes() not in database
    assert key.private_bytes().hex().encode() not in database

    import pytest

    from leafpds.accounts.keys import WrongMasterSecret

    with pytest.raises(WrongMasterSecret):
        await start_pds(settings, {"LEAFPDS_MASTER_SECRET": "not the right secret"})
    # Nothing was overwritten: the right secret still opens it.
    again = await start_pds(settings)
    try:
        assert (await again.post(
            "com.atproto.server.createSession", {"identifier": "alice.test", "password": PASSWORD}
        )).code == 200
    finally:
        await again.service.stopService()


@pytest_twisted.ensureDeferred
async def test_one_account_per_provider_identity(pds):
    import pytest

    from leafpds.errors import InvalidRequest

    accounts = pds.service.app.accounts
    first = await accounts.create("octo.test", "octo@example.com", None, oauth_identity=("github", "42"))
    assert await accounts.did_for_identity("github", "42") == first.account.did
    with pytest.raises(InvalidRequest):
        await accounts.create("octo2.test", "octo2@example.com", None, oauth_identity=("github", "42"))
    # Even when the early check is passed (two sign-ups racing), the transaction refuses.
    real = accounts.did_for_identity

    async def not_yet(provider, subject):
        return None

    accounts.did_for_identity = not_yet
    try:
        with pytest.raises(InvalidRequest):
            await accounts.create("octo3.test", "octo3@example.com", None, oauth_identity=("github", "42"))
    finally:
        accounts.did_for_identity = real

    def count(conn):
        return conn.execute("SELECT count(*) FROM accounts").fetchone()[0]

    assert await pds.service.app.db.read(count) == 1


@pytest_twisted.ensureDeferred
async def test_two_local_servers_have_their_own_service_did(tmp_path, pds):
    """The service DID is did:web of the public URL with its port, or --service-did."""
    port = pds.service.port.getHost().port
    mine = f"did:web:localhost%3A{port}"
    assert (await pds.get("com.atproto.server.describeServer")).json()["did"] == mine
    session = (await create(pds)).json()
    assert _claims(session["accessJwt"])["aud"] == mine
    assert _claims(session["refreshJwt"])["aud"] == mine

    other = await start_pds(make_settings(tmp_path / "other", service_did="did:web:pds.example.com"))
    try:
        assert (await other.get("com.atproto.server.describeServer")).json()["did"] == "did:web:pds.example.com"
        # A token this server issued is not the other's.
        refused = await other.get("com.atproto.server.getSession", headers=bearer(session["accessJwt"]))
        assert_error(refused, 400, "InvalidToken")
        theirs = (await create(other, "bob")).json()
        assert _claims(theirs["accessJwt"])["aud"] == "did:web:pds.example.com"
    finally:
        await other.service.stopService()
