"""
Authorization codes, grants and tokens (RFC 6749, RFC 7636, RFC 9449), as
the official PDS hands them out.

* A **code** (5 minutes, single use) stands for what the person consented
  to: account, client, scope, redirect URI, the PKCE challenge and, when
  the request was pushed with a DPoP proof, that key.  Exchanging it needs
  the same client, redirect URI and key and the PKCE verifier; any wrong
  presentation spends it, and presenting it again after it gave tokens
  revokes the grant it gave (RFC 6749 section 4.1.2).
* A **grant** is what the exchange creates: a family of refresh tokens
  bound to one DPoP key and one client authentication method.  A refresh
  always rotates; presenting a rotated refresh token revokes the whole
  family (a stolen token and its thief's successor both die).  Refresh
  tokens live 2 weeks (public clients) or 3 months (confidential) since
  the last refresh.
* **Access tokens** are JWTs (HS256 with a secret of their own) that carry
  the grant's id as ``sid``, its scope and ``cnf.jkt``: checking one needs
  no database hop; a revoked grant's id is listed in ``revoked_sessions``
  (and the in-memory set the session tokens use) until its last access
  token expires.

Codes and refresh tokens are random; only their SHA-256 is stored.  The
``*_unit`` functions run in one database transaction each.  Those that
must both write and refuse (a replay revokes, then refuses) *return* a
:class:`Refusal` instead of raising, so that the revocation commits; callers
tell the in-memory revoked set, then raise its error.
"""

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from twisted.internet.interfaces import IReactorTime

from leafpds.oauth.errors import InvalidGrant, InvalidScope, InvalidToken, OAuthError
from leafpds.oauth.scopes import split_scope
from leafpds.timestamps import iso_from_epoch

CODE_LIFETIME = 5 * 60
ACCESS_LIFETIME = 60 * 60
REFRESH_LIFETIME_PUBLIC = 14 * 24 * 60 * 60
REFRESH_LIFETIME_CONFIDENTIAL = 90 * 24 * 60 * 60
# RFC 7636 section 4.1: 43 to 128 unreserved characters.
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
VERIFIED_CACHE_SIZE = 4096


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _new(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def pkce_matches(verifier: str, challenge: str) -> bool:
    """Whether ``verifier`` is the S256 preimage of ``challenge`` (RFC 7636 section 4.6)."""
    if not _VERIFIER.fullmatch(verifier):
        return False
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return hmac.compare_digest(computed, challenge)


def refresh_lifetime(client_auth: str) -> int:
    return REFRESH_LIFETIME_CONFIDENTIAL if client_auth == "private_key_jwt" else REFRESH_LIFETIME_PUBLIC


@dataclass(frozen=True)
class Consent:
    """What the person consented to: the content of a code."""

    did: str
    client_id: str
    scope: str
    redirect_uri: str
    code_challenge: str
    dpop_jkt: str | None = None


@dataclass(frozen=True)
class Grant:
    id: str
    did: str
    client_id: str
    client_auth: str
    scope: str
    dpop_jkt: str


@dataclass(frozen=True)
class Issued:
    """A grant and its new refresh token (the plain token exists only here)."""

    grant: Grant
    refresh_token: str
    # The scope of the access token to issue (a refresh may narrow it).
    scope: str


@dataclass(frozen=True)
class Refusal:
    error: OAuthError
    # The grant a replay revoked, if any.
    revoked: str | None = None


def issue_code_unit(conn: Any, consent: Consent, now: float) -> str:
    """A new code for ``consent``."""
    code = _new("cod-")
    conn.execute(
        "INSERT INTO oauth_codes (code_hash, did, client_id, scope, redirect_uri, code_challenge,"
        " dpop_jkt, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (token_hash(code), consent.did, consent.client_id, consent.scope, consent.redirect_uri,
         consent.code_challenge, consent.dpop_jkt, iso_from_epoch(now + CODE_LIFETIME)),
    )
    # Codes are short-lived: the spent and expired ones of a day ago go.
    conn.execute("DELETE FROM oauth_codes WHERE expires_at < ?", (iso_from_epoch(now - 24 * 60 * 60),))
    return code


