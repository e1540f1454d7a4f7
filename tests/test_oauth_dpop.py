"""DPoP proofs (RFC 9449), nonces, the replay cache and JWK thumbprints (leafpds.oauth)."""

import pytest

from leafpds.oauth.dpop import DpopVerifier, normalize_htu
from leafpds.oauth.errors import InvalidDpopProof, UseDpopNonce
from leafpds.oauth.jwk import BadKey, public_key, thumbprint
from leafpds.oauth.nonces import DpopNonces
from leafpds.oauth.replay import ReplayCache
from tests.oauth_keys import NOW, ClientKey, clock_at

TOKEN_URL = "https://pds.test/oauth/token"


@pytest.fixture
def clock():
    return clock_at(NOW)


@pytest.fixture
def nonces(clock):
    return DpopNonces(b"s" * 32, clock)


@pytest.fixture
def verifier(clock, nonces):
    return DpopVerifier(clock, nonces, ReplayCache(clock))


@pytest.fixture
def key():
    return ClientKey()


def proof(key, nonces, **kw):
    kw.setdefault("iat", NOW)
    return key.proof(nonce=kw.pop("nonce", nonces.next()), **kw)


# RFC 7638 section 3.1's example key and its published thumbprint.
RFC7638_KEY = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
         "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
         "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
         "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}


def test_thumbprint_matches_rfc7638s_example():
    assert thumbprint(RFC7638_KEY) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_ignores_members_outside_the_required_ones(key):
    assert thumbprint({**key.jwk, "kid": "x", "use": "sig"}) == thumbprint(key.jwk)


def test_thumbprint_refuses_a_key_without_its_members():
    with pytest.raises(BadKey):
        thumbprint({"kty": "EC", "crv": "P-256", "x": "abc"})
    with pytest.raises(BadKey):
        thumbprint({"kty": "oct", "k": "abc"})


def test_public_key_refuses_private_keys_other_curves_and_malformed_ones(key):
    assert public_key(key.jwk, "ES256") is not None
    for bad in (
        {**key.jwk, "d": "c2VjcmV0"},
        {**key.jwk, "crv": "secp256k1"},
        {**key.jwk, "alg": "ES384"},
        {**key.jwk, "use": "enc"},
        {**key.jwk, "x": "AAAA"},
        RFC7638_KEY,
        "not a key",
    ):
        with pytest.raises(BadKey):
            public_key(bad, "ES256")
    with pytest.raises(BadKey):
        public_key(key.jwk, "HS256")


def test_a_good_proof_is_accepted_and_bound_to_its_keys_thumbprint(verifier, nonces, key):
    checked = verifier.verify(proof(key, nonces), "POST", TOKEN_URL)
    assert checked.jkt == thumbprint(key.jwk)
    assert checked.htm == "POST" and checked.htu == TOKEN_URL


def test_htu_is_compared_without_query_or_fragment_and_normalized(verifier, nonces, key):
    verifier.verify(proof(key, nonces, htu="HTTPS://PDS.test:443/oauth/token"), "POST",
                    TOKEN_URL + "?x=1#f")
    verifier.verify(proof(key, nonces, htu=TOKEN_URL + "?legacy=1"), "POST", TOKEN_URL)
    assert normalize_htu("http://127.0.0.1:2583") == "http://127.0.0.1:2583/"
    assert normalize_htu("http://[::1]:80/x") == "http://[::1]/x"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"htm": "GET"}, '"htm" mismatch'),
        ({"htm": "post"}, '"htm" mismatch'),
        ({"htu": "https://pds.test/oauth/par"}, '"htu" mismatch'),
        ({"htu": "https://other.test/oauth/token"}, '"htu" mismatch'),
        ({"htu": "http://pds.test/oauth/token"}, '"htu" mismatch'),
        ({"htu": "ftp://pds.test/oauth/token"}, "not a valid URL"),
        ({"htu": "https://user:pw@pds.test/oauth/token"}, "not a valid URL"),
        ({"htu": 7}, '"htu" type'),
        ({"iat": NOW - 10 - 180 - 1}, '"iat" too old'),
        ({"iat": NOW + 181}, '"iat" in the future'),
        ({"typ": "JWT"}, '"typ"'),
        ({"nonce": 5}, '"nonce" type'),
        ({"access_token": "tok"}, '"ath" claim not allowed'),
    ],
)
def test_a_faulty_proof_is_refused_as_invalid_dpop_proof(verifier, nonces, key, change, message):
    with pytest.raises(InvalidDpopProof) as refused:
        verifier.verify(proof(key, nonces, **change), "POST", TOKEN_URL)
    assert message in refused.value.message
    assert refused.value.name == "invalid_dpop_proof" and refused.value.status == 401


