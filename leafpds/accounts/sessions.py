"""
Sessions as the reference PDS issues them.

An access JWT (HS256 with a key derived from the master secret; ``typ``
``at+jwt``; ``scope`` ``com.atproto.access`` — or ``com.atproto.appPass`` /
``com.atproto.appPassPrivileged`` for app-password sessions; ``sub`` the DID,
``aud`` the PDS's DID; ~2 h) and a refresh JWT (``typ`` ``refresh+jwt``,
``scope`` ``com.atproto.refresh``, ``jti`` stored server-side; ~90 days).
Refreshing rotates the refresh token: the old one keeps answering (with the
same successor) for a short grace period, then stops.

A session (one login) is a chain of refresh tokens sharing a session id,
which its access tokens carry as ``sid``.  Ending a session early
(``deleteSession``, revoking an app password) deletes its refresh tokens and
lists its id as revoked until its last access token would have expired, so
those access tokens are refused at once; the list is kept in memory (checked
on every request without a database hop) and in the database (for restarts).
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import jwt

from leafpds.errors import ExpiredToken, InvalidToken
from leafpds.timestamps import iso_from_epoch

ACCESS = "com.atproto.access"
APP_PASS = "com.atproto.appPass"
APP_PASS_PRIVILEGED = "com.atproto.appPassPrivileged"
REFRESH = "com.atproto.refresh"
ACCESS_SCOPES = (ACCESS, APP_PASS, APP_PASS_PRIVILEGED)

ACCESS_LIFETIME = 2 * 60 * 60
REFRESH_LIFETIME = 90 * 24 * 60 * 60
REFRESH_GRACE = 2 * 60 * 60
# How many verified access tokens TokenIssuer remembers.
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True)
class AccessCredentials:
    did: str
    scope: str
    session_id: str

    @property
    def is_app_password(self) -> bool:
        return self.scope != ACCESS

    @property
    def privileged(self) -> bool:
        return self.scope in (ACCESS, APP_PASS_PRIVILEGED)


@dataclass(frozen=True)
class RefreshCredentials:
    did: str
    token_id: str
    session_id: str


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str


class TokenIssuer:
    """Signs and checks the JWTs; stateless apart from the clock."""

    def __init__(self, secret: bytes, service_did: str, now: Any) -> None:
        self._secret = secret
        self.service_did = service_did
        self.now = now  # a callable returning seconds (reactor.seconds)
        # session id -> when its last access token expires
        self.revoked: dict[str, float] = {}
        # access token -> its credentials and expiry.  A client sends the
        # same token for hours, and checking its signature and claims again
        # (~250 µs in pyjwt) gives the same answer every time; expiry and
        # revocation still are checked on every use.
        self._verified: dict[str, tuple[AccessCredentials, int]] = {}

    def __repr__(self) -> str:
        return f"<TokenIssuer {self.service_did}>"

    def _encode(self, claims: dict[str, Any], typ: str) -> str:
        return jwt.encode(claims, self._secret, algorithm="HS256", headers={"typ": typ})

    def access_token(self, did: str, session_id: str, scope: str = ACCESS) -> str:
        now = int(self.now())
        return self._encode(
            {
                "scope": scope,
                "sub": did,
                "aud": self.service_did,
                "sid": session_id,
                "iat": now,
                "exp": now + ACCESS_LIFETIME,
            },
            "at+jwt",
        )

    def refresh_token(self, did: str, token_id: str, session_id: str, expires_at: int) -> str:
        return self._encode(
            {
                "scope": REFRESH,
                "sub": did,
                "aud": self.service_did,
                "jti": token_id,
                "sid": session_id,
                "iat": int(self.now()),
                "exp": expires_at,
            },
            "refresh+jwt",
        )

    def pair(self, did: str, session: "Session") -> TokenPair:
        return TokenPair(
            self.access_token(did, session.session_id, session.scope),
            self.refresh_token(did, session.token_id, session.session_id, session.expires_at),
        )

    def form_token(self, session_id: str) -> str:
        """A value that ties a web form to the session that was shown it (against CSRF)."""
        mac = hmac.new(self._secret, b"form:" + session_id.encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:32]

    def revoke(self, session_ids: list[str]) -> None:
        """Refuse these sessions' access tokens from now on (call after the revocation commits)."""
        until = self.now() + ACCESS_LIFETIME
        for session_id in session_ids:
            self.revoked[session_id] = until
        self._forget_expired()

    def _forget_expired(self) -> None:
        now = self.now()
        for session_id in [s for s, until in self.revoked.items() if until <= now]:
            del self.revoked[session_id]

    def _decode(self, token: str, typ: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "HS256" or header.get("typ", typ) != typ:
                raise InvalidToken("Bad token type")
            return jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=self.service_did,
                options={"require": ["exp", "iat", "sub", "scope"], "verify_exp": False},
            )
        except jwt.PyJWTError:
            raise InvalidToken("Token could not be verified") from None

    def _check_expiry(self, claims: dict[str, Any]) -> None:
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= self.now():
            raise ExpiredToken("Token has expired")

    def verify_access(self, token: str) -> AccessCredentials:
        verified = self._verified.get(token)
        if verified is None:
            claims = self._decode(token, "at+jwt")
            if claims.get("scope") not in ACCESS_SCOPES or not isinstance(claims.get("sid"), str):
                raise InvalidToken("Bad token scope")
            self._check_expiry(claims)
            verified = (AccessCredentials(claims["sub"], claims["scope"], claims["sid"]), claims["exp"])
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = verified
        credentials, expires = verified
        if expires <= self.now():
            raise ExpiredToken("Token has expired")
        if credentials.session_id in self.revoked:
            raise ExpiredToken("Token has been revoked")
        return credentials

    def verify_refresh(self, token: str) -> RefreshCredentials:
        claims = self._decode(token, "refresh+jwt")
        if claims.get("scope") != REFRESH or not all(
            isinstance(claims.get(name), str) for name in ("jti", "sid")
        ):
            raise InvalidToken("Bad token scope")
        self._check_expiry(claims)
        return RefreshCredentials(claims["sub"], claims["jti"], claims["sid"])


