"""OAuth client metadata documents (leafpds.oauth.clients): fetched over real loopback HTTP, validated, cached."""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from leafpds.oauth.clients import (
    CACHE_TTL,
    Client,
    ClientStore,
    check_client_id_url,
    loopback_client,
    redirect_uri_allowed,
    validate_metadata,
)
from leafpds.oauth.errors import InvalidClientMetadata
from leafpds.outbound import SystemResolver
from tests.documents_server import DocumentsServer
from tests.oauth_keys import ClientKey

CLIENT_ID = "https://app.example.com/oauth-client-metadata.json"


def metadata(client_id=CLIENT_ID, **changes):
    doc = {
        "client_id": client_id,
        "client_name": "Example",
        "client_uri": client_id.rsplit("/", 1)[0],
        "redirect_uris": [client_id.rsplit("/", 1)[0] + "/callback"],
        "scope": "atproto transition:generic",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "application_type": "web",
        "token_endpoint_auth_method": "none",
        "dpop_bound_access_tokens": True,
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


@pytest.fixture
def docs():
    server = DocumentsServer.start()
    yield server
    pytest_twisted.blockon(server.port.stopListening())


def test_a_valid_public_client():
    client = validate_metadata(CLIENT_ID, metadata())
    assert client.redirect_uris == ("https://app.example.com/callback",)
    assert client.scope == "atproto transition:generic"
    assert not client.confidential and not client.loopback and client.client_name == "Example"


def test_a_valid_confidential_client_with_jwks():
    key = ClientKey(kid="k1")
    client = validate_metadata(CLIENT_ID, metadata(
        token_endpoint_auth_method="private_key_jwt", token_endpoint_auth_signing_alg="ES256",
        jwks={"keys": [key.jwk]},
    ))
    assert client.confidential and client.jwks == {"keys": [key.jwk]}


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"client_id": "https://other.example.com/oauth-client-metadata.json"}, "does not match"),
        ({"dpop_bound_access_tokens": False}, "dpop_bound_access_tokens"),
        ({"dpop_bound_access_tokens": None}, "dpop_bound_access_tokens"),
        ({"response_types": ["token"]}, "response_types"),
        ({"grant_types": ["refresh_token"]}, "grant_types"),
        ({"grant_types": ["authorization_code", "implicit"]}, "grant_types"),
        ({"scope": "transition:generic"}, "atproto"),
        ({"scope": None}, "atproto"),
        ({"application_type": "desktop"}, "application_type"),
        ({"redirect_uris": []}, "redirect_uris"),
        ({"redirect_uris": "https://app.example.com/cb"}, "redirect_uris"),
        ({"redirect_uris": ["http://app.example.com/cb"]}, "http redirect URIs"),
        ({"redirect_uris": ["https://app.example.com/cb#x"]}, "fragment"),
        ({"redirect_uris": ["https://app.example.com:443/cb"]}, "default port"),
        ({"redirect_uris": ["https://u:p@app.example.com/cb"]}, "credentials"),
        ({"redirect_uris": ["https://localhost/cb"]}, "loopback"),
        ({"redirect_uris": ["com.example.app:/cb"]}, "must be https"),
        ({"token_endpoint_auth_method": "client_secret_post"}, "token_endpoint_auth_method"),
        ({"token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": "ES256"},
         "exactly one"),
        ({"token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": "RS256",
          "jwks_uri": "https://app.example.com/jwks.json"}, "ES256"),
        ({"token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": "ES256",
          "jwks": {"keys": []}}, "no usable"),
        ({"token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": "ES256",
          "jwks": {"keys": [{**ClientKey().jwk, "d": "c2VjcmV0"}]}}, "private key"),
        ({"jwks_uri": "https://app.example.com/jwks.json"}, "private_key_jwt"),
        ({"client_uri": "https://elsewhere.example.com/"}, "origin"),
        ({"logo_uri": "http://app.example.com/logo.png"}, "https"),
        ({"client_name": 7}, "client_name"),
    ],
)
def test_invalid_metadata_is_refused(changes, reason):
    with pytest.raises(InvalidClientMetadata, match=reason) as refused:
        validate_metadata(CLIENT_ID, metadata(**changes))
    assert refused.value.name == "invalid_client_metadata"


def test_native_clients_redirect_to_their_reversed_host_scheme_own_origin_or_loopback_ip():
    good = ["com.example.app:/callback", "https://app.example.com/cb", "http://127.0.0.1:8080/cb", "http://[::1]/cb"]
    client = validate_metadata(CLIENT_ID, metadata(application_type="native", redirect_uris=good))
    assert client.application_type == "native"
    for bad, reason in [
        ("com.example.other:/callback", "reversed"),
        ("com.example.app://callback", "<scheme>:/<path>"),
        ("https://elsewhere.example.com/cb", "origin"),
        ("http://localhost/cb", "127.0.0.1"),
    ]:
        with pytest.raises(InvalidClientMetadata, match=reason):
            validate_metadata(CLIENT_ID, metadata(application_type="native", redirect_uris=[bad]))
    with pytest.raises(InvalidClientMetadata, match="Native clients must authenticate"):
        validate_metadata(CLIENT_ID, metadata(
            application_type="native", token_endpoint_auth_method="private_key_jwt",
            token_endpoint_auth_signing_alg="ES256", jwks={"keys": [ClientKey().jwk]}))


