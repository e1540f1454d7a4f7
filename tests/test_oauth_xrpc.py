"""
OAuth on a real leafpds, over loopback HTTP: the discovery documents and
the authorization server's endpoints as mounted, and XRPC called with
DPoP-bound access tokens.  Tokens come through the real ``/oauth/par`` and
``/oauth/token``; consent (the authorization page's part) is given the way
the page gives it (``App.consent``, tests/oauth_app.py: the server's
``pending`` requests and ``issue_code``).
"""

import json
import os
from urllib.parse import quote

import pytest_twisted
import treq

from leafpds.oauth.jwk import thumbprint
from tests.documents_server import DocumentsServer
from tests.harness import Answer, RunningPDS, ServerProcess, make_settings, start_pds
from tests.oauth_app import App, Mounted, Person, refused
from tests.oauth_keys import ClientKey
from tests.signin import Browser, query
from tests.test_account_pages import SIGN_UP, account_page, did_of, form_token
from tests.test_accounts import bearer, create
from tests.test_proxy import LIST_CONVOS, TIMELINE, services  # noqa: F401 (services is a fixture)

POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"
APPVIEW = "did:web:api.bsky.app#bsky_appview"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)


def web_client_metadata(client_id: str, redirect_uri: str) -> dict:
    return {
        "client_id": client_id, "client_name": "Loopback web app", "application_type": "web",
        "redirect_uris": [redirect_uri], "scope": "atproto transition:generic",
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none", "dpop_bound_access_tokens": True,
    }


@pytest_twisted.async_yield_fixture
async def documents():
    server = DocumentsServer.start()
    yield server
    await server.stop()


async def get_json(url: str) -> tuple[int, dict, object]:
    response = await treq.get(url)
    return response.code, json.loads(await response.content()), response.headers


@pytest_twisted.ensureDeferred
async def test_discovery_documents_name_the_public_url(pds):
    public = pds.service.app.public_url
    assert public.startswith("http://localhost:") and not public.endswith("/")
    code, resource, headers = await get_json(pds.url + "/.well-known/oauth-protected-resource")
    assert code == 200 and headers.getRawHeaders("access-control-allow-origin") == ["*"]
    assert resource == {"resource": public, "authorization_servers": [public], "scopes_supported": [],
                        "bearer_methods_supported": ["header"]}
    code, meta, _ = await get_json(pds.url + "/.well-known/oauth-authorization-server")
    assert code == 200 and meta["issuer"] == public == pds.service.app.oauth.issuer
    assert {name: meta[name] for name in ("authorization_endpoint", "token_endpoint", "revocation_endpoint",
                                          "pushed_authorization_request_endpoint", "jwks_uri")} == {
        "authorization_endpoint": public + "/oauth/authorize", "token_endpoint": public + "/oauth/token",
        "revocation_endpoint": public + "/oauth/revoke", "pushed_authorization_request_endpoint": public + "/oauth/par",
        "jwks_uri": public + "/oauth/jwks",
    }
    assert meta["scopes_supported"] == ["atproto", "transition:email", "transition:generic", "transition:chat.bsky"]
    assert meta["require_pushed_authorization_requests"] is True
    assert meta["client_id_metadata_document_supported"] is True
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["protected_resources"] == [public]
    assert meta["dpop_signing_alg_values_supported"] == ["ES256"]
    code, jwks, _ = await get_json(pds.url + "/oauth/jwks")
    assert (code, jwks) == (200, {"keys": []})
    # Unknown endpoints under /oauth/ are OAuth-shaped refusals, not errors of the server.
    code, unknown, _ = await get_json(pds.url + "/oauth/nothing-here")
    assert (code, unknown["error"]) == (405, "invalid_request")  # only OPTIONS there


@pytest_twisted.ensureDeferred
async def test_issuer_is_the_explicit_public_url(tmp_path):
    running = await start_pds(make_settings(tmp_path / "data", public_url="https://pds.example.com/"))
    try:
        code, meta, _ = await get_json(running.url + "/.well-known/oauth-authorization-server")
        assert code == 200 and meta["issuer"] == "https://pds.example.com"
        assert meta["token_endpoint"] == "https://pds.example.com/oauth/token"
        assert running.service.app.oauth.access.audience == "did:web:pds.example.com"
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_par_with_a_development_client_answers_a_request_uri(pds):
    app = App(Mounted(pds))
    code, pushed = await app.par()
    assert code == 201, pushed
    assert pushed["request_uri"].startswith("urn:ietf:params:oauth:request_uri:") and pushed["expires_in"] == 300
    assert app.nonce  # learnt from the first answer, then used


