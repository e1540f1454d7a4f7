"""
An account's own lifecycle (com.atproto.server.deactivateAccount,
activateAccount, checkAccountStatus, requestAccountDelete, deleteAccount),
as the official PDS answers them.

A deactivated account keeps its data and its sessions (login works), but
its repo is not served: sync methods answer ``RepoDeactivated`` (except to
the account itself and the admin, so it can still export its repo),
describeRepo too, getRecord and listRecords find no such repo; writes are
refused (401 ``AccountDeactivated``, checked in the commit's transaction).
Status changes append ``#account`` events in the same transaction, as
takedowns do (leafpds.admin.takedowns).  Deletion goes through
leafpds.admin.actions.delete_account, the one way an account is removed.
"""

from typing import TYPE_CHECKING, Any

from twisted.internet.threads import deferToThread

from leafpds.accounts import email_tokens
from leafpds.accounts.passwords import verify_password
from leafpds.errors import AuthenticationRequired, InvalidRequest
from leafpds.identity.plc import (
    ATPROTO_KEY,
    PDS_SERVICE,
    PLCError,
    PLCOperationError,
    check_structure,
    data_for,
    parse_document,
)
from leafpds.ipld.car import encode_car
from leafpds.ipld.cid import CID
from leafpds.repo import events
from leafpds.timestamps import iso_from_epoch

if TYPE_CHECKING:
    from leafpds.app import AppContext


def _takedown_refused() -> AuthenticationRequired:
    return AuthenticationRequired("Account has been taken down", name="AccountTakedown")


# -- deactivateAccount / activateAccount ---------------------------------------


async def deactivate(app: "AppContext", did: str, delete_after: str | None) -> None:
    appended = await app.db.write(_deactivate_unit, did, delete_after, app.reactor.seconds())
    # getRecord serves no record of a deactivated repo, cached ones included.
    app.record_cache.forget_repo(did)
    app.transactor.notify(appended)


def _deactivate_unit(conn: Any, did: str, delete_after: str | None, now: float) -> list[tuple[int, bytes]]:
    status = _status(conn, did)
    if status == "takendown":
        raise _takedown_refused()
    time = iso_from_epoch(now)
    # deleteAfter is only stored: nothing here deletes accounts by itself (as the official PDS).
    conn.execute(
        "UPDATE accounts SET status = 'deactivated', deactivated_at = COALESCE(deactivated_at, ?),"
        " delete_after = ? WHERE did = ?",
        (time, delete_after, did),
    )
    if status == "deactivated":
        return []  # already said
    body = {"did": did, "active": False, "status": "deactivated", "time": time}
    return [events.append_event(conn, did, "#account", body, time)]


async def activate(app: "AppContext", did: str) -> None:
    """
    Activate after checking the DID names this PDS (a migrated account must
    have its PLC update first); then ``#account``, ``#identity`` and
    ``#sync`` in one transaction, as the official PDS emits them, so relays
    re-fetch the identity and the repo head.
    """
    problem = await _did_problem(app, did)
    if problem is not None:
        raise InvalidRequest(problem)
    appended = await app.db.write(_activate_unit, did, app.reactor.seconds())
    app.transactor.notify(appended)


def _activate_unit(conn: Any, did: str, now: float) -> list[tuple[int, bytes]]:
    status = _status(conn, did)
    (handle,) = conn.execute("SELECT handle FROM accounts WHERE did = ?", (did,)).fetchone()
    if status == "takendown":
        raise _takedown_refused()
    conn.execute(
        "UPDATE accounts SET status = 'active', deactivated_at = NULL, delete_after = NULL WHERE did = ?",
        (did,),
    )
    if status == "active":
        return []
    time = iso_from_epoch(now)
    commit_cid, rev = conn.execute("SELECT commit_cid, rev FROM repo_roots WHERE did = ?", (did,)).fetchone()
    commit_cid = CID(commit_cid)
    block = conn.execute(
        "SELECT data FROM blocks WHERE did = ?1 AND cid = ?2 UNION ALL"
        " SELECT data FROM fresh_blocks WHERE did = ?1 AND cid = ?2 LIMIT 1",
        (did, commit_cid.cid_bytes),
    ).fetchone()[0]
    return [
        events.append_event(conn, did, "#account", {"did": did, "active": True, "time": time}, time),
        events.append_identity(conn, did, handle, time),
        events.append_event(conn, did, "#sync", {
            "did": did, "blocks": encode_car(commit_cid, [(commit_cid, block)]), "rev": rev, "time": time,
        }, time),
    ]


