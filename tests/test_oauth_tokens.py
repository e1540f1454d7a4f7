"""OAuth codes, grants and tokens (leafpds.oauth.tokens) on a real migrated SQLite database."""

import base64
import hashlib

import pytest

from leafpds.db import migrations
from leafpds.db.pool import connect
from leafpds.oauth.errors import InvalidGrant, InvalidScope, InvalidToken, OAuthError
from leafpds.oauth.tokens import (
    ACCESS_LIFETIME,
    CODE_LIFETIME,
    REFRESH_LIFETIME_CONFIDENTIAL,
    REFRESH_LIFETIME_PUBLIC,
    AccessTokens,
    Consent,
    Issued,
    Refusal,
    consented_unit,
    exchange_code_unit,
    grants_of_unit,
    issue_code_unit,
    pkce_matches,
    refresh_unit,
    remember_consent_unit,
    revoke_account_grant_unit,
    revoke_token_unit,
    token_hash,
)
from tests.oauth_keys import NOW, clock_at

DID = "did:plc:alice234567890abcdefghij"
CLIENT = "https://app.example.com/client-metadata.json"
REDIRECT = "https://app.example.com/callback"
VERIFIER = "correct-horse-battery-staple-verifier-0123456789"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
JKT = "key-thumbprint-1"


class Db:
    """Runs units as the pool does: one transaction each, committed even when a unit returns a refusal."""

    def __init__(self, path):
        self.conn = connect(path)
        migrations.migrate(self.conn)
        self.conn.execute("INSERT INTO accounts (did, handle, created_at) VALUES (?, 'alice.test', '2025-01-01')",
                          (DID,))

    def __call__(self, unit, *args):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = unit(self.conn, *args)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    def count(self, table):
        return self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
def db(tmp_path):
    return Db(tmp_path / "db.sqlite")


def code(db, jkt=None, now=NOW):
    return db(issue_code_unit, Consent(DID, CLIENT, "atproto transition:generic", REDIRECT, CHALLENGE, jkt), now)


def exchange(db, the_code, *, client=CLIENT, auth="none", redirect=REDIRECT, verifier=VERIFIER, jkt=JKT, now=NOW):
    return db(exchange_code_unit, the_code, client, auth, redirect, verifier, jkt, now)


def refresh(db, token, *, client=CLIENT, auth="none", jkt=JKT, scope=None, now=NOW):
    return db(refresh_unit, token, client, auth, jkt, scope, now)


def refused(result, kind=InvalidGrant, reason="", revoked=None):
    assert isinstance(result, Refusal), result
    assert isinstance(result.error, kind), result.error
    assert reason in result.error.message
    assert result.revoked == revoked
    return result.error


def test_pkce_s256():
    assert pkce_matches(VERIFIER, CHALLENGE)
    assert not pkce_matches(VERIFIER + "x", CHALLENGE)
    assert not pkce_matches("short", CHALLENGE)
    assert not pkce_matches("é" * 50, CHALLENGE)


def test_only_hashes_are_stored(db):
    the_code = code(db)
    issued = exchange(db, the_code)
    assert the_code.startswith("cod-") and issued.refresh_token.startswith("ref-")
    dump = "\n".join(db.conn.iterdump())
    assert the_code not in dump and issued.refresh_token not in dump
    assert db.conn.execute("SELECT 1 FROM oauth_refresh_tokens WHERE token_hash = ?",
                           (token_hash(issued.refresh_token),)).fetchone()


def test_a_code_is_exchanged_for_a_grant_bound_to_the_dpop_key(db):
    issued = exchange(db, code(db))
    assert isinstance(issued, Issued)
    grant = issued.grant
    assert (grant.did, grant.client_id, grant.client_auth, grant.dpop_jkt) == (DID, CLIENT, "none", JKT)
    assert issued.scope == grant.scope == "atproto transition:generic"
    [listed] = db(grants_of_unit, DID)
    assert listed.id == grant.id and listed.client_id == CLIENT


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"client": "https://evil.example.com/client-metadata.json"}, "another client"),
        ({"redirect": "https://app.example.com/other"}, "redirect_uri"),
        ({"redirect": None}, "redirect_uri"),
        ({"verifier": "wrong-verifier-wrong-verifier-wrong-verifier-00"}, "PKCE"),
        ({"verifier": None}, "PKCE"),
        ({"now": NOW + CODE_LIFETIME}, "expired"),
    ],
)
def test_a_code_presented_wrongly_is_refused_and_spent(db, changes, reason):
    the_code = code(db)
    refused(exchange(db, the_code, **changes), InvalidGrant, reason)
    refused(exchange(db, the_code), InvalidGrant, "replayed")
    assert db.count("oauth_grants") == 0