@pytest_twisted.ensureDeferred
async def test_local_client_metadata_documents_are_refused_by_default(pds, documents):
    client_id = documents.origin + "/client-metadata.json"
    documents.put("/client-metadata.json", web_client_metadata(client_id, documents.origin + "/callback"))
    app = App(Mounted(pds), client_id=client_id, redirect_uri=documents.origin + "/callback")
    refused(await app.par(), 400, "invalid_client_metadata")
    assert pds.service.app.oauth.pending._pending == {}
    assert documents.hits == {}  # refused before anything was fetched


@pytest_twisted.ensureDeferred
async def test_local_client_metadata_documents_with_the_setting(tmp_path, documents):
    running = await start_pds(make_settings(tmp_path / "data", oauth_allow_local_clients=True))
    try:
        client_id = documents.origin + "/client-metadata.json"
        documents.put("/client-metadata.json", web_client_metadata(client_id, documents.origin + "/callback"))
        app = App(Mounted(running), client_id=client_id, redirect_uri=documents.origin + "/callback")
        code, pushed = await app.par()
        assert code == 201, pushed
        assert pushed["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
        assert documents.hits == {"/client-metadata.json": 1}
    finally:
        await running.service.stopService()



# XRPC with OAuth access tokens.


class Grant:
    """An app holding an OAuth grant, calling XRPC as the official client does (DPoP, nonce learnt and reused)."""

    def __init__(self, running, app: App, tokens: dict, origin: str | None = None) -> None:
        self.running = running
        # The public URL: what proofs name as htu (the tests connect to 127.0.0.1).
        self.origin = origin or running.service.app.public_url
        self.app = app
        self.key = app.key
        self.nonce = app.nonce
        self.tokens = tokens
        self.access = tokens["access_token"]

    def url(self, nsid: str) -> str:
        return self.origin + "/xrpc/" + nsid

    def proof(self, method: str, nsid: str, *, key=None, nonce=..., ath=True, **claims) -> str:
        return (key or self.key).proof(**{
            "htm": method, "htu": self.url(nsid), "nonce": self.nonce if nonce is ... else nonce,
            "access_token": self.access if ath else None, **claims,
        })

    async def call(self, method: str, nsid: str, body=None, *, params=None, data=None, content_type=None,
                   headers=None, retry=True, **proof) -> Answer:
        sent = {"Authorization": f"DPoP {self.access}", "DPoP": self.proof(method, nsid, **proof)}
        if body is not None:
            data, content_type = json.dumps(body).encode(), "application/json"
        if content_type is not None:
            sent["Content-Type"] = content_type
        sent.update(headers or {})
        sent = {k: v for k, v in sent.items() if v is not None}
        answer = await self.running.request(method, "/xrpc/" + nsid, params=params, data=data, headers=sent)
        if answer.header("dpop-nonce"):
            self.nonce = answer.header("dpop-nonce")
        if retry and answer.code == 401 and answer.json().get("error") == "use_dpop_nonce":
            return await self.call(method, nsid, body, params=params, data=data, content_type=content_type,
                                   headers=headers, retry=False, **proof)
        return answer

    async def get(self, nsid: str, retry: bool = True, **params) -> Answer:
        return await self.call("GET", nsid, params=params, retry=retry)

    async def post(self, nsid: str, body=None, **kw) -> Answer:
        return await self.call("POST", nsid, body, **kw)


def loopback_client(scope: str) -> str:
    return ("http://localhost?redirect_uri=" + quote("http://127.0.0.1/callback", safe="")
            + "&scope=" + quote(scope, safe=""))


async def grant(running, did: str, scope: str = "atproto transition:generic", client_id: str | None = None,
                redirect_uri: str = "http://127.0.0.1:4567/callback") -> Grant:
    """A grant of ``scope`` for ``did``: the real PAR and token endpoints, consent as the page gives it."""
    app = App(Mounted(running), client_id=client_id or loopback_client(scope), redirect_uri=redirect_uri)
    code, pushed = await app.par(scope=scope)
    assert code == 201, pushed
    the_code = await app.consent(pushed["request_uri"], did=did)
    code, tokens = await app.exchange(the_code)
    assert code == 200 and tokens["scope"] == scope, tokens
    return Grant(running, app, tokens)


async def account(running, name="alice") -> tuple[str, dict]:
    made = await create(running, name=name)
    assert made.code == 200, made.body
    return made.json()["did"], bearer(made.json()["accessJwt"])


def record(text: str) -> dict:
    return {"$type": POST, "text": text, "createdAt": "2026-12-06T05:00:00.000Z"}


async def head(running, did: str) -> str:
    answer = await running.get("com.atproto.sync.getLatestCommit", {"did": did})
    assert answer.code == 200, answer.body
    return answer.json()["rev"]


def assert_error(answer: Answer, status: int, name: str) -> None:
    assert (answer.code, answer.json().get("error")) == (status, name), answer.body
    assert answer.json().get("message")


def assert_dpop_refusal(answer: Answer, error: str) -> None:
    assert_error(answer, 401, error)
    assert f'error="{error}"' in answer.header("www-authenticate")
    assert answer.header("www-authenticate").startswith("DPoP ")
    assert answer.header("dpop-nonce")
    assert "dpop-nonce" in answer.header("access-control-expose-headers")


@pytest_twisted.ensureDeferred
async def test_records_and_blobs_with_an_oauth_grant(pds):
    did, _ = await account(pds)
    app = await grant(pds, did)
    made = await app.post("com.atproto.repo.createRecord", {"repo": did, "collection": POST, "record": record("hi")})
    assert made.code == 200, made.body
    assert made.header("dpop-nonce") and "dpop-nonce" in made.header("access-control-expose-headers")
    rkey = made.json()["uri"].rsplit("/", 1)[1]
    got = await app.get("com.atproto.repo.getRecord", repo=did, collection=POST, rkey=rkey)
    assert got.code == 200 and got.json()["value"]["text"] == "hi"
    # Read by anyone: the record is really in the repo.
    public = await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST, "rkey": rkey})
    assert public.json()["value"]["text"] == "hi"
    uploaded = await app.post("com.atproto.repo.uploadBlob", data=PNG, content_type="image/png")
    assert uploaded.code == 200, uploaded.body
    assert uploaded.json()["blob"]["mimeType"] == "image/png" and uploaded.json()["blob"]["size"] == len(PNG)
    session = await app.get("com.atproto.server.getSession")
    assert session.code == 200 and session.json()["did"] == did
    assert "email" not in session.json()  # no transition:email
    # The access token names the grant's key; it is the proof's key that counts.
    assert app.app.pds.server.access.verify(app.access).dpop_jkt == thumbprint(app.key.jwk)