def _status(conn: Any, did: str) -> str:
    row = conn.execute("SELECT status FROM accounts WHERE did = ?", (did,)).fetchone()
    if row is None:
        raise InvalidRequest("account not found")
    return row[0]


# -- checkAccountStatus ----------------------------------------------------------


async def check_status(app: "AppContext", did: str) -> dict[str, Any]:
    counts = await app.db.read(_counts_unit, did)
    return {**counts, "validDid": await _did_problem(app, did) is None}


async def _did_problem(app: "AppContext", did: str) -> str | None:
    """
    What keeps the DID from naming this PDS, or None (the official PDS's
    checks, and its words).  A did:plc's current PLC data must have this
    PDS's rotation key, its endpoint and the account's signing key; a
    did:web has no rotation keys: its document, fetched afresh, must name
    the endpoint and the key.
    """
    if did.startswith("did:plc:"):
        try:
            last = await app.plc.last_operation(did)
            check_structure(last)
            state = data_for(did, last)
        except PLCError as e:
            return f"Could not read the DID from the PLC directory: {e}"
        except PLCOperationError as e:
            return f"The DID's PLC data is not usable: {e}"
        if app.accounts.rotation_key.did() not in state["rotationKeys"]:
            return "Server rotation key not included in PLC DID data"
        endpoint = state["services"].get(PDS_SERVICE, {}).get("endpoint")
        signing_key = state["verificationMethods"].get(ATPROTO_KEY)
    else:
        doc = await app.dids.resolve(did, fresh=True)
        if doc is None:
            return "Could not resolve DID"
        identity = parse_document(doc)
        endpoint, signing_key = identity.pds_endpoint, identity.signing_key
    if endpoint != app.accounts.public_url():
        return "DID document atproto_pds service endpoint does not match PDS public url"
    if signing_key != (await app.keys.signing_key(did)).did():
        return "DID document verification method does not match expected signing key"
    return None


def _counts_unit(conn: Any, did: str) -> dict[str, Any]:
    status = _status(conn, did)
    root = conn.execute("SELECT commit_cid, rev FROM repo_roots WHERE did = ?", (did,)).fetchone()
    one = lambda sql: conn.execute(sql, {"did": did}).fetchone()[0]  # noqa: E731
    return {
        "activated": status == "active",
        "repoCommit": CID(root[0]).encode(),
        "repoRev": root[1],
        # A block may sit settled, fresh, or in its record's row: count each CID once.
        "repoBlocks": one(
            "SELECT COUNT(*) FROM (SELECT cid FROM blocks WHERE did = :did UNION"
            " SELECT cid FROM fresh_blocks WHERE did = :did UNION SELECT cid FROM records WHERE did = :did)"
        ),
        "indexedRecords": one("SELECT COUNT(*) FROM records WHERE did = :did"),
        # The official PDS answers a constant 0; the preferences are this account's private state.
        "privateStateValues": one("SELECT COUNT(*) FROM account_prefs WHERE did = :did"),
        "expectedBlobs": one("SELECT COUNT(DISTINCT blob_cid) FROM record_blobs WHERE did = :did"),
        "importedBlobs": one("SELECT COUNT(*) FROM blobs WHERE did = :did"),
    }


# -- requestAccountDelete / deleteAccount ----------------------------------------


async def request_delete(app: "AppContext", did: str) -> None:
    await app.account_email.send_code(did, email_tokens.DELETE_ACCOUNT)


async def delete(app: "AppContext", did: str, password: str, token: str) -> None:
    """
    Delete the account after its own password and the mailed code; either
    wrong changes nothing (the code is used only once the password matched).
    """
    from leafpds.admin import actions  # admin imports accounts: import late

    row = await app.db.read(
        lambda conn: conn.execute("SELECT password_hash FROM accounts WHERE did = ?", (did,)).fetchone()
    )
    if row is None or row[0] is None or not await deferToThread(verify_password, password, row[0]):
        raise AuthenticationRequired("Invalid did or password")
    await app.account_email.use_code(did, email_tokens.DELETE_ACCOUNT, token)
    await actions.delete_account(app, did)
