"""private_key_jwt client authentication (leafpds.oauth.assertions) with real keys, over a loopback jwks_uri."""

import secrets

import pytest
import pytest_twisted
from twisted.internet import reactor

from leafpds.oauth.assertions import ASSERTION_TYPE, authenticate, verify_assertion
from leafpds.oauth.clients import Client, ClientStore
from leafpds.oauth.errors import InvalidClient
from leafpds.oauth.replay import ReplayCache
from tests.documents_server import DocumentsServer
from tests.oauth_keys import NOW, ClientKey, clock_at

ISSUER = "https://pds.test"
CLIENT_ID = "https://app.example.com/client-metadata.json"


@pytest.fixture
def clock():
    return clock_at(NOW)


@pytest.fixture
def key():
    return ClientKey(kid="k1")


def assertion(key, **changes):
    claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": ISSUER, "iat": NOW, "exp": NOW + 60,
              "jti": secrets.token_urlsafe(12)}
    claims.update(changes)
    return key.sign({k: v for k, v in claims.items() if v is not None}, kid=key.jwk["kid"])


def check(token, key, clock, replay=None):
    verify_assertion(token, CLIENT_ID, [key.jwk], [ISSUER], clock, replay if replay is not None else ReplayCache(clock))


def test_a_good_assertion_is_accepted(key, clock):
    check(assertion(key), key, clock)


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"iss": "https://evil.example.com/m.json"}, "issuer"),
        ({"sub": "https://evil.example.com/m.json"}, "sub"),
        ({"aud": "https://other-pds.test"}, "udience"),
        ({"aud": None}, "aud"),
        ({"exp": NOW - 11}, "expired"),
        ({"exp": None}, "exp"),
        ({"iat": NOW - 100}, "iat"),
        ({"iat": NOW + 60}, "iat"),
        ({"jti": None}, "jti"),
    ],
)
def test_faulty_assertions_are_refused_as_invalid_client(key, clock, changes, reason):
    with pytest.raises(InvalidClient, match=reason) as refused:
        check(assertion(key, **changes), key, clock)
    assert refused.value.name == "invalid_client" and refused.value.status == 401


def test_an_assertion_by_another_key_is_refused(key, clock):
    with pytest.raises(InvalidClient, match="not signed"):
        check(assertion(ClientKey(kid="k1")), key, clock)
    with pytest.raises(InvalidClient, match="not signed"):
        check(assertion(ClientKey(kid="k2")), key, clock)


def test_an_assertion_is_single_use(key, clock):
    replay = ReplayCache(clock)
    token = assertion(key, jti="once")
    check(token, key, clock, replay)
    with pytest.raises(InvalidClient, match="replayed"):
        check(token, key, clock, replay)


def test_garbage_and_unsupported_algorithms_are_refused(key, clock):
    import jwt as pyjwt

    for bad in ("garbage", "a" * 9000,
                pyjwt.encode({"iss": CLIENT_ID}, "k" * 32, algorithm="HS256")):
        with pytest.raises(InvalidClient):
            check(bad, key, clock)


@pytest_twisted.ensureDeferred
async def test_public_and_confidential_clients_authenticate_by_their_method(key, clock):
    docs = DocumentsServer.start()
    try:
        jwks_uri = docs.put("/jwks.json", {"keys": [key.jwk]})
        confidential = Client(CLIENT_ID, ("https://app.example.com/cb",), "atproto",
                              token_endpoint_auth_method="private_key_jwt", jwks_uri=jwks_uri)
        public = Client(CLIENT_ID, ("https://app.example.com/cb",), "atproto")
        store = ClientStore(reactor, None, allow_local=True, clock=clock)
        replay = ReplayCache(clock)
        form = {"client_assertion_type": [ASSERTION_TYPE], "client_assertion": [assertion(key)]}
        assert await authenticate(store, confidential, form, [ISSUER], clock, replay) == "private_key_jwt"
        assert await authenticate(store, public, {}, [ISSUER], clock, replay) == "none"
        with pytest.raises(InvalidClient, match="none"):
            await authenticate(store, public, form, [ISSUER], clock, replay)
        with pytest.raises(InvalidClient, match="required"):
            await authenticate(store, confidential, {}, [ISSUER], clock, replay)
        with pytest.raises(InvalidClient, match="required"):
            await authenticate(store, confidential, {"client_assertion": [assertion(key)]}, [ISSUER], clock, replay)
        # The client rotates its key: the cached set verifies nothing, so it is fetched again.
        rotated = ClientKey(kid="k2")
        docs.put("/jwks.json", {"keys": [rotated.jwk]})
        form = {"client_assertion_type": [ASSERTION_TYPE], "client_assertion": [assertion(rotated)]}
        assert await authenticate(store, confidential, form, [ISSUER], clock, replay) == "private_key_jwt"
        assert docs.hits["/jwks.json"] == 2
    finally:
        await docs.stop()