@pytest_twisted.ensureDeferred
async def test_email_only_with_transition_email(pds):
    did, _ = await account(pds)
    app = await grant(pds, did, "atproto transition:email")
    session = await app.get("com.atproto.server.getSession")
    assert session.code == 200 and session.json()["email"] == "alice@example.com"


@pytest_twisted.ensureDeferred
async def test_dpop_refusals_at_xrpc(pds):
    did, _ = await account(pds)
    app = await grant(pds, did)
    before = await head(pds, did)
    create_post = {"repo": did, "collection": POST, "record": record("never")}
    # No nonce, and a nonce this server never gave: use_dpop_nonce, with the nonce to use.
    assert_dpop_refusal(await app.post("com.atproto.repo.createRecord", create_post, nonce=None, retry=False),
                        "use_dpop_nonce")
    assert_dpop_refusal(await app.post("com.atproto.repo.createRecord", create_post, nonce="stale", retry=False),
                        "use_dpop_nonce")
    # A bad proof: without ath, for another URL (htu is the public URL), method, or none at all.
    assert_dpop_refusal(await app.post("com.atproto.repo.createRecord", create_post, ath=False), "invalid_dpop_proof")
    assert_dpop_refusal(await app.post("com.atproto.repo.createRecord", create_post, htm="GET"), "invalid_dpop_proof")
    wrong_url = await app.call("POST", "com.atproto.repo.createRecord", create_post, headers={
        "DPoP": app.key.proof("POST", pds.url + "/xrpc/com.atproto.repo.createRecord", nonce=app.nonce,
                              access_token=app.access)})
    assert_dpop_refusal(wrong_url, "invalid_dpop_proof")
    assert_dpop_refusal(await app.post("com.atproto.repo.createRecord", create_post, headers={"DPoP": None}),
                        "invalid_dpop_proof")
    # A replayed proof.
    proof = app.proof("GET", "com.atproto.server.getSession")
    first = await app.call("GET", "com.atproto.server.getSession", headers={"DPoP": proof})
    assert first.code == 200
    assert_dpop_refusal(await app.call("GET", "com.atproto.server.getSession", headers={"DPoP": proof}),
                        "invalid_dpop_proof")
    # A proof signed by another key than the token is bound to.
    assert_dpop_refusal(await app.post("com.atproto.repo.createRecord", create_post, key=ClientKey()),
                        "invalid_token")
    # A token that is not one.
    forged = await pds.post("com.atproto.repo.createRecord", create_post, headers={
        "Authorization": "DPoP not-a-token", "DPoP": app.key.proof(
            "POST", app.url("com.atproto.repo.createRecord"), nonce=app.nonce, access_token="not-a-token")})
    assert_dpop_refusal(forged, "invalid_token")
    # The DPoP-bound token presented as a Bearer token.
    as_bearer = await pds.post("com.atproto.repo.createRecord", create_post, headers=bearer(app.access))
    assert_error(as_bearer, 400, "InvalidToken")
    assert await head(pds, did) == before  # nothing was written


