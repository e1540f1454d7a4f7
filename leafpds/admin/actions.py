"""
The admin's changes to accounts, each with the work it needs outside the
database transaction: ending sessions' access tokens, forgetting cached
records, keys and repo heads, deleting blob files, waking firehose
subscribers.  The units themselves are in this module's siblings or below.
"""

from typing import TYPE_CHECKING, Any

from twisted.internet.threads import deferToThread

from leafpds import crypto
from leafpds.accounts import sessions
from leafpds.accounts.accounts import check_email, check_password
from leafpds.accounts.passwords import hash_password
from leafpds.admin import takedowns
from leafpds.errors import InvalidRequest
from leafpds.ipld.cid import CID
from leafpds.oauth.tokens import revoke_account_grants_unit
from leafpds.repo import events
from leafpds.timestamps import iso_from_epoch

if TYPE_CHECKING:
    from leafpds.app import AppContext


async def update_subject_status(
    app: "AppContext", subject: takedowns.Subject, applied: bool, ref: str | None
) -> None:
    """Apply or reverse a takedown (see :mod:`leafpds.admin.takedowns`)."""
    change = await app.db.write(takedowns.update_unit, subject, applied, ref, app.reactor.seconds())
    app.tokens.revoke(change.ended_sessions)
    if subject.kind == takedowns.REPO_REF:
        app.record_cache.forget_repo(subject.did)
    elif subject.kind == takedowns.STRONG_REF:
        app.record_cache.forget([(subject.did, subject.collection, subject.rkey)])
    app.transactor.notify(change.events)


async def update_password(app: "AppContext", did: str, password: str) -> None:
    """
    Set an account's password and end every session it has, app passwords'
    too, as the official PDS revokes all the account's refresh tokens.
    """
    check_password(password)
    await app.db.read(_existing, did)
    password_hash = await deferToThread(hash_password, password)
    ended = await app.db.write(_set_password_unit, did, password_hash, app.reactor.seconds())
    app.tokens.revoke(ended)


def _existing(conn: Any, did: str) -> None:
    if conn.execute("SELECT 1 FROM accounts WHERE did = ?", (did,)).fetchone() is None:
        raise InvalidRequest(f"Account not found: {did}")


def _set_password_unit(conn: Any, did: str, password_hash: bytes, now: float) -> list[str]:
    _existing(conn, did)
    conn.execute("UPDATE accounts SET password_hash = ? WHERE did = ?", (password_hash, did))
    return _end_all_sessions(conn, did, now)


def _end_all_sessions(conn: Any, did: str, now: float) -> list[str]:
    """End the account's sessions (app passwords' too) and its apps' OAuth grants; the ids, for TokenIssuer.revoke."""
    return sessions.end_all_sessions_unit(conn, did, now) + revoke_account_grants_unit(conn, did, now)


async def update_email(app: "AppContext", account: str, email: str) -> None:
    """Change the email of the account named by DID or handle."""
    email = check_email(email)
    await app.db.write(_update_email_unit, account, email)


def _update_email_unit(conn: Any, account: str, email: str) -> None:
    # Named by DID or by handle (handles are stored lower-cased).
    column, value = ("did", account) if account.startswith("did:") else ("handle", account.lower())
    row = conn.execute(f"SELECT did, email FROM accounts WHERE {column} = ?", (value,)).fetchone()
    if row is None:
        raise InvalidRequest(f"Account does not exist: {account}")
    did, current = row
    if current == email:
        return
    if conn.execute("SELECT 1 FROM accounts WHERE email = ?", (email,)).fetchone():
        raise InvalidRequest("This email address is already in use, please use a different email.")
    # A new address is not confirmed yet, whoever set it.
    conn.execute("UPDATE accounts SET email = ?, email_confirmed_at = NULL WHERE did = ?", (email, did))


async def update_handle(app: "AppContext", did: str, handle: str) -> None:
    """The same rules and effects as the account's own updateHandle (PLC operation, ``#identity``)."""
    await app.db.read(_existing, did)
    await app.accounts.update_handle(did, handle)


