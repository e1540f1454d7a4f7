"""
Takedowns (com.atproto.admin.updateSubjectStatus / getSubjectStatus) of an
account (``repoRef``), a record (``strongRef``) or a blob (``repoBlobRef``).

A taken-down account keeps all its data: its status is ``takendown`` (sync
methods and describeRepo answer ``RepoTakendown`` except to the admin,
getRecord and listRecords do not find it,
login answers ``AccountTakedown``), its sessions end, and the firehose
hears ``#account`` with ``active: false, status: "takendown"``; reversing
it makes it ``active`` again (``deactivated`` if its owner had deactivated it)
and says so on the firehose.  A taken-down
record is left out of getRecord/listRecords, a taken-down blob is not
served by getBlob; the repo itself is unchanged (its signed tree still
holds the record, as on the official PDS).
"""

from dataclasses import dataclass
from typing import Any

from leafpds import syntax
from leafpds.accounts import sessions
from leafpds.errors import InvalidRequest, XRPCError
from leafpds.ipld.cid import CID, InvalidCID, parse_cid
from leafpds.oauth.tokens import revoke_account_grants_unit
from leafpds.repo import events
from leafpds.timestamps import iso_from_epoch

REPO_REF = "com.atproto.admin.defs#repoRef"
STRONG_REF = "com.atproto.repo.strongRef"
BLOB_REF = "com.atproto.admin.defs#repoBlobRef"


class SubjectNotFound(XRPCError):
    name = "NotFound"


@dataclass(frozen=True)
class Subject:
    """What a takedown is about: an account, one of its records, or one of its blobs."""

    did: str
    collection: str | None = None
    rkey: str | None = None
    blob: CID | None = None

    @property
    def kind(self) -> str:
        if self.blob is not None:
            return BLOB_REF
        return STRONG_REF if self.rkey is not None else REPO_REF


def subject_from_ref(ref: dict[str, Any]) -> Subject:
    """The subject of updateSubjectStatus's ``subject`` union (already lexicon-valid)."""
    kind = ref.get("$type")
    if kind == REPO_REF:
        return Subject(ref["did"])
    if kind == BLOB_REF:
        return Subject(ref["did"], blob=_cid(ref["cid"]))
    if kind == STRONG_REF:
        return subject_from_uri(ref["uri"])
    raise InvalidRequest("Invalid subject")


def subject_from_params(did: str | None, uri: str | None, blob: str | None) -> Subject:
    """The subject getSubjectStatus's parameters name, in the official PDS's order."""
    if blob is not None:
        if did is None:
            raise InvalidRequest("Must provide a did to request blob state")
        return Subject(did, blob=_cid(blob))
    if uri is not None:
        return subject_from_uri(uri)
    if did is not None:
        return Subject(did)
    raise InvalidRequest("No provided subject")


def subject_from_uri(uri: str) -> Subject:
    try:
        parsed = syntax.parse_at_uri(uri)
    except syntax.InvalidSyntax as e:
        raise InvalidRequest(str(e)) from None
    if not parsed.authority.startswith("did:") or parsed.rkey is None:
        raise InvalidRequest(f"A record's URI needs a DID and a record key: {uri}")
    return Subject(parsed.authority, parsed.collection, parsed.rkey)


def _cid(value: str) -> CID:
    try:
        return parse_cid(value)
    except InvalidCID:
        raise InvalidRequest(f"Invalid blob CID: {value!r}") from None


@dataclass(frozen=True)
class Change:
    """What a takedown update did, for the caller's after-commit work."""

    #: Firehose events appended (an account's status changed).
    events: list[tuple[int, bytes]]
    #: Sessions ended (an account taken down): their access tokens are refused from now.
    ended_sessions: list[str]