def test_a_code_bound_at_par_needs_the_same_dpop_key(db):
    the_code = code(db, jkt="par-key")
    refused(exchange(db, the_code, jkt="another-key"), InvalidGrant, "DPoP key")
    assert isinstance(exchange(db, code(db, jkt="par-key"), jkt="par-key"), Issued)


def test_unknown_codes_are_refused(db):
    refused(exchange(db, "cod-made-up"), InvalidGrant, "Invalid code")


def test_a_replayed_code_revokes_the_grant_it_gave(db):
    the_code = code(db)
    issued = exchange(db, the_code)
    result = refused(exchange(db, the_code), InvalidGrant, "replayed", revoked=issued.grant.id)
    assert result.name == "invalid_grant" and result.status == 400
    assert db.count("oauth_grants") == 0 and db.count("oauth_refresh_tokens") == 0
    refused(refresh(db, issued.refresh_token), InvalidGrant, "Invalid refresh token")
    assert db.conn.execute("SELECT 1 FROM revoked_sessions WHERE session_id = ?", (issued.grant.id,)).fetchone()


def test_refresh_always_rotates_and_a_replayed_token_kills_the_family(db):
    first = exchange(db, code(db))
    second = refresh(db, first.refresh_token, now=NOW + 10)
    assert isinstance(second, Issued) and second.refresh_token != first.refresh_token
    assert second.grant.id == first.grant.id
    third = refresh(db, second.refresh_token, now=NOW + 20)
    assert isinstance(third, Issued)
    refused(refresh(db, first.refresh_token, now=NOW + 30), InvalidGrant, "replayed", revoked=first.grant.id)
    # The thief's (or the owner's) newest token died with the family.
    refused(refresh(db, third.refresh_token, now=NOW + 40), InvalidGrant, "Invalid refresh token")
    assert db.count("oauth_grants") == 0


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"client": "https://evil.example.com/client-metadata.json"}, "another client"),
        ({"jkt": "another-key"}, "DPoP key"),
        ({"auth": "private_key_jwt"}, "authentication method"),
    ],
)
def test_refresh_needs_the_same_client_key_and_authentication(db, changes, reason):
    issued = exchange(db, code(db))
    refused(refresh(db, issued.refresh_token, **changes), InvalidGrant, reason)
    # A refusal that is not a replay leaves the token usable.
    assert isinstance(refresh(db, issued.refresh_token), Issued)


def test_refresh_may_narrow_the_scope_but_never_widen_it(db):
    issued = exchange(db, code(db))
    narrowed = refresh(db, issued.refresh_token, scope="atproto")
    assert narrowed.scope == "atproto" and narrowed.grant.scope == "atproto transition:generic"
    result = refused(refresh(db, narrowed.refresh_token, scope="atproto transition:email"), InvalidScope, "widen")
    assert result.name == "invalid_scope"


def test_refresh_tokens_expire_after_their_idle_lifetime_public_shorter(db):
    public = exchange(db, code(db))
    assert isinstance(refresh(db, public.refresh_token, now=NOW + REFRESH_LIFETIME_PUBLIC - 1), Issued)
    later = refresh(db, public.refresh_token, now=NOW + 1)  # replay of the rotated one
    refused(later, InvalidGrant, "replayed", revoked=public.grant.id)
    again = exchange(db, code(db))
    refused(refresh(db, again.refresh_token, now=NOW + REFRESH_LIFETIME_PUBLIC), InvalidGrant, "expired",
            revoked=again.grant.id)
    confidential = exchange(db, code(db), auth="private_key_jwt")
    assert isinstance(refresh(db, confidential.refresh_token, auth="private_key_jwt",
                              now=NOW + REFRESH_LIFETIME_PUBLIC + 1), Issued)
    assert REFRESH_LIFETIME_CONFIDENTIAL > REFRESH_LIFETIME_PUBLIC


def test_revoking_a_refresh_token_or_an_access_tokens_grant(db):
    issued = exchange(db, code(db))
    assert db(revoke_token_unit, issued.refresh_token, "https://evil.example.com/m.json", NOW) is None
    assert db(revoke_token_unit, issued.refresh_token, CLIENT, NOW) == issued.grant.id
    assert db(revoke_token_unit, issued.refresh_token, CLIENT, NOW) is None  # unknown now: not an error
    other = exchange(db, code(db))
    assert db(revoke_token_unit, "an-access-token", CLIENT, NOW, other.grant.id) == other.grant.id
    assert db(revoke_token_unit, "garbage", CLIENT, NOW) is None
    assert db.count("oauth_grants") == 0


