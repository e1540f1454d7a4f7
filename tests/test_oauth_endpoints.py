"""
The OAuth endpoints (``/oauth/par``, ``/oauth/token``, ``/oauth/revoke``,
``/oauth/jwks``) of a real leafpds over loopback HTTP: the whole flow and
every refusal, with DPoP nonces, real keys, and a confidential client whose
metadata and keys a loopback server publishes.  Consent is given as the
authorization page gives it (``App.consent``, tests/oauth_app.py).  Each
refusal carries its RFC error name and grants nothing: the server's ledger
of grants, live refresh tokens, unspent codes, pending requests and revoked
grants is read before and after, and a dead token is tried at XRPC.
"""

import json
import time
from collections.abc import Awaitable

import pytest
import pytest_twisted
import treq

from leafpds.oauth.jwk import thumbprint
from tests.harness import make_settings, start_pds
from tests.oauth_app import App, Mounted, refused
from tests.oauth_keys import ClientKey
from tests.test_oauth_xrpc import Grant, account, assert_dpop_refusal, documents  # noqa: F401 (a fixture)


async def ledger(app: App) -> dict[str, int]:
    """What the authorization server holds: a refusal may spend a code, never grant anything."""
    def read(conn):
        def count(sql: str) -> int:
            return conn.execute(sql).fetchone()[0]
        return {
            "grants": count("SELECT count(*) FROM oauth_grants"),
            "refresh_tokens": count("SELECT count(*) FROM oauth_refresh_tokens WHERE rotated = 0"),
            "codes": count("SELECT count(*) FROM oauth_codes WHERE used = 0"),
            "revoked": count("SELECT count(*) FROM revoked_sessions"),
        }
    held = await app.pds.app.db.read(read)
    held["pending"] = len(app.pds.server.pending._pending)
    return held


async def refuses(app: App, attempt: Awaitable, status: int, error: str, **moved: int) -> None:
    """``attempt`` is refused with ``error``; the ledger moves by ``moved`` only (nothing, unless said)."""
    before = await ledger(app)
    refused(await attempt, status, error)
    after = await ledger(app)
    assert after == {name: held + moved.get(name, 0) for name, held in before.items()}, (before, after)


async def dead_at_xrpc(running, app: App, tokens: dict) -> None:
    """The access token is refused: in the server's check, and at XRPC with its own key and a good proof."""
    with pytest.raises(Exception, match="revoked"):
        running.service.app.oauth.access.verify(tokens["access_token"])
    assert_dpop_refusal(await Grant(running, app, tokens).get("com.atproto.server.getSession"), "invalid_token")


