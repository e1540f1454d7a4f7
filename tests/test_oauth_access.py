"""Checking DPoP-bound access tokens at the resource server (leafpds.oauth.access)."""

import pytest

from leafpds.oauth.access import ResourceRefusal, check_dpop_call
from leafpds.oauth.dpop import DpopVerifier
from leafpds.oauth.jwk import thumbprint
from leafpds.oauth.nonces import DpopNonces
from leafpds.oauth.replay import ReplayCache
from leafpds.oauth.tokens import AccessTokens, Grant
from tests.oauth_keys import NOW, ClientKey, clock_at

URL = "https://pds.test/xrpc/com.atproto.repo.createRecord"


@pytest.fixture
def setup():
    clock = clock_at(NOW)
    nonces = DpopNonces(b"n" * 32, clock)
    revoked = {}
    tokens = AccessTokens(b"a" * 32, "https://pds.test", "did:web:pds.test", clock, revoked)
    key = ClientKey()
    grant = Grant("grt-1", "did:plc:alice", "https://app.example.com/m.json", "none",
                  "atproto repo:app.bsky.feed.post?action=create", thumbprint(key.jwk))
    token, _ = tokens.issue(grant, grant.scope)
    return clock, nonces, DpopVerifier(clock, nonces, ReplayCache(clock)), tokens, key, token, revoked


def call(setup, *, proof_key=None, token=None, nonce=True, **claims):
    clock, nonces, dpop, tokens, key, good_token, _ = setup
    token = token or good_token
    proof = (proof_key or key).proof(
        **{"htm": "POST", "htu": URL, "iat": NOW, "access_token": token,
           "nonce": nonces.next() if nonce else None, **claims})
    return check_dpop_call(tokens, dpop, token, proof, "POST", URL)


def test_a_good_call_gives_the_caller_and_its_permissions(setup):
    caller = call(setup)
    assert caller.access.did == "did:plc:alice"
    assert caller.permissions.allows_repo("app.bsky.feed.post", "create")
    assert not caller.permissions.allows_repo("app.bsky.feed.post", "delete")


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"nonce": False}, "use_dpop_nonce"),
        ({"htu": "https://pds.test/xrpc/com.atproto.repo.deleteRecord"}, "invalid_dpop_proof"),
        ({"access_token": "another-token"}, "invalid_dpop_proof"),
        ({"iat": NOW - 3600}, "invalid_dpop_proof"),
        ({"proof_key": ClientKey()}, "invalid_token"),
        ({"token": "garbage-token"}, "invalid_token"),
    ],
)
def test_refusals_are_401_with_www_authenticate(setup, changes, error):
    with pytest.raises(ResourceRefusal) as refused:
        call(setup, **changes)
    assert refused.value.status == 401 and refused.value.name == error
    header = refused.value.www_authenticate
    assert header.startswith("DPoP ") and f'error="{error}"' in header


def test_a_revoked_or_expired_token_is_refused(setup):
    clock, *_, revoked = setup
    revoked["grt-1"] = NOW + 3600
    with pytest.raises(ResourceRefusal, match="revoked"):
        call(setup)
    revoked.clear()
    clock.advance(3600)
    with pytest.raises(ResourceRefusal, match="expired"):
        call(setup, iat=NOW + 3600)


def test_a_proof_is_used_once(setup):
    call(setup, jti="once")
    with pytest.raises(ResourceRefusal) as refused:
        call(setup, jti="once")
    assert refused.value.name == "invalid_dpop_proof"
