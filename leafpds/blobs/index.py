"""
Blob metadata, as units of work over one SQLite connection.

``blobs`` has a row per (account, blob) the store holds; ``temp_key`` is set
while the blob is temporary (uploaded, referenced by no committed record).
``record_blobs`` links each record to the blobs it references; a link may
name a blob the account does not hold (after a repo import): those are the
"missing" blobs.
"""

from collections.abc import Iterable, Sequence
from typing import Any

from leafpds.blobs.refs import BlobRef, find_blob_refs
from leafpds.errors import BlobNotFound, InvalidMimeType, InvalidSize
from leafpds.ipld.cid import CID


def _linked(conn: Any, did: str, cid: bytes) -> bool:
    return conn.execute(
        "SELECT 1 FROM record_blobs WHERE did = ? AND blob_cid = ? LIMIT 1", (did, cid)
    ).fetchone() is not None


def track_upload(
    conn: Any, did: str, cid: CID, mime_type: str, size: int, upload_key: str, now: str
) -> str:
    """
    Record an uploaded blob: temporary, unless a record already references
    it (a blob uploaded after its records were imported).  A blob uploaded
    again keeps its permanent row, or its temporary row starts its grace
    period over.  Returns the MIME type the blob is now stored with.
    """
    row = conn.execute(
        "SELECT mime_type, temp_key FROM blobs WHERE did = ? AND cid = ?", (did, cid.cid_bytes)
    ).fetchone()
    if row is not None and row[1] is None:
        return row[0]
    temp_key = None if _linked(conn, did, cid.cid_bytes) else upload_key
    conn.execute(
        "INSERT INTO blobs (did, cid, mime_type, size, temp_key, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (did, cid) DO UPDATE SET mime_type = excluded.mime_type,"
        " temp_key = excluded.temp_key, created_at = excluded.created_at",
        (did, cid.cid_bytes, mime_type, size, temp_key, now),
    )
    return mime_type


def apply_commit(conn: Any, did: str, ops: Sequence[Any], writes: Sequence[Any]) -> list[CID]:
    """
    Bring the blob links up to date with a commit's ops (a commit hook: the
    records it creates or updates are written, those it deletes not yet
    removed): link each new record to its blobs, making temporary ones
    permanent, and refuse the commit (raise) if one is not there or does not
    match its reference.  Delete the rows of blobs no record references any
    more and return their CIDs: their files go once the commit is durable.
    """
    dropped: set[bytes] = set()
    for op, write in zip(ops, writes):
        if op.action in ("update", "delete"):
            # Before a deleted record's row goes (and its links with it).
            dropped.update(row[0] for row in conn.execute(
                "DELETE FROM record_blobs WHERE did = ? AND collection = ? AND rkey = ?"
                " RETURNING blob_cid",
                (did, op.collection, op.rkey),
            ))
        if op.action in ("create", "update"):
            for ref in find_blob_refs(write.record):
                _make_permanent(conn, did, ref)
                conn.execute(
                    "INSERT OR IGNORE INTO record_blobs (did, blob_cid, collection, rkey)"
                    " VALUES (?, ?, ?, ?)",
                    (did, ref.cid.cid_bytes, op.collection, op.rkey),
                )
    gone = []
    for cid in sorted(dropped):
        if _linked(conn, did, cid):
            continue
        # A temporary row here is a fresh upload of the same bytes: it stays
        # for its grace period.
        if conn.execute(
            "DELETE FROM blobs WHERE did = ? AND cid = ? AND temp_key IS NULL RETURNING cid",
            (did, cid),
        ).fetchone() is not None:
            gone.append(CID(cid))
    return gone


def relink_imported(conn: Any, did: str, links: Iterable[tuple[bytes, str, str]], now: str) -> None:
    """
    After a repo import has replaced the account's records (their old links
    gone with them): link the new records to the blobs they reference,
    ``(blob CID, collection, rkey)`` each.  A temporary upload some record
    now references becomes permanent; a permanent blob no record references
    any more becomes temporary again, so the collector deletes it after the
    grace period (unless a write references it first).  Referenced blobs
    the account does not hold are the missing ones (:func:`list_missing`).
    """
    conn.executemany(
        "INSERT OR IGNORE INTO record_blobs (did, blob_cid, collection, rkey) VALUES (?, ?, ?, ?)",
        ((did, cid, collection, rkey) for cid, collection, rkey in links),
    )
    referenced = "EXISTS (SELECT 1 FROM record_blobs rb WHERE rb.did = blobs.did AND rb.blob_cid = blobs.cid)"
    conn.execute(
        f"UPDATE blobs SET temp_key = NULL WHERE did = ? AND temp_key IS NOT NULL AND {referenced}", (did,)
    )
    conn.execute(
        f"UPDATE blobs SET temp_key = 'unreferenced', created_at = ?"
        f" WHERE did = ? AND temp_key IS NULL AND NOT {referenced}",
        (now, did),
    )