@pytest_twisted.ensureDeferred
async def test_the_whole_flow_for_a_loopback_client(pds):
    did, _ = await account(pds)
    app = App(Mounted(pds))
    # The first proof has no nonce: the answer gives one, the client retries.
    first = app.key.proof("POST", app.pds.issuer + "/oauth/par")
    response = await treq.post(app.pds.issuer + "/oauth/par", data={"client_id": app.client_id},
                               headers={"DPoP": first})
    assert response.code == 400 and json.loads(await response.content())["error"] == "use_dpop_nonce"
    assert response.headers.getRawHeaders("dpop-nonce")
    assert "DPoP-Nonce" in response.headers.getRawHeaders("access-control-expose-headers")[0]

    code, pushed = await app.par()
    assert code == 201 and pushed["expires_in"] == 300
    assert pushed["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    the_code = await app.consent(pushed["request_uri"], did)

    code, tokens = await app.exchange(the_code)
    assert code == 200, tokens
    assert tokens["token_type"] == "DPoP" and tokens["sub"] == did
    assert tokens["scope"] == "atproto transition:generic" and tokens["expires_in"] == 3600
    access = app.pds.server.access.verify(tokens["access_token"])
    assert access.did == did and access.dpop_jkt == thumbprint(app.key.jwk)

    code, refreshed = await app.refresh(tokens["refresh_token"])
    assert code == 200 and refreshed["refresh_token"] != tokens["refresh_token"]
    session = await Grant(pds, app, refreshed).get("com.atproto.server.getSession")
    assert session.code == 200 and session.json()["did"] == did

    before = await ledger(app)
    code, _ = await app.post("/oauth/revoke", {"token": refreshed["refresh_token"]}, proof=False)
    assert code == 200
    assert await ledger(app) == {**before, "grants": 0, "refresh_tokens": 0, "revoked": before["revoked"] + 1}
    await refuses(app, app.refresh(refreshed["refresh_token"]), 400, "invalid_grant")
    await dead_at_xrpc(pds, app, refreshed)


@pytest_twisted.ensureDeferred
async def test_par_refusals_over_http(pds):
    app = App(Mounted(pds))
    await refuses(app, app.par(code_challenge=None, code_challenge_method=None), 400, "invalid_request")
    await refuses(app, app.par(code_challenge_method="plain"), 400, "invalid_request")
    await refuses(app, app.par(redirect_uri="http://127.0.0.1/elsewhere"), 400, "invalid_request")
    await refuses(app, app.par(redirect_uri="https://evil.example.com/callback"), 400, "invalid_request")
    await refuses(app, app.par(scope="transition:generic"), 400, "invalid_scope")
    await refuses(app, app.par(scope="atproto transition:email"), 400, "invalid_scope")
    await refuses(app, app.par(nonce="oidc"), 400, "invalid_request")
    await refuses(app, App(app.pds, client_id="https://127.0.0.1:1/nothing.json").par(),
                  400, "invalid_client_metadata")
    response = await treq.post(app.pds.issuer + "/oauth/par", json={"client_id": app.client_id})
    assert response.code == 400 and json.loads(await response.content())["error"] == "invalid_request"
    assert await ledger(app) == {"grants": 0, "refresh_tokens": 0, "codes": 0, "revoked": 0, "pending": 0}


@pytest_twisted.ensureDeferred
async def test_dpop_refusals_over_http(pds):
    did, _ = await account(pds)
    app = App(Mounted(pds))
    the_code = await app.authorize(did)
    # None of these spends the code (the proof is checked first).
    await refuses(app, app.exchange(the_code, proof=False), 401, "invalid_dpop_proof")
    await refuses(app, app.exchange(the_code, claims={"htm": "GET"}), 401, "invalid_dpop_proof")
    await refuses(app, app.exchange(the_code, claims={"htu": app.pds.issuer + "/oauth/par"}), 401,
                  "invalid_dpop_proof")
    await refuses(app, app.exchange(the_code, claims={"iat": time.time() - 600}), 401, "invalid_dpop_proof")
    # A good proof exchanges it once; the same proof's jti again is a replay.
    code, _ = await app.exchange(the_code, claims={"jti": "same"})
    assert code == 200
    await refuses(app, app.exchange(the_code, claims={"jti": "same"}), 401, "invalid_dpop_proof")
    # Without the nonce (and no retry), the client is told to use one.
    app.nonce = None
    await refuses(app, app.post("/oauth/token", {"grant_type": "refresh_token", "refresh_token": "x"},
                                retry=False), 400, "use_dpop_nonce")


@pytest_twisted.ensureDeferred
async def test_code_refusals_over_http(pds):
    did, _ = await account(pds)
    app = App(Mounted(pds))
    the_code = await app.authorize(did)
    # A wrong presentation spends the code; presenting it again is refused too.
    await refuses(app, app.exchange(the_code, code_verifier="x" * 50), 400, "invalid_grant", codes=-1)
    await refuses(app, app.exchange(the_code), 400, "invalid_grant")
    # Another redirect URI than the request's.
    the_code = await app.authorize(did)
    await refuses(app, app.exchange(the_code, redirect_uri="http://127.0.0.1:4567/elsewhere"), 400,
                  "invalid_grant", codes=-1)
    # A code bound at PAR to one DPoP key cannot be exchanged with another.
    the_code = await app.authorize(did)
    await refuses(app, app.exchange(the_code, key=ClientKey()), 400, "invalid_grant", codes=-1)
    # Another client cannot exchange this client's code.
    the_code = await app.authorize(did)
    other = App(app.pds, client_id="http://localhost?redirect_uri=" + "http%3A%2F%2F127.0.0.1%2Fcallback")
    other.verifier, other.key = app.verifier, app.key
    await refuses(other, other.exchange(the_code), 400, "invalid_grant", codes=-1)
    # A replayed code kills the grant it gave.
    the_code = await app.authorize(did)
    code, tokens = await app.exchange(the_code)
    assert code == 200
    await refuses(app, app.exchange(the_code), 400, "invalid_grant", grants=-1, refresh_tokens=-1, revoked=1)
    await refuses(app, app.refresh(tokens["refresh_token"]), 400, "invalid_grant")
    await dead_at_xrpc(pds, app, tokens)
    await refuses(app, app.post("/oauth/token", {"grant_type": "password"}), 400, "unsupported_grant_type")


@pytest_twisted.ensureDeferred
async def test_refresh_refusals_over_http(pds):
    did, _ = await account(pds)
    app = App(Mounted(pds))
    code, tokens = await app.exchange(await app.authorize(did))
    await refuses(app, app.refresh(tokens["refresh_token"], key=ClientKey()), 400, "invalid_grant")
    await refuses(app, app.refresh(tokens["refresh_token"], scope="atproto transition:email"), 400, "invalid_scope")
    code, second = await app.refresh(tokens["refresh_token"])
    assert code == 200
    # The rotated token again: the whole family dies, the newest token with it.
    await refuses(app, app.refresh(tokens["refresh_token"]), 400, "invalid_grant",
                  grants=-1, refresh_tokens=-1, revoked=1)
    await refuses(app, app.refresh(second["refresh_token"]), 400, "invalid_grant")
    await dead_at_xrpc(pds, app, second)


@pytest_twisted.ensureDeferred
async def test_a_confidential_client_authenticates_every_call(tmp_path, documents):
    running = await start_pds(make_settings(tmp_path / "data", oauth_allow_local_clients=True))
    try:
        did, _ = await account(running)
        signer = ClientKey(kid="k1")
        client_id = documents.origin + "/client-metadata.json"
        redirect = documents.origin + "/callback"
        documents.put("/client-metadata.json", {
            "client_id": client_id, "redirect_uris": [redirect], "scope": "atproto transition:generic",
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "application_type": "web", "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256", "jwks_uri": documents.origin + "/jwks.json",
            "dpop_bound_access_tokens": True,
        })
        documents.put("/jwks.json", {"keys": [signer.jwk]})
        app = App(Mounted(running), client_id=client_id, redirect_uri=redirect, signer=signer)
        await refuses(app, app.post("/oauth/par", {"client_assertion": "", "response_type": "code"}),
                      401, "invalid_client")
        code, tokens = await app.exchange(await app.authorize(did))
        assert code == 200, tokens
        impostor = App(app.pds, client_id, redirect, ClientKey(kid="k1")).assertion()
        await refuses(app, app.refresh(tokens["refresh_token"], client_assertion=impostor), 401, "invalid_client")
        code, _ = await app.refresh(tokens["refresh_token"])
        assert code == 200
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_revoke_answers_200_even_for_unknown_tokens_and_jwks_and_preflight(pds):
    app = App(Mounted(pds))
    before = await ledger(app)
    code, body = await app.post("/oauth/revoke", {"token": "nothing-known"}, proof=False)
    assert (code, body) == (200, {})
    assert await ledger(app) == before
    response = await treq.get(app.pds.issuer + "/oauth/jwks")
    assert json.loads(await response.content()) == {"keys": []}
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]
    response = await treq.request("OPTIONS", app.pds.issuer + "/oauth/token")
    assert response.code == 204
    # Header names are case-insensitive: the site's CORS lists them in lower case.
    assert "dpop" in response.headers.getRawHeaders("access-control-allow-headers")[0].lower().split(", ")
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["*"]