def test_the_account_page_revokes_only_its_own_grants(db):
    issued = exchange(db, code(db))
    db(remember_consent_unit, DID, CLIENT, "atproto", NOW)
    assert not db(revoke_account_grant_unit, "did:plc:someoneelse", issued.grant.id, NOW)
    assert db(consented_unit, DID, CLIENT, "atproto")
    assert db(revoke_account_grant_unit, DID, issued.grant.id, NOW)
    assert db(grants_of_unit, DID) == []
    # The app must ask again: its remembered consent went with the grant.
    assert not db(consented_unit, DID, CLIENT, "atproto")


def test_deleting_the_account_deletes_its_grants_and_codes(db):
    exchange(db, code(db))
    code(db)
    db.conn.execute("DELETE FROM accounts WHERE did = ?", (DID,))
    assert db.count("oauth_grants") == db.count("oauth_codes") == db.count("oauth_refresh_tokens") == 0


def test_remembered_consent_covers_the_same_or_a_smaller_scope(db):
    assert not db(consented_unit, DID, CLIENT, "atproto")
    db(remember_consent_unit, DID, CLIENT, "atproto transition:generic", NOW)
    assert db(consented_unit, DID, CLIENT, "atproto")
    assert db(consented_unit, DID, CLIENT, "transition:generic atproto")
    assert not db(consented_unit, DID, CLIENT, "atproto transition:email")
    assert not db(consented_unit, DID, "https://other.example.com/m.json", "atproto")
    # A later, narrower consent keeps what was consented to before.
    db(remember_consent_unit, DID, CLIENT, "atproto transition:email", NOW)
    assert db(consented_unit, DID, CLIENT, "atproto transition:generic transition:email")


@pytest.fixture
def clock():
    return clock_at(NOW)


def test_access_tokens_carry_the_grant_and_are_checked_without_the_database(db, clock):
    revoked = {}
    tokens = AccessTokens(b"a" * 32, "https://pds.test", "did:web:pds.test", clock, revoked)
    issued = exchange(db, code(db))
    token, lifetime = tokens.issue(issued.grant, issued.scope)
    assert lifetime == ACCESS_LIFETIME
    access = tokens.verify(token)
    assert (access.did, access.scope, access.grant_id, access.dpop_jkt) == (
        DID, "atproto transition:generic", issued.grant.id, JKT)
    revoked[issued.grant.id] = NOW + ACCESS_LIFETIME
    with pytest.raises(InvalidToken, match="revoked"):
        tokens.verify(token)
    del revoked[issued.grant.id]
    clock.advance(ACCESS_LIFETIME)
    with pytest.raises(InvalidToken, match="expired") as refusal:
        tokens.verify(token)
    assert refusal.value.name == "invalid_token" and refusal.value.status == 401


def test_access_tokens_of_another_secret_issuer_or_kind_are_refused(db, clock):
    import jwt as pyjwt

    tokens = AccessTokens(b"a" * 32, "https://pds.test", "did:web:pds.test", clock, {})
    grant = exchange(db, code(db)).grant
    for other in (
        AccessTokens(b"b" * 32, "https://pds.test", "did:web:pds.test", clock, {}),
        AccessTokens(b"a" * 32, "https://other.test", "did:web:pds.test", clock, {}),
        AccessTokens(b"a" * 32, "https://pds.test", "did:web:other.test", clock, {}),
    ):
        with pytest.raises(InvalidToken):
            tokens.verify(other.issue(grant, "atproto")[0])
    # A session-style token (no cnf) signed with the same secret is not an OAuth token.
    session_like = pyjwt.encode({"iss": "https://pds.test", "aud": "did:web:pds.test", "sub": DID, "scope": "atproto",
                                 "sid": "s", "iat": int(NOW), "exp": int(NOW) + 60}, b"a" * 32, algorithm="HS256",
                                headers={"typ": "at+jwt"})
    for bad in (session_like, "garbage"):
        with pytest.raises(InvalidToken):
            tokens.verify(bad)
    with pytest.raises(ValueError):
        AccessTokens(b"short", "https://pds.test", "did:web:pds.test", clock, {})


def test_refusals_are_oauth_errors_with_rfc_names(db):
    result = exchange(db, "cod-nothing").error
    assert isinstance(result, OAuthError) and result.to_oauth_json() == {
        "error": "invalid_grant", "error_description": "Invalid code"}
