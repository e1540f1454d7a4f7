"""
The OAuth endpoints (leafpds.oauth.endpoints) over real loopback HTTP, on a
test site of their own (tests/oauth_site.py: they are not mounted in
leafpds yet): PAR, token, refresh, revoke, with DPoP nonces, real keys, a
migrated database and a confidential client whose metadata and keys a
loopback server publishes.  The authorization page does not exist yet:
tests consent by opening the pushed request and issuing the code as it will.
"""

import base64
import hashlib
import json
import secrets
import time
from urllib.parse import quote

import pytest
import pytest_twisted
import treq

from leafpds.oauth.assertions import ASSERTION_TYPE
from leafpds.oauth.jwk import thumbprint
from tests.oauth_keys import ClientKey
from tests.oauth_site import OAuthSite

DID = "did:plc:alice234567890abcdefghij"
LOOPBACK_CLIENT = "http://localhost?redirect_uri=" + quote("http://127.0.0.1/callback", safe="") + \
    "&scope=" + quote("atproto transition:generic", safe="")


@pytest_twisted.async_yield_fixture
async def pds(tmp_path):
    site = OAuthSite(tmp_path, did=DID)
    await site.add_account()
    yield site
    await site.stop()


class App:
    """An OAuth client as the official one behaves: DPoP on every call, the server's nonce learnt and reused."""

    def __init__(self, pds, client_id=LOOPBACK_CLIENT, redirect_uri="http://127.0.0.1:4567/callback", signer=None):
        self.pds = pds
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.key = ClientKey()
        self.signer = signer  # a ClientKey for private_key_jwt
        self.nonce = None
        self.verifier = secrets.token_urlsafe(48)
        self.challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()

    def assertion(self):
        now = int(time.time())
        return self.signer.sign({"iss": self.client_id, "sub": self.client_id, "aud": self.pds.issuer,
                                 "iat": now, "exp": now + 60, "jti": secrets.token_urlsafe(12)},
                                kid=self.signer.jwk["kid"])

    async def post(self, path, fields, *, proof=True, key=None, retry=True, claims=None):
        url = self.pds.issuer + path
        fields = {"client_id": self.client_id, **fields}
        if self.signer is not None and "client_assertion" not in fields:
            fields.update(client_assertion_type=ASSERTION_TYPE, client_assertion=self.assertion())
        fields = {k: v for k, v in fields.items() if v is not None}
        headers = {}
        if proof:
            headers["DPoP"] = (key or self.key).proof(nonce=self.nonce, **{"htm": "POST", "htu": url, **(claims or {})})
        response = await treq.post(url, data=fields, headers=headers)
        body = json.loads(await response.content())
        nonce = response.headers.getRawHeaders("dpop-nonce")
        if nonce:
            self.nonce = nonce[0]
        if retry and response.code == 400 and body.get("error") == "use_dpop_nonce":
            return await self.post(path, fields, proof=proof, key=key, retry=False, claims=claims)
        return response.code, body

    async def par(self, **changes):
        fields = {
            "response_type": "code", "redirect_uri": self.redirect_uri, "scope": "atproto transition:generic",
            "state": "st-1", "code_challenge": self.challenge, "code_challenge_method": "S256",
            "login_hint": "alice.test",
        }
        fields.update(changes)
        return await self.post("/oauth/par", fields)

    async def consent(self, request_uri, did=DID):
        """What the authorization page will do once the person signed in and consented."""
        request_id, request = self.pds.server.pending.open(request_uri, self.client_id)
        self.pds.server.pending.finish(request_id)
        return await self.pds.server.issue_code(request, did)

    async def authorize(self):
        code, body = await self.par()
        assert code == 201, body
        return await self.consent(body["request_uri"])

    async def exchange(self, code, *, key=None, claims=None, proof=True, **changes):
        fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                  "code_verifier": self.verifier}
        fields.update(changes)
        return await self.post("/oauth/token", fields, key=key, claims=claims, proof=proof)

    async def refresh(self, refresh_token, *, key=None, **changes):
        fields = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        fields.update(changes)
        return await self.post("/oauth/token", fields, key=key)


