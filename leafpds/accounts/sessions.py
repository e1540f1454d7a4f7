"""
Sessions as the reference PDS issues them.

An access JWT (HS256 with a key derived from the master secret; ``typ``
``at+jwt``; ``scope`` ``com.atproto.access`` — or ``com.atproto.appPass`` /
``com.atproto.appPassPrivileged`` for app-password sessions; ``sub`` the DID,
``aud`` the PDS's DID; ~2 h) and a refresh JWT (``typ`` ``refresh+jwt``,
``scope`` ``com.atproto.refresh``, ``jti`` stored server-side; ~90 days).
Refreshing rotates the refresh token: the old one keeps answering (with the
same successor) for a short grace period, then stops.
"""

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


@dataclass(frozen=True)
class AccessCredentials:
    did: str
    scope: str

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

    def __repr__(self) -> str:
        return f"<TokenIssuer {self.service_did}>"

    def _encode(self, claims: dict[str, Any], typ: str) -> str:
        return jwt.encode(claims, self._secret, algorithm="HS256", headers={"typ": typ})

    def access_token(self, did: str, scope: str = ACCESS) -> str:
        now = int(self.now())
        return self._encode(
            {"scope": scope, "sub": did, "aud": self.service_did, "iat": now, "exp": now + ACCESS_LIFETIME},
            "at+jwt",
        )

    def refresh_token(self, did: str, token_id: str, expires_at: int) -> str:
        return self._encode(
            {
                "scope": REFRESH,
                "sub": did,
                "aud": self.service_did,
                "jti": token_id,
                "iat": int(self.now()),
                "exp": expires_at,
            },
            "refresh+jwt",
        )

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
        claims = self._decode(token, "at+jwt")
        if claims.get("scope") not in ACCESS_SCOPES:
            raise InvalidToken("Bad token scope")
        self._check_expiry(claims)
        return AccessCredentials(claims["sub"], claims["scope"])

    def verify_refresh(self, token: str) -> RefreshCredentials:
        claims = self._decode(token, "refresh+jwt")
        if claims.get("scope") != REFRESH or not isinstance(claims.get("jti"), str):
            raise InvalidToken("Bad token scope")
        self._check_expiry(claims)
        return RefreshCredentials(claims["sub"], claims["jti"])


def new_token_id() -> str:
    return secrets.token_urlsafe(24)


def store_refresh_unit(
    conn: Any, did: str, token_id: str, expires_at: int, app_password_name: str | None
) -> None:
    conn.execute(
        "INSERT INTO refresh_tokens (id, did, app_password_name, expires_at, next_id)"
        " VALUES (?, ?, ?, ?, NULL)",
        (token_id, did, app_password_name, iso_from_epoch(expires_at)),
    )


def rotate_refresh_unit(
    conn: Any, did: str, token_id: str, now: float, successor_id: str
) -> tuple[str, str | None, int]:
    """
    Rotate ``token_id``: returns (the successor's id, its app password name,
    its expiry).  Within the grace period after a rotation the old token gets
    the same successor again, so a client that lost the answer can retry.
    """
    row = conn.execute(
        "SELECT app_password_name, expires_at, next_id FROM refresh_tokens WHERE id = ? AND did = ?",
        (token_id, did),
    ).fetchone()
    if row is None or row[1] <= iso_from_epoch(now):
        raise ExpiredToken("Token has been revoked")
    app_password_name, expires_at, next_id = row
    expiry = int(now) + REFRESH_LIFETIME
    if next_id is not None:
        successor = conn.execute(
            "SELECT expires_at FROM refresh_tokens WHERE id = ?", (next_id,)
        ).fetchone()
        if successor is not None:
            return next_id, app_password_name, expiry
    grace_end = min(expires_at, iso_from_epoch(now + REFRESH_GRACE))
    conn.execute(
        "UPDATE refresh_tokens SET next_id = ?, expires_at = ? WHERE id = ?",
        (successor_id, grace_end, token_id),
    )
    store_refresh_unit(conn, did, successor_id, expiry, app_password_name)
    return successor_id, app_password_name, expiry


def revoke_refresh_unit(conn: Any, did: str, token_id: str) -> None:
    """Revoke a refresh token and every token in its rotation chain."""
    ids = [token_id]
    while ids:
        current = ids.pop()
        row = conn.execute("SELECT next_id FROM refresh_tokens WHERE id = ? AND did = ?", (current, did)).fetchone()
        if row is None:
            continue
        conn.execute("DELETE FROM refresh_tokens WHERE id = ?", (current,))
        if row[0] is not None:
            ids.append(row[0])
