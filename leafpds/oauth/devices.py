"""
The accounts signed in on a browser at the authorization page, for its
account chooser.

The browser holds only a random device id in a cookie (see
:mod:`leafpds.web.authorize`); the server keeps the SHA-256 of that id
with, per account, the full session the sign-in started there.  An
account is offered for a week after it signed in (as the official PDS
asks for a password again after :data:`AUTHENTICATION_MAX_AGE`), and only
while that session lives: signing out everywhere, a new password (which
ends the other sessions) or a takedown take it off every chooser.  The
session's tokens are never handed out: the device id is good for this page
and nothing else.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

from leafpds.timestamps import iso_from_epoch

AUTHENTICATION_MAX_AGE = 7 * 24 * 60 * 60


@dataclass(frozen=True)
class DeviceAccount:
    did: str
    handle: str


def device_hash(device: str) -> bytes:
    return hashlib.sha256(device.encode("utf-8")).digest()


def add_device_account_unit(conn: Any, device: str, did: str, session_id: str, now: float) -> None:
    """Remember that ``did`` signed in on ``device`` with the session ``session_id``."""
    key = device_hash(device)
    conn.execute(
        "INSERT INTO oauth_device_accounts (device_hash, did, session_id, signed_in_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (device_hash, did) DO UPDATE SET session_id = excluded.session_id,"
        " signed_in_at = excluded.signed_in_at",
        (key, did, session_id, iso_from_epoch(now)),
    )
    # This device's dead links go now; everyone's once too old to be offered.
    conn.execute(
        "DELETE FROM oauth_device_accounts WHERE device_hash = ? AND NOT EXISTS"
        " (SELECT 1 FROM refresh_tokens t WHERE t.session_id = oauth_device_accounts.session_id)",
        (key,),
    )
    conn.execute(
        "DELETE FROM oauth_device_accounts WHERE signed_in_at < ?", (iso_from_epoch(now - AUTHENTICATION_MAX_AGE),)
    )


def device_accounts_unit(conn: Any, device: str, now: float) -> list[DeviceAccount]:
    """The active accounts signed in on ``device`` this past week whose session lives, most recent first."""
    return [
        DeviceAccount(did, handle)
        for did, handle in conn.execute(
            "SELECT d.did, a.handle FROM oauth_device_accounts d JOIN accounts a ON a.did = d.did"
            " WHERE d.device_hash = ? AND d.signed_in_at > ? AND a.status = 'active' AND EXISTS"
            " (SELECT 1 FROM refresh_tokens t WHERE t.session_id = d.session_id AND t.did = d.did"
            "  AND t.expires_at > ?)"
            " ORDER BY d.signed_in_at DESC, a.handle",
            (device_hash(device), iso_from_epoch(now - AUTHENTICATION_MAX_AGE), iso_from_epoch(now)),
        )
    ]


def forget_device_account_unit(conn: Any, device: str, did: str) -> str | None:
    """Take ``did`` off ``device``'s chooser; the session its sign-in started there (to end), if any."""
    row = conn.execute(
        "DELETE FROM oauth_device_accounts WHERE device_hash = ? AND did = ? RETURNING session_id",
        (device_hash(device), did),
    ).fetchone()
    return row[0] if row is not None else None