@pytest_twisted.ensureDeferred
async def test_revoked_grants_are_refused_at_once(pds):
    did, _ = await account(pds)
    app = await grant(pds, did)
    assert (await app.get("com.atproto.server.getSession")).code == 200
    code, _ = await app.app.post("/oauth/revoke", {"token": app.tokens["refresh_token"]}, proof=False)
    assert code == 200
    assert_dpop_refusal(await app.get("com.atproto.server.getSession"), "invalid_token")
    # Another grant of the same account is untouched.
    other = await grant(pds, did)
    assert (await other.get("com.atproto.server.getSession")).code == 200


@pytest_twisted.ensureDeferred
async def test_a_create_only_grant_cannot_delete_or_write_elsewhere(pds):
    did, session = await account(pds)
    app = await grant(pds, did, f"atproto repo:{POST}?action=create")
    made = await app.post("com.atproto.repo.createRecord", {"repo": did, "collection": POST, "record": record("ok")})
    assert made.code == 200, made.body
    rkey = made.json()["uri"].rsplit("/", 1)[1]
    before = await head(pds, did)
    refusals = [
        await app.post("com.atproto.repo.deleteRecord", {"repo": did, "collection": POST, "rkey": rkey}),
        await app.post("com.atproto.repo.putRecord", {"repo": did, "collection": POST, "rkey": rkey,
                                                      "record": record("changed")}),
        await app.post("com.atproto.repo.createRecord", {"repo": did, "collection": LIKE, "record": {
            "$type": LIKE, "createdAt": "2026-12-06T05:00:00.000Z",
            "subject": {"uri": made.json()["uri"], "cid": made.json()["cid"]}}}),
        # applyWrites needs every write: one allowed create does not carry a delete.
        await app.post("com.atproto.repo.applyWrites", {"repo": did, "writes": [
            {"$type": "com.atproto.repo.applyWrites#create", "collection": POST, "value": record("batched")},
            {"$type": "com.atproto.repo.applyWrites#delete", "collection": POST, "rkey": rkey},
        ]}),
    ]
    for answer in refusals:
        assert_error(answer, 403, "ScopeMissingError")
    assert 'repo:app.bsky.feed.post?action=delete' in refusals[0].json()["message"]
    assert 'repo:app.bsky.feed.like?action=create' in refusals[2].json()["message"]
    # Neither blobs nor service tokens nor preferences without transition:generic or their own scopes.
    assert_error(await app.post("com.atproto.repo.uploadBlob", data=PNG, content_type="image/png"),
                 403, "ScopeMissingError")
    assert_error(await app.get("com.atproto.server.getServiceAuth", aud="did:web:api.bsky.app"),
                 403, "ScopeMissingError")
    assert_error(await app.get("app.bsky.actor.getPreferences"), 403, "ScopeMissingError")
    assert_error(await app.post("app.bsky.actor.putPreferences", {"preferences": []}), 403, "ScopeMissingError")
    assert await head(pds, did) == before
    kept = await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST, "rkey": rkey})
    assert kept.json()["value"]["text"] == "ok"
    # Reading needs no more than atproto.
    assert (await app.get("com.atproto.server.getSession")).code == 200


