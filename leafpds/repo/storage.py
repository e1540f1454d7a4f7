"""
The blockstore and the records index, as functions over one SQLite
connection.  They run inside a unit of work handed to ``Database.read`` or
``Database.write``, so a request does all its row work in one thread hop.

Blocks are keyed by (repo DID, CID): an account's blocks can be exported,
counted and deleted without touching anyone else's, even when two repos hold
the same bytes.
"""

from collections.abc import Iterable, Iterator
from typing import Any

from leafpds.ipld.cid import CID
from leafpds.repo.mst import MissingBlock


class SQLBlocks:
    """One repo's blocks, read through a connection (an MST ``BlockSource``)."""

    def __init__(self, conn: Any, did: str) -> None:
        self.conn = conn
        self.did = did

    def get_block(self, cid: CID) -> bytes:
        row = self.conn.execute(
            "SELECT data FROM blocks WHERE did = ? AND cid = ?", (self.did, cid.cid_bytes)
        ).fetchone()
        if row is None:
            raise MissingBlock(cid)
        return row[0]


def read_root(conn: Any, did: str) -> tuple[CID, str] | None:
    """The repo's current (commit CID, rev), or None if there is no repo."""
    row = conn.execute("SELECT commit_cid, rev FROM repo_roots WHERE did = ?", (did,)).fetchone()
    return (CID(row[0]), row[1]) if row else None


def write_root(conn: Any, did: str, commit_cid: CID, rev: str, now: str) -> None:
    conn.execute(
        "INSERT INTO repo_roots (did, commit_cid, rev, indexed_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (did) DO UPDATE SET commit_cid = excluded.commit_cid,"
        " rev = excluded.rev, indexed_at = excluded.indexed_at",
        (did, commit_cid.cid_bytes, rev, now),
    )


def advance_root(
    conn: Any, did: str, base: CID, commit_cid: CID, rev: str, now: str
) -> bool:
    """
    Move the repo's root from ``base`` to ``commit_cid``, if ``base`` is its
    root now: the check and the write in one statement.  False (and nothing
    written) if it is not.
    """
    return conn.execute(
        "UPDATE repo_roots SET commit_cid = ?, rev = ?, indexed_at = ?"
        " WHERE did = ? AND commit_cid = ?",
        (commit_cid.cid_bytes, rev, now, did, base.cid_bytes),
    ).rowcount == 1


def put_blocks(conn: Any, did: str, rev: str, blocks: Iterable[tuple[CID, bytes]]) -> None:
    # A block already stored (the same record content under another key) keeps
    # its original rev: the consumer of an earlier export already has it.
    conn.executemany(
        "INSERT OR IGNORE INTO blocks (did, cid, rev, data) VALUES (?, ?, ?, ?)",
        [(did, cid.cid_bytes, rev, data) for cid, data in blocks],
    )


def delete_blocks(conn: Any, did: str, cids: Iterable[CID]) -> None:
    conn.executemany(
        "DELETE FROM blocks WHERE did = ? AND cid = ?", [(did, cid.cid_bytes) for cid in cids]
    )


def delete_record_blocks(conn: Any, did: str, cids: Iterable[CID]) -> None:
    """Delete record blocks that no record of the repo references any more."""
    conn.executemany(
        "DELETE FROM blocks WHERE did = ? AND cid = ?"
        " AND NOT EXISTS (SELECT 1 FROM records WHERE did = ? AND cid = ?)",
        [(did, cid.cid_bytes, did, cid.cid_bytes) for cid in cids],
    )


def record_cid(conn: Any, did: str, collection: str, rkey: str) -> CID | None:
    row = conn.execute(
        "SELECT cid FROM records WHERE did = ? AND collection = ? AND rkey = ?",
        (did, collection, rkey),
    ).fetchone()
    return CID(row[0]) if row else None


def put_record(
    conn: Any, did: str, collection: str, rkey: str, cid: CID, rev: str, now: str
) -> None:
    conn.execute(
        "INSERT INTO records (did, collection, rkey, cid, rev, indexed_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (did, collection, rkey) DO UPDATE SET cid = excluded.cid,"
        " rev = excluded.rev, indexed_at = excluded.indexed_at",
        (did, collection, rkey, cid.cid_bytes, rev, now),
    )


def delete_record(conn: Any, did: str, collection: str, rkey: str) -> None:
    conn.execute(
        "DELETE FROM records WHERE did = ? AND collection = ? AND rkey = ?",
        (did, collection, rkey),
    )


def get_record(conn: Any, did: str, collection: str, rkey: str) -> tuple[CID, bytes] | None:
    row = conn.execute(
        "SELECT r.cid, b.data FROM records r JOIN blocks b ON b.did = r.did AND b.cid = r.cid"
        " WHERE r.did = ? AND r.collection = ? AND r.rkey = ?",
        (did, collection, rkey),
    ).fetchone()
    return (CID(row[0]), row[1]) if row else None


def list_records(
    conn: Any,
    did: str,
    collection: str,
    limit: int,
    cursor: str | None = None,
    reverse: bool = False,
) -> list[tuple[str, CID, bytes]]:
    """
    (rkey, CID, block) of a collection's records: newest (highest rkey) first,
    or oldest first with ``reverse``; ``cursor`` is the last rkey seen.
    """
    if reverse:
        order, compare = "ASC", ">"
    else:
        order, compare = "DESC", "<"
    where = "r.did = ? AND r.collection = ?"
    args: list[Any] = [did, collection]
    if cursor is not None:
        where += f" AND r.rkey {compare} ?"
        args.append(cursor)
    rows = conn.execute(
        "SELECT r.rkey, r.cid, b.data FROM records r"
        " JOIN blocks b ON b.did = r.did AND b.cid = r.cid"
        f" WHERE {where} ORDER BY r.rkey {order} LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [(rkey, CID(cid), data) for rkey, cid, data in rows]


def collections(conn: Any, did: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT collection FROM records WHERE did = ? ORDER BY collection", (did,)
        )
    ]


def iter_blocks(conn: Any, did: str, since: str | None = None, page: int = 2000) -> Iterator[tuple[CID, bytes]]:
    """Every block of the repo (newer than rev ``since`` if given), in pages by CID."""
    after = b""
    while True:
        if since is None:
            rows = conn.execute(
                "SELECT cid, data FROM blocks WHERE did = ? AND cid > ? ORDER BY cid LIMIT ?",
                (did, after, page),
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT cid, data FROM blocks WHERE did = ? AND cid > ? AND rev > ?"
                " ORDER BY cid LIMIT ?",
                (did, after, since, page),
            ).fetchall()
        for cid, data in rows:
            yield CID(cid), data
        if len(rows) < page:
            return
        after = rows[-1][0]