@pytest.mark.parametrize(
    "client_id, reason",
    [
        ("http://app.example.com/meta.json", "https"),
        ("https://app.example.com", "path"),
        ("https://app.example.com/", "path"),
        ("https://app.example.com/meta.json#frag", "fragment"),
        ("https://user@app.example.com/meta.json", "credentials"),
        ("https://localhost/meta.json", "localhost"),
        ("https://app.localhost/meta.json", "localhost"),
        ("https://app.example.com:99999/meta.json", "valid URL"),
    ],
)
def test_discoverable_client_ids_must_be_https_urls_with_a_path(client_id, reason):
    with pytest.raises(InvalidClientMetadata, match=reason):
        check_client_id_url(client_id, allow_local=False)


def test_loopback_development_clients_are_built_from_their_query():
    client = loopback_client("http://localhost?redirect_uri=http%3A%2F%2F127.0.0.1%3A1234%2Fcb&scope=atproto+transition%3Ageneric")
    assert client.loopback and client.application_type == "native" and not client.confidential
    assert client.redirect_uris == ("http://127.0.0.1:1234/cb",)
    assert client.scope == "atproto transition:generic"
    default = loopback_client("http://localhost")
    assert default.redirect_uris == ("http://127.0.0.1/", "http://[::1]/") and default.scope == "atproto"


@pytest.mark.parametrize(
    "client_id, reason",
    [
        ("http://localhost:8080", "http://localhost"),
        ("http://localhost/path", "http://localhost"),
        ("http://localhost/", "path"),
        ("http://localhost?redirect_uri=http://localhost/cb", "127.0.0.1"),
        ("http://localhost?redirect_uri=https://127.0.0.1/cb", "127.0.0.1"),
        ("http://localhost?scope=transition:generic", "atproto"),
        ("http://localhost?scope=atproto&scope=atproto", "one scope"),
        ("http://localhost?client_name=x", "Unknown"),
    ],
)
def test_malformed_loopback_client_ids_are_refused(client_id, reason):
    with pytest.raises(InvalidClientMetadata, match=reason):
        loopback_client(client_id)


def test_redirect_uris_match_exactly_or_on_loopback_ips_with_any_port():
    client = Client("x", ("https://app.example.com/cb", "http://127.0.0.1/cb", "http://[::1]:9/cb?a=1"), "atproto")
    assert redirect_uri_allowed(client, "https://app.example.com/cb")
    assert not redirect_uri_allowed(client, "https://app.example.com/cb/")
    assert not redirect_uri_allowed(client, "https://app.example.com:8443/cb")
    assert redirect_uri_allowed(client, "http://127.0.0.1:61234/cb")
    assert not redirect_uri_allowed(client, "http://127.0.0.1:61234/other")
    assert redirect_uri_allowed(client, "http://[::1]:5000/cb?a=1")
    assert not redirect_uri_allowed(client, "http://[::1]:5000/cb?a=2")
    assert not redirect_uri_allowed(client, "http://localhost:61234/cb")


@pytest_twisted.ensureDeferred
async def test_a_client_document_is_fetched_validated_and_cached(docs):
    client_id = docs.origin + "/client-metadata.json"
    docs.put("/client-metadata.json", metadata(client_id, client_uri=docs.origin))
    store = ClientStore(reactor, None, allow_local=True)
    client = await store.get(client_id)
    assert client.client_id == client_id and client.redirect_uris == (docs.origin + "/callback",)
    assert await store.get(client_id) == client
    assert docs.hits["/client-metadata.json"] == 1
    store.forget(client_id)
    await store.get(client_id)
    assert docs.hits["/client-metadata.json"] == 2


@pytest_twisted.ensureDeferred
async def test_the_cache_expires(docs):
    client_id = docs.origin + "/client-metadata.json"
    docs.put("/client-metadata.json", metadata(client_id, client_uri=None))
    clock = Clock()
    store = ClientStore(reactor, None, allow_local=True, clock=clock)
    await store.get(client_id)
    clock.advance(CACHE_TTL - 1)
    await store.get(client_id)
    assert docs.hits["/client-metadata.json"] == 1
    clock.advance(1)
    await store.get(client_id)
    assert docs.hits["/client-metadata.json"] == 2


@pytest_twisted.ensureDeferred
async def test_local_client_ids_are_refused_unless_explicitly_allowed(docs):
    client_id = docs.put("/client-metadata.json", metadata(docs.origin + "/client-metadata.json", client_uri=None))
    store = ClientStore(reactor, None)
    with pytest.raises(InvalidClientMetadata, match="https"):
        await store.get(client_id)
    # Even over https, a loopback or private address is never fetched by default.
    for url in ("https://127.0.0.1:%d/client-metadata.json" % docs.port.getHost().port,
                "https://10.0.0.1/client-metadata.json", "https://[::1]/client-metadata.json"):
        with pytest.raises(InvalidClientMetadata, match="non-public address"):
            await store.get(url)
    assert docs.hits == {}