def test_missing_garbled_or_oversized_proofs_are_refused(verifier):
    for bad in (None, "", "not.a.jwt", "a" * 9000):
        with pytest.raises(InvalidDpopProof):
            verifier.verify(bad, "POST", TOKEN_URL)


def test_a_proof_signed_by_another_key_than_its_jwk_is_refused(verifier, nonces, key):
    other = ClientKey()
    with pytest.raises(InvalidDpopProof, match="bad signature"):
        verifier.verify(proof(key, nonces, jwk=other.jwk), "POST", TOKEN_URL)


def test_a_proof_with_a_private_jwk_is_refused(verifier, nonces, key):
    private = {**key.jwk, "d": "c2VjcmV0"}
    with pytest.raises(InvalidDpopProof, match="public"):
        verifier.verify(proof(key, nonces, jwk=private), "POST", TOKEN_URL)


def test_a_proof_with_another_algorithm_is_refused(verifier, nonces):
    import jwt as pyjwt

    token = pyjwt.encode({"jti": "j", "htm": "POST", "htu": TOKEN_URL, "iat": NOW, "nonce": nonces.next()},
                         "secret-that-is-long-enough-for-hs256!", algorithm="HS256",
                         headers={"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": "c2VjcmV0"}})
    with pytest.raises(InvalidDpopProof, match="algorithm"):
        verifier.verify(token, "POST", TOKEN_URL)


def test_a_replayed_jti_is_refused(verifier, nonces, key):
    verifier.verify(proof(key, nonces, jti="once"), "POST", TOKEN_URL)
    with pytest.raises(InvalidDpopProof, match="replayed"):
        verifier.verify(proof(key, nonces, jti="once"), "POST", TOKEN_URL)


def test_a_refused_proof_does_not_burn_its_jti(verifier, nonces, key):
    with pytest.raises(InvalidDpopProof):
        verifier.verify(proof(key, nonces, jti="j1", htm="GET"), "POST", TOKEN_URL)
    verifier.verify(proof(key, nonces, jti="j1"), "POST", TOKEN_URL)


def test_a_proof_without_nonce_asks_for_one(verifier, key):
    with pytest.raises(UseDpopNonce) as refused:
        verifier.verify(key.proof(iat=NOW, htu=TOKEN_URL), "POST", TOKEN_URL)
    assert refused.value.name == "use_dpop_nonce" and refused.value.status == 400


def test_a_proof_with_an_unknown_nonce_asks_for_a_fresh_one(verifier, key):
    with pytest.raises(UseDpopNonce, match="mismatch"):
        verifier.verify(key.proof(iat=NOW, nonce="made-up"), "POST", TOKEN_URL)


def test_without_nonces_a_proof_needs_none(clock, key):
    verifier = DpopVerifier(clock, None, ReplayCache(clock))
    verifier.verify(key.proof(iat=NOW), "POST", TOKEN_URL)


def test_ath_must_be_the_presented_tokens_hash(verifier, nonces, key):
    verifier.verify(proof(key, nonces, access_token="tok", htm="GET"), "GET", TOKEN_URL, access_token="tok")
    with pytest.raises(InvalidDpopProof, match='"ath" mismatch'):
        verifier.verify(proof(key, nonces, access_token="other", htm="GET"), "GET", TOKEN_URL,
                        access_token="tok")
    with pytest.raises(InvalidDpopProof, match='"ath" mismatch'):
        verifier.verify(proof(key, nonces, htm="GET"), "GET", TOKEN_URL, access_token="tok")