def refused(answer, status, error):
    code, body = answer
    assert (code, body.get("error")) == (status, error), body
    assert body.get("error_description")


@pytest_twisted.ensureDeferred
async def test_the_whole_flow_for_a_loopback_client(pds):
    app = App(pds)
    # The first proof has no nonce: the answer gives one, the client retries.
    first = app.key.proof("POST", pds.issuer + "/oauth/par")
    response = await treq.post(pds.issuer + "/oauth/par", data={"client_id": app.client_id}, headers={"DPoP": first})
    assert response.code == 400 and json.loads(await response.content())["error"] == "use_dpop_nonce"
    assert response.headers.getRawHeaders("dpop-nonce")
    assert "DPoP-Nonce" in response.headers.getRawHeaders("access-control-expose-headers")[0]

    code, pushed = await app.par()
    assert code == 201 and pushed["expires_in"] == 300
    assert pushed["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    the_code = await app.consent(pushed["request_uri"])

    code, tokens = await app.exchange(the_code)
    assert code == 200, tokens
    assert tokens["token_type"] == "DPoP" and tokens["sub"] == DID
    assert tokens["scope"] == "atproto transition:generic" and tokens["expires_in"] == 3600
    access = pds.server.access.verify(tokens["access_token"])
    assert access.did == DID and access.dpop_jkt == thumbprint(app.key.jwk)

    code, refreshed = await app.refresh(tokens["refresh_token"])
    assert code == 200 and refreshed["refresh_token"] != tokens["refresh_token"]

    code, _ = await app.post("/oauth/revoke", {"token": refreshed["refresh_token"]}, proof=False)
    assert code == 200
    refused(await app.refresh(refreshed["refresh_token"]), 400, "invalid_grant")
    with pytest.raises(Exception, match="revoked"):
        pds.server.access.verify(refreshed["access_token"])


@pytest_twisted.ensureDeferred
async def test_par_refusals_over_http(pds):
    app = App(pds)
    refused(await app.par(code_challenge=None, code_challenge_method=None), 400, "invalid_request")
    refused(await app.par(code_challenge_method="plain"), 400, "invalid_request")
    refused(await app.par(redirect_uri="http://127.0.0.1/elsewhere"), 400, "invalid_request")
    refused(await app.par(redirect_uri="https://evil.example.com/callback"), 400, "invalid_request")
    refused(await app.par(scope="transition:generic"), 400, "invalid_scope")
    refused(await app.par(scope="atproto transition:email"), 400, "invalid_scope")
    refused(await app.par(nonce="oidc"), 400, "invalid_request")
    refused(await App(pds, client_id="https://127.0.0.1:1/nothing.json").par(), 400, "invalid_client_metadata")
    response = await treq.post(pds.issuer + "/oauth/par", json={"client_id": app.client_id})
    assert response.code == 400 and json.loads(await response.content())["error"] == "invalid_request"


@pytest_twisted.ensureDeferred
async def test_dpop_refusals_over_http(pds):
    app = App(pds)
    the_code = await app.authorize()
    refused(await app.exchange(the_code, proof=False), 401, "invalid_dpop_proof")
    refused(await app.exchange(the_code, claims={"htm": "GET"}), 401, "invalid_dpop_proof")
    refused(await app.exchange(the_code, claims={"htu": pds.issuer + "/oauth/par"}), 401, "invalid_dpop_proof")
    refused(await app.exchange(the_code, claims={"iat": time.time() - 600}), 401, "invalid_dpop_proof")
    # None of these spent the code (the proof is checked first); a good proof exchanges it once.
    code, _ = await app.exchange(the_code, claims={"jti": "same"})
    assert code == 200
    refused(await app.exchange(the_code, claims={"jti": "same"}), 401, "invalid_dpop_proof")
    # Without the nonce (and no retry), the client is told to use one.
    app.nonce = None
    refused(await app.post("/oauth/token", {"grant_type": "refresh_token", "refresh_token": "x"}, retry=False),
            400, "use_dpop_nonce")


@pytest_twisted.ensureDeferred
async def test_code_refusals_over_http(pds):
    app = App(pds)
    the_code = await app.authorize()
    refused(await app.exchange(the_code, code_verifier="x" * 50), 400, "invalid_grant")
    refused(await app.exchange(the_code), 400, "invalid_grant")  # spent by the wrong presentation
    # A code bound at PAR to one DPoP key cannot be exchanged with another.
    the_code = await app.authorize()
    refused(await app.exchange(the_code, key=ClientKey()), 400, "invalid_grant")
    # Another client cannot exchange this client's code.
    the_code = await app.authorize()
    other = App(pds, client_id="http://localhost?redirect_uri=" + quote("http://127.0.0.1/callback", safe=""))
    other.verifier, other.key = app.verifier, app.key
    refused(await other.exchange(the_code), 400, "invalid_grant")
    # A replayed code kills the grant it gave.
    the_code = await app.authorize()
    code, tokens = await app.exchange(the_code)
    assert code == 200
    refused(await app.exchange(the_code), 400, "invalid_grant")
    refused(await app.refresh(tokens["refresh_token"]), 400, "invalid_grant")
    with pytest.raises(Exception, match="revoked"):
        pds.server.access.verify(tokens["access_token"])
    refused(await app.post("/oauth/token", {"grant_type": "password"}), 400, "unsupported_grant_type")


@pytest_twisted.ensureDeferred
async def test_refresh_refusals_over_http(pds):
    app = App(pds)
    code, tokens = await app.exchange(await app.authorize())
    refused(await app.refresh(tokens["refresh_token"], key=ClientKey()), 400, "invalid_grant")
    refused(await app.refresh(tokens["refresh_token"], scope="atproto transition:email"), 400, "invalid_scope")
    code, second = await app.refresh(tokens["refresh_token"])
    assert code == 200
    # The rotated token again: the whole family dies, the newest token with it.
    refused(await app.refresh(tokens["refresh_token"]), 400, "invalid_grant")
    refused(await app.refresh(second["refresh_token"]), 400, "invalid_grant")
    with pytest.raises(Exception, match="revoked"):
        pds.server.access.verify(second["access_token"])


@pytest_twisted.ensureDeferred
async def test_a_confidential_client_authenticates_every_call(pds):
    signer = ClientKey(kid="k1")
    docs = pds.docs
    client_id = docs.origin + "/client-metadata.json"
    redirect = docs.origin + "/callback"
    docs.put("/client-metadata.json", {
        "client_id": client_id, "redirect_uris": [redirect], "scope": "atproto transition:generic",
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "application_type": "web", "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256", "jwks_uri": docs.origin + "/jwks.json",
        "dpop_bound_access_tokens": True,
    })
    docs.put("/jwks.json", {"keys": [signer.jwk]})
    app = App(pds, client_id=client_id, redirect_uri=redirect, signer=signer)
    refused(await app.post("/oauth/par", {"client_assertion": "", "response_type": "code"}), 401, "invalid_client")
    code, tokens = await app.exchange(await app.authorize())
    assert code == 200, tokens
    refused(await app.refresh(tokens["refresh_token"], client_assertion=App(pds, client_id, redirect,
                                                                              ClientKey(kid="k1")).assertion()),
            401, "invalid_client")
    code, _ = await app.refresh(tokens["refresh_token"])
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_revoke_answers_200_even_for_unknown_tokens_and_jwks_and_preflight(pds):
    app = App(pds)
    code, body = await app.post("/oauth/revoke", {"token": "nothing-known"}, proof=False)
    assert (code, body) == (200, {})
    response = await treq.get(pds.issuer + "/oauth/jwks")
    assert json.loads(await response.content()) == {"keys": []}
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]
    response = await treq.request("OPTIONS", pds.issuer + "/oauth/token")
    assert response.code == 204
    assert "DPoP" in response.headers.getRawHeaders("access-control-allow-headers")[0]
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["*"]