async def update_signing_key(app: "AppContext", did: str, signing_key: str) -> None:
    """Name ``signing_key`` (a did:key) in the account's DID document; see Accounts.update_signing_key."""
    try:
        crypto.parse_did_key(signing_key)
    except crypto.InvalidKey as e:
        raise InvalidRequest(f"Invalid signing key: {e}") from None
    await app.db.read(_existing, did)
    await app.accounts.update_signing_key(did, signing_key)


async def delete_account(app: "AppContext", did: str) -> None:
    """
    Delete an account and everything it has here: repo, records, blocks,
    blobs (rows, files and its blob folder), sessions, app passwords, OAuth
    grants, linked GitHub/Google identities, keys, preferences, takedowns,
    email codes and its unsent mail.  Its earlier firehose events go too and
    one ``#account`` event (``active: false, status: "deleted"``) stays, as
    on the official PDS; the handle and email are free again.  Invite codes
    forget it (see :func:`_forget_invites`).  The deleted rows' bytes are
    overwritten in the database file (secure_delete) and the WAL is emptied
    (:meth:`leafpds.db.pool.Database.purge`): nothing of it is left on disk.
    Runs under the DID's write lock, so no commit of its own is half-way.
    """

    async def locked() -> tuple[list[CID], list[str], list[tuple[int, bytes]]]:
        return await app.db.write(_delete_unit, did, app.reactor.seconds())

    blobs, ended, appended = await app.transactor.locks.run(did, locked)
    app.tokens.revoke(ended)
    app.keys.forget(did)
    app.transactor.forget(did)
    app.record_cache.forget_repo(did)
    app.transactor.notify(appended)
    app.db.purge()
    await app.blobs.delete_account(did, blobs)


def _delete_unit(conn: Any, did: str, now: float) -> tuple[list[CID], list[str], list[tuple[int, bytes]]]:
    _existing(conn, did)
    blobs = [CID(row[0]) for row in conn.execute("SELECT cid FROM blobs WHERE did = ?", (did,))]
    ended = _end_all_sessions(conn, did, now)
    email = conn.execute("SELECT email FROM accounts WHERE did = ?", (did,)).fetchone()[0]
    # Every table with the account's rows references accounts(did) with ON
    # DELETE CASCADE (record_blobs through records); these do not.  The rows'
    # bytes are overwritten as they go (secure_delete, leafpds.db.pool).
    conn.execute("DELETE FROM accounts WHERE did = ?", (did,))
    conn.execute("DELETE FROM repo_seq WHERE did = ?", (did,))
    # Mail not sent yet (codes, an operator's message) is not sent at all;
    # the official PDS mails nothing about a deletion either.
    conn.execute("DELETE FROM mail_queue WHERE did = ? OR recipient = ?", (did, email))
    _forget_invites(conn, did)
    time = iso_from_epoch(now)
    body = {"did": did, "active": False, "status": "deleted", "time": time}
    return blobs, ended, [events.append_event(conn, did, "#account", body, time)]


#: What stands in an invite code's ``forAccount`` for a deleted account.
DELETED_ACCOUNT = "deleted"


def _forget_invites(conn: Any, did: str) -> None:
    """
    The official PDS keeps a deleted account's invite rows, DID and all.
    Here the DID goes and the codes work as they did: the codes made for
    the account stay usable, owned by :data:`DELETED_ACCOUNT`; the row of
    the use it made of a code goes and that code's available uses drop by
    one with it, so the use stays spent (a deletion hands no invite back).
    """
    conn.execute("UPDATE invite_codes SET for_account = ? WHERE for_account = ?", (DELETED_ACCOUNT, did))
    conn.execute(
        "UPDATE invite_codes SET available_uses = available_uses - 1"
        " WHERE code IN (SELECT code FROM invite_code_uses WHERE used_by = ?)",
        (did,),
    )
    conn.execute("DELETE FROM invite_code_uses WHERE used_by = ?", (did,))