def new_token_id() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Session:
    """A stored refresh token: what a token pair is made from."""

    session_id: str
    token_id: str
    app_password_name: str | None
    privileged: bool
    expires_at: int

    @property
    def scope(self) -> str:
        if self.app_password_name is None:
            return ACCESS
        return APP_PASS_PRIVILEGED if self.privileged else APP_PASS


def start_session_unit(
    conn: Any, did: str, now: float, app_password_name: str | None = None, privileged: bool = False
) -> Session:
    """Store the first refresh token of a new session."""
    session = Session(
        new_token_id(), new_token_id(), app_password_name, privileged, int(now) + REFRESH_LIFETIME
    )
    _store(conn, did, session)
    return session


def _store(conn: Any, did: str, session: Session) -> None:
    conn.execute(
        "INSERT INTO refresh_tokens (id, session_id, did, app_password_name, expires_at, next_id)"
        " VALUES (?, ?, ?, ?, ?, NULL)",
        (session.token_id, session.session_id, did, session.app_password_name,
         iso_from_epoch(session.expires_at)),
    )


def rotate_session_unit(conn: Any, credentials: RefreshCredentials, now: float) -> Session:
    """
    Rotate a refresh token.  Within the grace period after a rotation the old
    token gets the same successor again, so a client that lost the answer can
    retry; after it, or once revoked, the old token is refused.
    """
    row = conn.execute(
        "SELECT t.session_id, t.app_password_name, t.expires_at, t.next_id, p.privileged"
        " FROM refresh_tokens t LEFT JOIN app_passwords p"
        " ON p.did = t.did AND p.name = t.app_password_name"
        " WHERE t.id = ? AND t.did = ?",
        (credentials.token_id, credentials.did),
    ).fetchone()
    if row is None or row[2] <= iso_from_epoch(now):
        raise ExpiredToken("Token has been revoked")
    session_id, app_password_name, expires_at, next_id, privileged = row
    if next_id is not None and not conn.execute(
        "SELECT 1 FROM refresh_tokens WHERE id = ?", (next_id,)
    ).fetchone():
        raise ExpiredToken("Token has been revoked")
    successor = Session(
        session_id, next_id or new_token_id(), app_password_name, bool(privileged),
        int(now) + REFRESH_LIFETIME,
    )
    if next_id is None:
        grace_end = min(expires_at, iso_from_epoch(now + REFRESH_GRACE))
        conn.execute(
            "UPDATE refresh_tokens SET next_id = ?, expires_at = ? WHERE id = ?",
            (successor.token_id, grace_end, credentials.token_id),
        )
        _store(conn, credentials.did, successor)
    return successor


def end_sessions_unit(conn: Any, did: str, session_ids: list[str], now: float) -> None:
    """Delete the sessions' refresh tokens and list them as revoked."""
    until = iso_from_epoch(now + ACCESS_LIFETIME)
    for session_id in session_ids:
        conn.execute("DELETE FROM refresh_tokens WHERE session_id = ? AND did = ?", (session_id, did))
        conn.execute(
            "INSERT INTO revoked_sessions (session_id, expires_at) VALUES (?, ?)"
            " ON CONFLICT (session_id) DO UPDATE SET expires_at = excluded.expires_at",
            (session_id, until),
        )
    conn.execute("DELETE FROM revoked_sessions WHERE expires_at <= ?", (iso_from_epoch(now),))


def end_all_sessions_unit(conn: Any, did: str, now: float) -> list[str]:
    """End every session of the account, app passwords' too; their ids (for :meth:`TokenIssuer.revoke`)."""
    ended = [row[0] for row in conn.execute("SELECT DISTINCT session_id FROM refresh_tokens WHERE did = ?", (did,))]
    end_sessions_unit(conn, did, ended, now)
    return ended


def revoked_sessions(conn: Any, now: float) -> list[str]:
    """The sessions still revoked at ``now`` (loaded at start-up)."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT session_id FROM revoked_sessions WHERE expires_at > ?", (iso_from_epoch(now),)
        )
    ]