@pytest_twisted.ensureDeferred
async def test_blob_grants_name_types(pds):
    did, _ = await account(pds)
    app = await grant(pds, did, "atproto blob:image/*")
    assert (await app.post("com.atproto.repo.uploadBlob", data=PNG, content_type="image/png")).code == 200
    text = await app.post("com.atproto.repo.uploadBlob", data=b"just text", content_type="text/plain")
    assert_error(text, 403, "ScopeMissingError")
    assert "blob:text/plain" in text.json()["message"]
    # The type checked is the one the blob is stored as: a PNG's bytes win over its declared type.
    declared_text = await app.post("com.atproto.repo.uploadBlob", data=PNG, content_type="text/plain")
    assert declared_text.code == 200 and declared_text.json()["blob"]["mimeType"] == "image/png"
    listed = await pds.service.app.db.read(lambda conn: conn.execute(
        "SELECT count(*) FROM blobs WHERE did = ?", (did,)).fetchone()[0])
    assert listed == 1  # the refused one was never stored
    assert list(pds.service.app.blobs.spool_dir.iterdir()) == []  # nor left behind in the upload spool


@pytest_twisted.ensureDeferred
async def test_what_needs_the_password_no_grant_may_do(pds):
    did, _ = await account(pds)
    app = await grant(pds, did)
    for nsid, body in [
        ("com.atproto.server.createAppPassword", {"name": "from an app"}),
        ("com.atproto.server.revokeAppPassword", {"name": "x"}),
        ("com.atproto.server.updateEmail", {"email": "new@example.com"}),
        ("com.atproto.server.deactivateAccount", {}),
        ("com.atproto.server.activateAccount", None),
        ("com.atproto.server.requestAccountDelete", None),
    ]:
        assert_error(await app.post(nsid, body), 403, "Forbidden")
    assert_error(await app.get("com.atproto.server.listAppPasswords"), 403, "Forbidden")
    # Asking to change the email needs account:email?action=manage, the handle identity:handle:
    # transition:generic is neither.
    assert_error(await app.post("com.atproto.server.requestEmailUpdate"), 403, "ScopeMissingError")
    assert_error(await app.post("com.atproto.identity.updateHandle", {"handle": "bob.test"}), 403, "ScopeMissingError")
    session = await app.get("com.atproto.server.getSession")
    assert session.json()["handle"] == "alice.test" and session.json()["active"] is True
    # Session tokens are never taken for OAuth ones.
    refresh = await pds.post("com.atproto.server.refreshSession", headers={"Authorization": f"DPoP {app.access}"})
    assert_error(refresh, 400, "InvalidToken")


@pytest_twisted.ensureDeferred
async def test_service_auth_with_a_grant(pds):
    did, _ = await account(pds)
    app = await grant(pds, did)
    token = await app.get("com.atproto.server.getServiceAuth", aud=APPVIEW, lxm=TIMELINE)
    assert token.code == 200 and token.json()["token"]
    # transition:generic is no grant for the chat service.
    assert_error(await app.get("com.atproto.server.getServiceAuth", aud="did:web:api.bsky.chat", lxm=LIST_CONVOS),
                 403, "ScopeMissingError")
    narrow = await grant(pds, did, f"atproto rpc:{TIMELINE}?aud={quote(APPVIEW, safe=':')}")
    assert (await narrow.get("com.atproto.server.getServiceAuth", aud=APPVIEW, lxm=TIMELINE)).code == 200
    for refused_params in [
        {"aud": APPVIEW, "lxm": "app.bsky.feed.getAuthorFeed"},  # another method
        {"aud": "did:web:api.bsky.app", "lxm": TIMELINE},  # another audience (the grant names the service)
        {"aud": APPVIEW},  # a method-less token is one for every method
    ]:
        assert_error(await narrow.get("com.atproto.server.getServiceAuth", **refused_params), 403, "ScopeMissingError")