def exchange_code_unit(
    conn: Any, code: str, client_id: str, client_auth: str, redirect_uri: str | None,
    code_verifier: str | None, dpop_jkt: str, now: float,
) -> Issued | Refusal:
    """Trade ``code`` for a new grant, or the refusal (see the module's note)."""
    row = conn.execute(
        "SELECT did, client_id, scope, redirect_uri, code_challenge, dpop_jkt, expires_at, used, grant_id"
        " FROM oauth_codes WHERE code_hash = ?",
        (token_hash(code),),
    ).fetchone()
    if row is None:
        return Refusal(InvalidGrant("Invalid code"))
    did, code_client, scope, code_redirect, challenge, code_jkt, expires_at, used, grant_id = row
    if used:
        if grant_id is not None:
            revoke_grant_unit(conn, grant_id, now)
        return Refusal(InvalidGrant("Code replayed"), grant_id)
    conn.execute("UPDATE oauth_codes SET used = 1 WHERE code_hash = ?", (token_hash(code),))
    if expires_at <= iso_from_epoch(now):
        return Refusal(InvalidGrant("Code expired"))
    if code_client != client_id:
        return Refusal(InvalidGrant("Code was issued to another client"))
    if redirect_uri != code_redirect:
        return Refusal(InvalidGrant("redirect_uri does not match the authorization request"))
    if code_verifier is None or not pkce_matches(code_verifier, challenge):
        return Refusal(InvalidGrant("Invalid PKCE code_verifier"))
    if code_jkt is not None and code_jkt != dpop_jkt:
        return Refusal(InvalidGrant("DPoP key does not match the authorization request's"))
    grant = Grant(_new("grt-"), did, client_id, client_auth, scope, dpop_jkt)
    conn.execute(
        "INSERT INTO oauth_grants (id, did, client_id, client_auth, scope, dpop_jkt, created_at, refreshed_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (grant.id, did, client_id, client_auth, scope, dpop_jkt, iso_from_epoch(now), iso_from_epoch(now)),
    )
    conn.execute("UPDATE oauth_codes SET grant_id = ? WHERE code_hash = ?", (grant.id, token_hash(code)))
    return Issued(grant, _store_refresh_token(conn, grant, now), scope)


def _store_refresh_token(conn: Any, grant: Grant, now: float) -> str:
    token = _new("ref-")
    conn.execute(
        "INSERT INTO oauth_refresh_tokens (token_hash, grant_id, expires_at) VALUES (?, ?, ?)",
        (token_hash(token), grant.id, iso_from_epoch(now + refresh_lifetime(grant.client_auth))),
    )
    return token


def refresh_unit(
    conn: Any, refresh_token: str, client_id: str, client_auth: str, dpop_jkt: str,
    scope: str | None, now: float,
) -> Issued | Refusal:
    """Rotate ``refresh_token``, or the refusal (see the module's note)."""
    row = conn.execute(
        "SELECT t.expires_at, t.rotated, g.id, g.did, g.client_id, g.client_auth, g.scope, g.dpop_jkt"
        " FROM oauth_refresh_tokens t JOIN oauth_grants g ON g.id = t.grant_id WHERE t.token_hash = ?",
        (token_hash(refresh_token),),
    ).fetchone()
    if row is None:
        return Refusal(InvalidGrant("Invalid refresh token"))
    expires_at, rotated, *fields = row
    grant = Grant(*fields)
    if rotated:
        revoke_grant_unit(conn, grant.id, now)
        return Refusal(InvalidGrant("Refresh token replayed"), grant.id)
    if expires_at <= iso_from_epoch(now):
        revoke_grant_unit(conn, grant.id, now)
        return Refusal(InvalidGrant("Refresh token expired"), grant.id)
    if grant.client_id != client_id:
        return Refusal(InvalidGrant("Refresh token was issued to another client"))
    if grant.client_auth != client_auth:
        return Refusal(InvalidGrant("Client authentication method changed"))
    if grant.dpop_jkt != dpop_jkt:
        return Refusal(InvalidGrant("Refresh token is bound to another DPoP key"))
    granted = split_scope(grant.scope)
    if scope is not None:
        requested = split_scope(scope)
        if not set(requested) <= set(granted):
            return Refusal(InvalidScope("Refresh cannot widen the granted scope"))
        granted = [s for s in granted if s in requested]
    conn.execute("UPDATE oauth_refresh_tokens SET rotated = 1 WHERE token_hash = ?", (token_hash(refresh_token),))
    conn.execute("UPDATE oauth_grants SET refreshed_at = ? WHERE id = ?", (iso_from_epoch(now), grant.id))
    return Issued(grant, _store_refresh_token(conn, grant, now), " ".join(granted))


