"""
The short codes mailed to an account's address, as the official PDS makes
them: ``XXXXX-XXXXX`` from the base32 alphabet ``[A-Z2-7]`` (50 random bits),
one per (account, purpose) — a new request replaces the previous code — valid
15 minutes, case-insensitive, good for one use.

Unlike the official PDS, which keeps the code itself, leafpds keeps an HMAC
of it (the key derived from the master secret): someone reading the database
or a backup learns no code.  The HMAC is indexed, so ``resetPassword``, which
names no account, finds the account by its code.

The functions ending in ``_unit`` run inside a database transaction
(``db.write``), so using a code and what it allows happen together or not at
all; a later purpose needs one call of each (``issue_unit`` when mailing,
``consume_unit`` when acting).
"""

import hashlib
import hmac
import secrets
from typing import Any

from leafpds.errors import ExpiredToken, InvalidToken
from leafpds.timestamps import epoch_from_iso, iso_from_epoch

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
LIFETIME = 15 * 60  # seconds

CONFIRM_EMAIL = "confirm_email"
UPDATE_EMAIL = "update_email"
RESET_PASSWORD = "reset_password"
DELETE_ACCOUNT = "delete_account"
PLC_OPERATION = "plc_operation"
PURPOSES = frozenset({CONFIRM_EMAIL, UPDATE_EMAIL, RESET_PASSWORD, DELETE_ACCOUNT, PLC_OPERATION})


def new_token() -> str:
    """A fresh code, ``XXXXX-XXXXX``."""
    letters = "".join(secrets.choice(ALPHABET) for _ in range(10))
    return f"{letters[:5]}-{letters[5:]}"


class EmailTokens:
    """Issues and checks codes; holds only the HMAC key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "<EmailTokens>"

    def digest(self, purpose: str, token: str) -> bytes:
        # Codes compare case-insensitively (and a pasted code may carry spaces).
        text = f"{purpose}\0{token.strip().upper()}"
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).digest()

    def issue_unit(self, conn: Any, did: str, purpose: str, now: float) -> str:
        """A new code for (did, purpose), replacing any earlier one; returns the code."""
        assert purpose in PURPOSES, purpose
        token = new_token()
        conn.execute(
            "INSERT INTO email_tokens (did, purpose, token_hash, requested_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (did, purpose) DO UPDATE"
            " SET token_hash = excluded.token_hash, requested_at = excluded.requested_at",
            (did, purpose, self.digest(purpose, token), iso_from_epoch(now)),
        )
        return token

    def check_unit(self, conn: Any, did: str, purpose: str, token: str, now: float) -> None:
        """Raise 400 ``InvalidToken`` or ``ExpiredToken`` unless ``token`` is did's live code."""
        row = conn.execute(
            "SELECT token_hash, requested_at FROM email_tokens WHERE did = ? AND purpose = ?",
            (did, purpose),
        ).fetchone()
        if row is None or not hmac.compare_digest(row[0], self.digest(purpose, token)):
            raise InvalidToken("Token is invalid")
        _check_age(row[1], now)

    def consume_unit(self, conn: Any, did: str, purpose: str, token: str, now: float) -> None:
        """Check the code and use it up (in the caller's transaction)."""
        self.check_unit(conn, did, purpose, token, now)
        conn.execute("DELETE FROM email_tokens WHERE did = ? AND purpose = ?", (did, purpose))

    def find_did_unit(self, conn: Any, purpose: str, token: str, now: float) -> str:
        """The account whose live code for ``purpose`` this is (resetPassword names none)."""
        row = conn.execute(
            "SELECT did, requested_at FROM email_tokens WHERE purpose = ? AND token_hash = ?",
            (purpose, self.digest(purpose, token)),
        ).fetchone()
        if row is None:
            raise InvalidToken("Token is invalid")
        _check_age(row[1], now)
        return row[0]


def forget_all_unit(conn: Any, did: str) -> None:
    """Drop every code of an account (its address changed: they were sent to the old one)."""
    conn.execute("DELETE FROM email_tokens WHERE did = ?", (did,))


def _check_age(requested_at: str, now: float) -> None:
    if now - epoch_from_iso(requested_at) >= LIFETIME:
        raise ExpiredToken("Token is expired")