@pytest_twisted.ensureDeferred
async def test_proxied_calls_with_a_grant(services):  # noqa: F811
    pds, appview, _ = services
    did, _ = await account(pds)
    app = await grant(pds, did)
    appview.route(TIMELINE, body={"feed": []})
    answer = await app.get(TIMELINE, limit="5")
    assert answer.code == 200 and answer.json() == {"feed": []}, answer.body
    (seen,) = appview.received
    assert seen.error is None and seen.claims["iss"] == did and seen.claims["lxm"] == TIMELINE
    assert answer.header("dpop-nonce")
    # chat.bsky needs transition:chat.bsky; nothing goes upstream.
    assert_error(await app.get(LIST_CONVOS), 403, "ScopeMissingError")
    narrow = await grant(pds, did, f"atproto rpc:{TIMELINE}?aud={quote(appview.did + '#bsky_appview', safe=':')}")
    assert (await narrow.get(TIMELINE)).code == 200
    assert_error(await narrow.get("app.bsky.actor.getProfile", actor=did), 403, "ScopeMissingError")
    assert len(appview.received) == 2


class Issuer:
    """A leafpds in another process, as the tests' ``App`` client sees its authorization server."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer


async def consented_grant(server: ServerProcess, did: str, scope: str = "atproto transition:generic") -> Grant:
    """A grant through the server's own endpoints and page: alice signs in there (not remembered) and allows."""
    origin = f"http://localhost:{server.port}"
    running = RunningPDS(None, server.url)
    app = App(Issuer(origin), client_id=loopback_client(scope), redirect_uri="http://127.0.0.1:4567/callback")
    code, pushed = await app.par(scope=scope)
    assert code == 201, pushed
    person = Person(running)
    consent = await person.sign_in(await person.open(app, pushed["request_uri"]), remember=False)
    allowed = await person.act(consent, "allow")
    assert allowed.code in (302, 303), allowed.body
    code, tokens = await app.exchange(query(allowed.header("location"))["code"])
    assert code == 200 and tokens["sub"] == did, tokens
    return Grant(running, app, tokens, origin)


@pytest_twisted.ensureDeferred
async def test_grants_and_revocations_outlive_a_restart(tmp_path):
    """
    The access-token and nonce secrets come from the master secret and
    revocations from the database: after kill -9 and a restart, a grant's
    tokens and nonce still work and a revoked grant stays revoked.
    """
    server = ServerProcess(tmp_path / "data")
    await server.start()
    try:
        code, made = await server.call("com.atproto.server.createAccount", {
            "handle": "alice.test", "email": "alice@example.com", "password": "correct horse battery"})
        assert code == 200, made
        did = made["did"]
        kept, revoked = await consented_grant(server, did), await consented_grant(server, did)
        assert (await kept.get("com.atproto.server.getSession")).code == 200
        code, _ = await revoked.app.post("/oauth/revoke", {"token": revoked.tokens["refresh_token"]}, proof=False)
        assert code == 200
        assert_dpop_refusal(await revoked.get("com.atproto.server.getSession"), "invalid_token")
        server.kill()
        await server.start()
        # The nonce learnt before the restart is still good: no use_dpop_nonce round trip.
        answer = await kept.get("com.atproto.server.getSession", retry=False)
        assert answer.code == 200 and answer.json()["did"] == did
        assert_dpop_refusal(await revoked.get("com.atproto.server.getSession"), "invalid_token")
        code, refreshed = await kept.app.refresh(kept.tokens["refresh_token"])
        assert code == 200, refreshed
        code, _ = await revoked.app.refresh(revoked.tokens["refresh_token"])
        assert code == 400
    finally:
        server.kill()


# The account page: the apps a person authorized, and revoking one.


