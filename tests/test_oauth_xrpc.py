"""
OAuth on a real leafpds, over loopback HTTP: the discovery documents and
the authorization server's endpoints as mounted, and XRPC called with
DPoP-bound access tokens.  Tokens come through the real ``/oauth/par`` and
``/oauth/token``; consent (the authorization page's part) is given the way
the page gives it, through the server's ``pending`` requests and
``issue_code``.
"""

import json

import pytest_twisted
import treq

from tests.documents_server import DocumentsServer
from tests.harness import make_settings, start_pds
from tests.test_oauth_endpoints import App, refused


class Mounted:
    """A running leafpds as the OAuth tests' ``App`` client sees an authorization server."""

    def __init__(self, running) -> None:
        self.running = running
        self.app = running.service.app

    @property
    def issuer(self) -> str:
        return self.app.oauth.issuer

    @property
    def server(self):
        return self.app.oauth


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