@pytest_twisted.ensureDeferred
async def test_unusable_documents_are_refused_and_failures_cached_briefly(docs):
    store = ClientStore(reactor, None, allow_local=True)
    cases = {
        "/missing.json": None,
        "/error.json": dict(value={}, status=500),
        "/html.json": dict(value=b"<html></html>", content_type="text/html"),
        "/garbage.json": dict(value=b"{not json"),
        "/huge.json": dict(value=b"[" + b"0," * 40000 + b"0]"),
        "/redirect.json": dict(value={}, status=302),
        "/list.json": dict(value=[]),
    }
    for path, doc in cases.items():
        if doc is not None:
            docs.put(path, doc.pop("value"), **doc)
        with pytest.raises(InvalidClientMetadata) as refused:
            await store.get(docs.origin + path)
        assert refused.value.name == "invalid_client_metadata", path
        with pytest.raises(InvalidClientMetadata):
            await store.get(docs.origin + path)
        assert docs.hits.get(path, 0) == 1, path


@pytest_twisted.ensureDeferred
async def test_a_document_that_never_finishes_times_out(docs):
    docs.put("/slow.json", metadata(docs.origin + "/slow.json"), hang=True)
    store = ClientStore(reactor, None, allow_local=True, timeout=0.3)
    with pytest.raises(InvalidClientMetadata, match="Unable to obtain"):
        await store.get(docs.origin + "/slow.json")


@pytest_twisted.ensureDeferred
async def test_a_confidential_clients_keys_come_from_its_jwks_uri(docs):
    key = ClientKey(kid="k1")
    jwks_uri = docs.put("/jwks.json", {"keys": [key.jwk, {"kty": "RSA", "n": "x", "e": "AQAB"}]})
    client_id = docs.origin + "/client-metadata.json"
    docs.put("/client-metadata.json", metadata(
        client_id, client_uri=None, token_endpoint_auth_method="private_key_jwt",
        token_endpoint_auth_signing_alg="ES256", jwks_uri=jwks_uri))
    store = ClientStore(reactor, None, allow_local=True)
    client = await store.get(client_id)
    assert await store.keys(client) == [key.jwk]
    await store.keys(client)
    assert docs.hits["/jwks.json"] == 1
    store.forget_keys(client)
    await store.keys(client)
    assert docs.hits["/jwks.json"] == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_for_one_client_share_one_fetch(docs):
    from twisted.internet.defer import ensureDeferred, gatherResults

    client_id = docs.origin + "/client-metadata.json"
    docs.put("/client-metadata.json", metadata(client_id, client_uri=None))
    store = ClientStore(reactor, None, allow_local=True)
    clients = await gatherResults([ensureDeferred(store.get(client_id)) for _ in range(5)])
    assert len(set(clients)) == 1 and docs.hits["/client-metadata.json"] == 1
    missing = docs.origin + "/missing.json"
    failures = []
    for attempt in [ensureDeferred(store.get(missing)) for _ in range(3)]:  # all started before any ends
        try:
            await attempt
        except InvalidClientMetadata as e:
            failures.append(e)
    assert len(failures) == 3 and docs.hits["/missing.json"] == 1


@pytest_twisted.ensureDeferred
async def test_a_client_id_host_in_capitals_is_fetched(docs):
    port = docs.port.getHost().port
    client_id = f"http://LOCALHOST:{port}/client-metadata.json"
    docs.put("/client-metadata.json", metadata(client_id, client_uri=None))
    store = ClientStore(reactor, None, allow_local=True)
    assert (await store.get(client_id)).client_id == client_id


@pytest_twisted.ensureDeferred
async def test_a_document_over_tls_is_fetched_only_from_a_trusted_certificate(monkeypatch, tmp_path):
    # leafpds trusts the system's authorities, which OpenSSL lets SSL_CERT_FILE
    # replace: the way the end-to-end tests make it trust their own certificate.
    tls = DocumentsServer.start(tls=True)
    try:
        client_id = tls.put("/client-metadata.json", metadata(tls.origin + "/client-metadata.json"))
        assert client_id.startswith("https://app.localhost:")
        store = ClientStore(reactor, SystemResolver(reactor), allow_local=True)
        with pytest.raises(InvalidClientMetadata, match="Unable to obtain"):
            await store.get(client_id)
        store.stop()
        assert tls.hits == {}  # the handshake failed: no request was made
        (tmp_path / "ca.pem").write_bytes(tls.cert_pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        store = ClientStore(reactor, SystemResolver(reactor), allow_local=True)
        assert (await store.get(client_id)).client_id == client_id
        store.stop()
    finally:
        await tls.stop()