def status_unit(conn: Any, subject: Subject) -> dict[str, Any]:
    """getSubjectStatus's answer; NotFound if there is no such subject."""
    if subject.kind == REPO_REF:
        row = conn.execute("SELECT takedown_ref FROM accounts WHERE did = ?", (subject.did,)).fetchone()
        if row is None:
            raise SubjectNotFound("Subject not found")
        return {"subject": {"$type": REPO_REF, "did": subject.did}, "takedown": _attr(row[0])}
    if subject.kind == BLOB_REF:
        row = conn.execute(
            "SELECT takedown_ref FROM blobs WHERE did = ? AND cid = ?", (subject.did, subject.blob.cid_bytes)
        ).fetchone()
        if row is None:
            raise SubjectNotFound("Subject not found")
        return {
            "subject": {"$type": BLOB_REF, "did": subject.did, "cid": subject.blob.encode()},
            "takedown": _attr(row[0]),
        }
    row = conn.execute(
        "SELECT r.cid, t.ref FROM records r LEFT JOIN record_takedowns t"
        " ON t.did = r.did AND t.collection = r.collection AND t.rkey = r.rkey"
        " WHERE r.did = ? AND r.collection = ? AND r.rkey = ?",
        (subject.did, subject.collection, subject.rkey),
    ).fetchone()
    if row is None:
        raise SubjectNotFound("Subject not found")
    uri = f"at://{subject.did}/{subject.collection}/{subject.rkey}"
    return {"subject": {"$type": STRONG_REF, "uri": uri, "cid": CID(row[0]).encode()}, "takedown": _attr(row[1])}


def _attr(ref: str | None) -> dict[str, Any]:
    return {"applied": True, "ref": ref} if ref is not None else {"applied": False}


def update_unit(conn: Any, subject: Subject, applied: bool, ref: str | None, now: float) -> Change:
    """
    Apply or reverse a takedown.  The subject must exist (a record's
    takedown may be reversed after the record was deleted); an applied
    takedown without a ``ref`` gets the time as its ref, as on the official PDS.
    """
    ref = (ref or iso_from_epoch(now)) if applied else None
    if subject.kind == REPO_REF:
        return _update_account(conn, subject.did, ref, now)
    if subject.kind == BLOB_REF:
        updated = conn.execute(
            "UPDATE blobs SET takedown_ref = ? WHERE did = ? AND cid = ?",
            (ref, subject.did, subject.blob.cid_bytes),
        ).rowcount
        if not updated:
            raise InvalidRequest(f"Could not find blob: {subject.blob.encode()}")
        return Change([], [])
    key = (subject.did, subject.collection, subject.rkey)
    if ref is None:
        conn.execute("DELETE FROM record_takedowns WHERE did = ? AND collection = ? AND rkey = ?", key)
        return Change([], [])
    if conn.execute("SELECT 1 FROM records WHERE did = ? AND collection = ? AND rkey = ?", key).fetchone() is None:
        raise InvalidRequest(f"Could not find record: at://{'/'.join(key)}")
    conn.execute(
        "INSERT INTO record_takedowns (did, collection, rkey, ref) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (did, collection, rkey) DO UPDATE SET ref = excluded.ref",
        (*key, ref),
    )
    return Change([], [])


def _update_account(conn: Any, did: str, ref: str | None, now: float) -> Change:
    row = conn.execute("SELECT status, deactivated_at FROM accounts WHERE did = ?", (did,)).fetchone()
    if row is None:
        raise InvalidRequest(f"Account not found: {did}")
    was_taken_down = row[0] == "takendown"
    # Reversing a takedown restores what the account was before: deactivated
    # if its owner had deactivated it, else active; any other status (one
    # this code did not set) is left as it is.
    restored = "deactivated" if row[1] is not None else "active"
    conn.execute(
        "UPDATE accounts SET takedown_ref = ?,"
        " status = CASE WHEN ? IS NOT NULL THEN 'takendown'"
        " WHEN status = 'takendown' THEN ? ELSE status END WHERE did = ?",
        (ref, ref, restored, did),
    )
    time = iso_from_epoch(now)
    if ref is not None:
        # Whoever was signed in is signed out, as the official PDS revokes
        # the account's refresh tokens, and apps lose their OAuth grants;
        # login is refused until reversal.
        ended = sessions.end_all_sessions_unit(conn, did, now) + revoke_account_grants_unit(conn, did, now)
        if was_taken_down:
            return Change([], ended)  # a new ref for the same takedown: nothing to announce
        body = {"did": did, "active": False, "status": "takendown", "time": time}
        return Change([events.append_event(conn, did, "#account", body, time)], ended)
    if not was_taken_down:
        return Change([], [])
    body = {"did": did, "active": True, "time": time}
    if restored == "deactivated":
        body = {"did": did, "active": False, "status": "deactivated", "time": time}
    return Change([events.append_event(conn, did, "#account", body, time)], [])