def test_nonces_rotate_every_minute_and_stay_valid_about_three(clock, nonces):
    given = nonces.next()
    assert nonces.check(given)
    clock.advance(60)
    assert nonces.next() != given
    assert nonces.check(given)
    clock.advance(60)
    assert nonces.check(given)
    clock.advance(60)
    assert not nonces.check(given)


def test_nonces_depend_on_the_secret_and_survive_a_restart(clock, nonces):
    assert DpopNonces(b"s" * 32, clock).check(nonces.next())
    assert not DpopNonces(b"t" * 32, clock).check(nonces.next())
    assert not nonces.check("é")
    with pytest.raises(ValueError):
        DpopNonces(b"short", clock)


def test_replay_cache_forgets_expired_ids_and_is_bounded(clock):
    cache = ReplayCache(clock, capacity=2)
    assert cache.use("a", NOW + 10)
    assert not cache.use("a", NOW + 10)
    assert cache.use("b", NOW + 20)
    # Full of live ids: a new one is refused rather than an old one forgotten.
    assert not cache.use("c", NOW + 10)
    clock.advance(10)
    assert cache.use("c", NOW + 30)
    assert cache.use("a", NOW + 30) is False  # still full (b, c live)
    clock.advance(20)
    assert cache.use("a", NOW + 40) and len(cache) == 1


def test_replay_cache_sweeps_all_expired_ids_when_full(clock):
    cache = ReplayCache(clock, capacity=2)
    assert cache.use("late", NOW + 100)
    assert cache.use("early", NOW + 5)
    clock.advance(6)
    assert cache.use("new", NOW + 50)


def test_a_proof_is_remembered_until_it_could_no_longer_be_accepted(clock, nonces, key):
    verifier = DpopVerifier(clock, None, ReplayCache(clock))
    old = key.proof(iat=NOW, jti="late")
    verifier.verify(old, "POST", TOKEN_URL)
    clock.advance(189)
    with pytest.raises(InvalidDpopProof, match="replayed"):
        verifier.verify(old, "POST", TOKEN_URL)
    clock.advance(2)
    with pytest.raises(InvalidDpopProof, match="too old"):
        verifier.verify(old, "POST", TOKEN_URL)


def test_malformed_compact_serializations_are_refused(verifier, nonces, key):
    good = proof(key, nonces)
    head, body, sig = good.split(".")
    for bad in (
        f"{head}.{body}",                 # two parts
        f"{head}.{body}.{sig}.x",         # four
        f"{head}=.{body}.{sig}",          # padding
        f"{head}.{body}.{sig[:-4]}",      # a signature of the wrong length
        f"{head}.{body}.{'A' * 86}",      # the right length, but not a signature
        f"{head}.WzFd.{sig}",             # claims not an object
        f"{head}.!!!!.{sig}",             # not base64url
        f"{head}.{body}.",                # no signature
    ):
        with pytest.raises(InvalidDpopProof):
            verifier.verify(bad, "POST", TOKEN_URL)


def test_a_proof_with_crit_is_refused(verifier, nonces, key):
    with pytest.raises(InvalidDpopProof, match="crit"):
        verifier.verify(key.sign({"jti": "c", "htm": "POST", "htu": TOKEN_URL, "iat": NOW, "nonce": nonces.next()},
                                 typ="dpop+jwt", jwk=key.jwk, crit=["exp"]), "POST", TOKEN_URL)


def test_public_keys_are_remembered_but_a_changed_key_is_checked_again(key):
    assert public_key(key.jwk, "ES256") is public_key(dict(key.jwk), "ES256")
    with pytest.raises(BadKey):
        public_key({**key.jwk, "x": key.jwk["y"]}, "ES256")