def _make_permanent(conn: Any, did: str, ref: BlobRef) -> None:
    cid = ref.cid.cid_bytes
    row = conn.execute(
        "SELECT mime_type, size, temp_key FROM blobs WHERE did = ? AND cid = ?", (did, cid)
    ).fetchone()
    if row is None:
        raise BlobNotFound(f"Could not find blob: {ref.cid.encode()}")
    mime_type, size, temp_key = row
    if temp_key is None:
        return
    if ref.mime_type != mime_type:
        raise InvalidMimeType(
            f"Referenced Mimetype does not match stored blob. Expected: {mime_type}, "
            f"Got: {ref.mime_type}"
        )
    if ref.size is not None and ref.size != size:
        raise InvalidSize(
            f"Referenced Size does not match stored blob. Expected: {size}, Got: {ref.size}"
        )
    conn.execute("UPDATE blobs SET temp_key = NULL WHERE did = ? AND cid = ?", (did, cid))


def served_blob(conn: Any, did: str, cid: CID) -> tuple[str, int] | None:
    """
    (MIME type, size) of a permanent blob; temporary ones are not served,
    nor those an admin took down.
    """
    return conn.execute(
        "SELECT mime_type, size FROM blobs"
        " WHERE did = ? AND cid = ? AND temp_key IS NULL AND takedown_ref IS NULL",
        (did, cid.cid_bytes),
    ).fetchone()


def has_blob(conn: Any, did: str, cid: CID) -> bool:
    return conn.execute(
        "SELECT 1 FROM blobs WHERE did = ? AND cid = ?", (did, cid.cid_bytes)
    ).fetchone() is not None


def expire_temporary(conn: Any, uploaded_before: str) -> list[tuple[str, CID]]:
    """Delete the rows of temporary blobs uploaded before a time; (DID, CID) of each."""
    rows = conn.execute(
        "DELETE FROM blobs WHERE temp_key IS NOT NULL AND created_at < ? RETURNING did, cid",
        (uploaded_before,),
    ).fetchall()
    return [(did, CID(cid)) for did, cid in rows]


def list_blobs(
    conn: Any, did: str, since: str | None, limit: int, cursor: CID | None
) -> list[CID]:
    """
    The blobs the repo's records reference (only records written after rev
    ``since`` if given), in CID order after ``cursor``.
    """
    after = cursor.cid_bytes if cursor is not None else b""
    if since is None:
        rows = conn.execute(
            "SELECT DISTINCT blob_cid FROM record_blobs WHERE did = ? AND blob_cid > ?"
            " ORDER BY blob_cid LIMIT ?",
            (did, after, limit),
        )
    else:
        rows = conn.execute(
            "SELECT DISTINCT rb.blob_cid FROM record_blobs rb JOIN records r"
            " ON r.did = rb.did AND r.collection = rb.collection AND r.rkey = rb.rkey"
            " WHERE rb.did = ? AND rb.blob_cid > ? AND r.rev > ?"
            " ORDER BY rb.blob_cid LIMIT ?",
            (did, after, since, limit),
        )
    return [CID(row[0]) for row in rows]


def list_missing(
    conn: Any, did: str, limit: int, cursor: CID | None
) -> list[tuple[CID, str, str]]:
    """(CID, collection, rkey of one record referencing it) of blobs referenced but not held."""
    after = cursor.cid_bytes if cursor is not None else b""
    rows = conn.execute(
        "SELECT rb.blob_cid, min(rb.collection || '/' || rb.rkey) FROM record_blobs rb"
        " WHERE rb.did = ? AND rb.blob_cid > ?"
        " AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.did = rb.did AND b.cid = rb.blob_cid)"
        " GROUP BY rb.blob_cid ORDER BY rb.blob_cid LIMIT ?",
        (did, after, limit),
    ).fetchall()
    return [(CID(cid), *path.split("/", 1)) for cid, path in rows]