def revoke_grant_unit(conn: Any, grant_id: str, now: float) -> None:
    """
    End a grant: its refresh tokens go, and its access tokens are refused
    until the last would have expired (also call the in-memory revocation,
    ``TokenIssuer.revoke``, once this commits).
    """
    conn.execute("DELETE FROM oauth_grants WHERE id = ?", (grant_id,))
    conn.execute(
        "INSERT INTO revoked_sessions (session_id, expires_at) VALUES (?, ?)"
        " ON CONFLICT (session_id) DO UPDATE SET expires_at = excluded.expires_at",
        (grant_id, iso_from_epoch(now + ACCESS_LIFETIME)),
    )


def revoke_token_unit(
    conn: Any, token: str, client_id: str, now: float, access_grant_id: str | None = None
) -> str | None:
    """
    RFC 7009: revoke the grant of a refresh token, or of an access token
    whose grant id the caller read from it (``access_grant_id``), if the
    grant is ``client_id``'s; the id revoked, or None for an unknown token
    or another client's (neither is an error).
    """
    row = conn.execute(
        "SELECT grant_id FROM oauth_refresh_tokens WHERE token_hash = ?", (token_hash(token),)
    ).fetchone()
    grant_id = row[0] if row is not None else access_grant_id
    if grant_id is None:
        return None
    if not conn.execute(
        "SELECT 1 FROM oauth_grants WHERE id = ? AND client_id = ?", (grant_id, client_id)
    ).fetchone():
        return None
    revoke_grant_unit(conn, grant_id, now)
    return grant_id


@dataclass(frozen=True)
class GrantSummary:
    """A grant as the account page lists it."""

    id: str
    client_id: str
    scope: str
    created_at: str
    refreshed_at: str


def grants_of_unit(conn: Any, did: str) -> list[GrantSummary]:
    return [
        GrantSummary(*row)
        for row in conn.execute(
            "SELECT id, client_id, scope, created_at, refreshed_at FROM oauth_grants WHERE did = ?"
            " ORDER BY created_at DESC, id",
            (did,),
        )
    ]


def revoke_account_grant_unit(conn: Any, did: str, grant_id: str, now: float) -> bool:
    """
    The account page's revoke: only the account's own grant; whether there
    was one.  A consent remembered for its client is forgotten too: the app
    has to ask again, never to come back unseen (``prompt=none``).
    """
    row = conn.execute("SELECT client_id FROM oauth_grants WHERE id = ? AND did = ?", (grant_id, did)).fetchone()
    if row is None:
        return False
    revoke_grant_unit(conn, grant_id, now)
    conn.execute("DELETE FROM oauth_consents WHERE did = ? AND client_id = ?", (did, row[0]))
    return True


def revoke_account_grants_unit(conn: Any, did: str, now: float) -> list[str]:
    """
    End every grant of the account (a takedown, its deletion, an operator
    setting its password): the ids revoked, for ``TokenIssuer.revoke``.
    Remembered consents stay (they are gone with the account if it goes).
    """
    grant_ids = [row[0] for row in conn.execute("SELECT id FROM oauth_grants WHERE did = ?", (did,))]
    for grant_id in grant_ids:
        revoke_grant_unit(conn, grant_id, now)
    return grant_ids