@pytest_twisted.ensureDeferred
async def test_the_account_page_lists_authorized_apps_and_revokes_one(tmp_path, documents):
    running = await start_pds(make_settings(tmp_path / "data", oauth_allow_local_clients=True))
    try:
        browser = Browser(running)
        assert (await browser.post_form("/account/signup", SIGN_UP)).code == 303
        did = await did_of(browser)
        assert b"<h2>Apps you authorized</h2><p>None.</p>" in (await account_page(browser)).body
        client_id = documents.put("/client-metadata.json", {})  # its URL, then its document
        documents.put("/client-metadata.json", web_client_metadata(client_id, documents.origin + "/callback"))
        app = await grant(running, did, client_id=client_id, redirect_uri=documents.origin + "/callback")
        kept = await grant(running, did)  # a second app, not revoked
        page = await account_page(browser)
        assert b"Loopback web app" in page.body and client_id.encode() in page.body
        assert b"<code>transition:generic</code>" in page.body
        grant_id = app.app.pds.server.access.verify(app.access).grant_id
        assert b'aria-label="Revoke Loopback web app"' in page.body
        assert f'name="grant" value="{grant_id}"'.encode() in page.body

        # Without the form token, or from another account, nothing is revoked.
        refused_page = await browser.post_form("/account/apps/revoke", {"grant": grant_id})
        assert refused_page.code == 403
        other = Browser(running)
        signed_up = await other.post_form("/account/signup", {**SIGN_UP, "handle": "other", "email": "o@example.com"})
        assert signed_up.code == 303
        stranger = await other.post_form("/account/apps/revoke", {
            "grant": grant_id, "form_token": form_token(await account_page(other))})
        assert stranger.code == 400
        assert (await app.get("com.atproto.server.getSession")).code == 200

        done = await browser.post_form("/account/apps/revoke", {"grant": grant_id, "form_token": form_token(page)})
        assert (done.code, done.header("location")) == (303, "/account/?done=app-revoked")
        after = await browser.get(done.header("location"))
        assert b"Loopback web app" not in after.body and b"access was revoked" in after.body
        # At once: its access token, then its refresh token.
        assert_dpop_refusal(await app.get("com.atproto.server.getSession"), "invalid_token")
        refused(await app.app.refresh(app.tokens["refresh_token"]), 400, "invalid_grant")
        assert (await kept.get("com.atproto.server.getSession")).code == 200
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_takedown_or_a_deletion_ends_the_accounts_grants(tmp_path):
    from tests.test_admin import ADMIN, ADMIN_PASSWORD

    running = await start_pds(make_settings(tmp_path / "data", admin_password=ADMIN_PASSWORD))
    try:
        did, _ = await account(running, "alice")
        taken, kept = await grant(running, did), await grant(running, did)
        other_did, _ = await account(running, "bob")
        bystander = await grant(running, other_did)
        for app in (taken, bystander):
            assert (await app.get("com.atproto.server.getSession")).code == 200

        takedown = {"subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
                    "takedown": {"applied": True, "ref": "case-1"}}
        answer = await running.post("com.atproto.admin.updateSubjectStatus", takedown, headers=ADMIN)
        assert answer.code == 200, answer.body
        # Every grant of the account dies at once (access and refresh), another account's lives on.
        for app in (taken, kept):
            assert_dpop_refusal(await app.get("com.atproto.server.getSession"), "invalid_token")
            code, refused = await app.app.refresh(app.tokens["refresh_token"])
            assert (code, refused["error"]) == (400, "invalid_grant"), refused
        assert (await bystander.get("com.atproto.server.getSession")).code == 200
        assert await running.service.app.db.read(
            lambda conn: conn.execute("SELECT count(*) FROM oauth_grants WHERE did = ?", (did,)).fetchone()[0]
        ) == 0

        # Deletion: the same for a grant made after the takedown's reversal.
        takedown["takedown"] = {"applied": False}
        assert (await running.post("com.atproto.admin.updateSubjectStatus", takedown, headers=ADMIN)).code == 200
        again = await grant(running, did)
        assert (await again.get("com.atproto.server.getSession")).code == 200
        answer = await running.post("com.atproto.admin.deleteAccount", {"did": did}, headers=ADMIN)
        assert answer.code == 200, answer.body
        assert_dpop_refusal(await again.get("com.atproto.server.getSession"), "invalid_token")
        assert (await bystander.get("com.atproto.server.getSession")).code == 200
    finally:
        await running.service.stopService()