def remember_consent_unit(conn: Any, did: str, client_id: str, scope: str, now: float) -> None:
    """Remember that the account consented to ``scope`` for the client, besides what it consented to before."""
    row = conn.execute(
        "SELECT scope FROM oauth_consents WHERE did = ? AND client_id = ?", (did, client_id)
    ).fetchone()
    if row is not None:
        scope = " ".join(split_scope(row[0] + " " + scope))
    conn.execute(
        "INSERT INTO oauth_consents (did, client_id, scope, consented_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (did, client_id) DO UPDATE SET scope = excluded.scope, consented_at = excluded.consented_at",
        (did, client_id, scope, iso_from_epoch(now)),
    )


def consented_unit(conn: Any, did: str, client_id: str, scope: str) -> bool:
    """Whether the account already consented to (at least) ``scope`` for the client."""
    row = conn.execute(
        "SELECT scope FROM oauth_consents WHERE did = ? AND client_id = ?", (did, client_id)
    ).fetchone()
    return row is not None and set(split_scope(scope)) <= set(split_scope(row[0]))


@dataclass(frozen=True)
class OAuthAccess:
    """A verified OAuth access token."""

    did: str
    scope: str
    client_id: str
    grant_id: str
    dpop_jkt: str
    expires_at: int


class AccessTokens:
    """
    Signs and checks OAuth access tokens: HS256 with a secret of their own
    (so that neither kind of token passes for the other), ``typ`` ``at+jwt``.
    ``revoked`` maps revoked grant ids to when their tokens expire anyway
    (``TokenIssuer.revoked``, shared with session tokens).
    """

    def __init__(self, secret: bytes, issuer: str, audience: str, clock: IReactorTime,
                 revoked: Mapping[str, float]) -> None:
        if len(secret) < 32:
            raise ValueError("the access token secret needs at least 32 bytes")
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self._clock = clock
        self._revoked = revoked
        # token -> its verified content.  A client sends the same token for
        # the hour it lives, and checking it again (~200 µs in pyjwt) gives
        # the same answer; expiry and revocation are still checked each time.
        self._verified: dict[str, OAuthAccess] = {}

    def __repr__(self) -> str:
        return f"<AccessTokens {self.issuer}>"

    def issue(self, grant: Grant, scope: str) -> tuple[str, int]:
        """An access token for ``grant`` with ``scope``, and its lifetime in seconds."""
        now = int(self._clock.seconds())
        claims = {
            "iss": self.issuer, "aud": self.audience, "sub": grant.did, "scope": scope,
            "client_id": grant.client_id, "cnf": {"jkt": grant.dpop_jkt}, "sid": grant.id,
            "jti": secrets.token_urlsafe(16), "iat": now, "exp": now + ACCESS_LIFETIME,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256", headers={"typ": "at+jwt"}), ACCESS_LIFETIME

    def _claims(self, token: str) -> dict[str, Any]:
        """The claims of one of our access tokens, expired or not; :class:`InvalidToken` otherwise."""
        try:
            if jwt.get_unverified_header(token).get("typ") != "at+jwt":
                raise InvalidToken("Not an access token")
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], audience=self.audience, issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "scope", "sid", "cnf"], "verify_exp": False,
                         "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise InvalidToken("Invalid access token") from None
        cnf = claims["cnf"]
        if not isinstance(cnf, dict) or not isinstance(cnf.get("jkt"), str) or not isinstance(claims["sid"], str):
            raise InvalidToken("Access token is not DPoP-bound")
        return claims

    def grant_of(self, token: str) -> tuple[str, str] | None:
        """The (grant id, client id) an access token of ours names, live or not: for revocation."""
        try:
            claims = self._claims(token)
        except InvalidToken:
            return None
        return claims["sid"], str(claims.get("client_id", ""))

    def verify(self, token: str) -> OAuthAccess:
        """The token's content; :class:`InvalidToken` if it is not a live one of ours."""
        access = self._verified.get(token)
        if access is None:
            claims = self._claims(token)
            access = OAuthAccess(claims["sub"], claims["scope"], str(claims.get("client_id", "")), claims["sid"],
                                 claims["cnf"]["jkt"], claims["exp"])
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = access
        if access.expires_at <= self._clock.seconds():
            raise InvalidToken("Access token expired")
        if access.grant_id in self._revoked:
            raise InvalidToken("Access token revoked")
        return access
