"""
The blockstore and the records index, as functions over one SQLite
connection.  They run inside a unit of work handed to ``Database.read`` or
``Database.write``, so a request does all its row work in one thread hop.

Blocks are keyed by (repo DID, CID): an account's blocks can be exported,
counted and deleted without touching anyone else's, even when two repos hold
the same bytes.

They live in two tables of one shape.  A commit's new blocks go to
``fresh_blocks``, which stays small; most of them die young (every write
replaces the MST nodes on its path, and with TID record keys that is the same
right-hand path commit after commit) and are deleted from there, on a few hot
pages.  Now and then :func:`settle_blocks` moves the survivors into
``blocks`` in one sorted pass.  In ``blocks`` alone, each commit put its
entries on as many random pages of the big ``(did, cid)`` index.  Nothing
stores a block twice, but should a CID be in both tables, reads take the
first they find, exports send it once, and settling keeps the older row.

A record's block is not among them: its bytes live in its row of the
records index, which serves reads without a second look-up, goes with the
record when it is deleted or replaced, and needs no counting when two
records have the same bytes (each row has its own copy).  Exports and
``getBlocks`` read them from there.
"""

from collections.abc import Iterable, Iterator
from typing import Any

from leafpds.ipld.cid import CID
from leafpds.repo.mst import MissingBlock


class SQLBlocks:
    """One repo's commit and tree nodes, read through a connection (an MST ``BlockSource``)."""

    def __init__(self, conn: Any, did: str) -> None:
        self.conn = conn
        self.did = did

    def get_block(self, cid: CID) -> bytes:
        # From whichever table holds it (most have settled).
        row = self.conn.execute(
            "SELECT data FROM blocks WHERE did = ?1 AND cid = ?2 UNION ALL"
            " SELECT data FROM fresh_blocks WHERE did = ?1 AND cid = ?2 LIMIT 1",
            (self.did, cid.cid_bytes),
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


def put_blocks(
    conn: Any, did: str, rev: str, blocks: Iterable[tuple[CID, bytes]], settled: bool = False
) -> None:
    """
    Store new blocks: a commit's as fresh ones; a whole imported repo's,
    which all live on, straight into ``blocks`` (``settled``).
    """
    table = "blocks" if settled else "fresh_blocks"
    conn.executemany(
        f"INSERT OR IGNORE INTO {table} (did, cid, rev, data) VALUES (?, ?, ?, ?)",
        ((did, cid.cid_bytes, rev, data) for cid, data in blocks),
    )


def delete_blocks(conn: Any, did: str, cids: Iterable[CID]) -> None:
    """Delete blocks no longer reachable: fresh ones, or else settled ones."""
    rows = [(did, cid.cid_bytes) for cid in cids]
    deleted = conn.executemany("DELETE FROM fresh_blocks WHERE did = ? AND cid = ?", rows)
    if deleted.rowcount < len(rows):  # rarely: some had settled
        conn.executemany("DELETE FROM blocks WHERE did = ? AND cid = ?", rows)


def delete_repo_blocks(conn: Any, did: str) -> None:
    """Delete every block of the repo (but its records')."""
    for table in ("fresh_blocks", "blocks"):
        conn.execute(f"DELETE FROM {table} WHERE did = ?", (did,))


def settle_blocks(conn: Any, mark: int) -> int:
    """
    Move the fresh blocks that were already there at the last settling (rowid
    up to ``mark``, which that settling returned; 0 the first time) into
    ``blocks``, in index order; return the mark for the next time.  (Should
    the newest rows all go and their rowids be handed out again, some young
    blocks settle early: no harm.)  A block ``blocks`` already has keeps its
    older row and rev there (the consumer of an earlier export has it).
    """
    conn.execute(
        "INSERT OR IGNORE INTO blocks (did, cid, rev, data)"
        " SELECT did, cid, rev, data FROM fresh_blocks WHERE rowid <= ? ORDER BY did, cid",
        (mark,),
    )
    conn.execute("DELETE FROM fresh_blocks WHERE rowid <= ?", (mark,))
    return conn.execute("SELECT coalesce(max(rowid), 0) FROM fresh_blocks").fetchone()[0]


def put_record(
    conn: Any, did: str, collection: str, rkey: str, cid: CID, data: bytes, rev: str, now: str
) -> None:
    """Create or replace a record: its CID, its block's bytes, the rev that wrote it."""
    conn.execute(
        "INSERT INTO records (did, collection, rkey, cid, rev, indexed_at, data)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (did, collection, rkey) DO UPDATE SET cid = excluded.cid,"
        " rev = excluded.rev, indexed_at = excluded.indexed_at, data = excluded.data",
        (did, collection, rkey, cid.cid_bytes, rev, now, data),
    )


def delete_record(conn: Any, did: str, collection: str, rkey: str) -> None:
    conn.execute(
        "DELETE FROM records WHERE did = ? AND collection = ? AND rkey = ?",
        (did, collection, rkey),
    )


def get_record(conn: Any, did: str, collection: str, rkey: str) -> tuple[CID, bytes] | None:
    row = conn.execute(
        "SELECT cid, data FROM records WHERE did = ? AND collection = ? AND rkey = ?",
        (did, collection, rkey),
    ).fetchone()
    return (CID(row[0]), row[1]) if row else None


# A record taken down by an admin (leafpds/admin/takedowns.py) is left out of
# the com.atproto.repo reads; the table is nearly always empty, so the probe
# costs a lookup in one small B-tree.
_NOT_TAKEN_DOWN = (
    "NOT EXISTS (SELECT 1 FROM record_takedowns t"
    " WHERE t.did = r.did AND t.collection = r.collection AND t.rkey = r.rkey)"
)


def served_record(conn: Any, did: str, collection: str, rkey: str) -> tuple[CID, bytes] | None:
    """A record as com.atproto.repo.getRecord serves it: not if an admin took it down."""
    row = conn.execute(
        "SELECT cid, data FROM records r WHERE did = ? AND collection = ? AND rkey = ?"
        f" AND {_NOT_TAKEN_DOWN}",
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
    Records an admin took down are left out.
    """
    if reverse:
        order, compare = "ASC", ">"
    else:
        order, compare = "DESC", "<"
    where = f"did = ? AND collection = ? AND {_NOT_TAKEN_DOWN}"
    args: list[Any] = [did, collection]
    if cursor is not None:
        where += f" AND rkey {compare} ?"
        args.append(cursor)
    rows = conn.execute(
        f"SELECT rkey, cid, data FROM records r WHERE {where} ORDER BY rkey {order} LIMIT ?",
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


def iter_blocks(conn: Any, did: str, since: str | None = None) -> Iterator[tuple[CID, bytes]]:
    """
    Every block of the repo (newer than rev ``since`` if given): the settled
    ones, the fresh ones, then the records'.  Each comes once, but for a
    record's block whose bytes another record also has: it comes with each
    (CARv1 allows duplicates; readers keep one).  The cursors stream:
    SQLite steps to the next row only when asked.
    """
    newer = "" if since is None else " AND rev > :since"
    args = {"did": did, "since": since}
    queries = [
        f"SELECT cid, data FROM blocks WHERE did = :did{newer}",
        f"SELECT cid, data FROM fresh_blocks f WHERE did = :did{newer}"
        " AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.did = f.did AND b.cid = f.cid)",
        f"SELECT cid, data FROM records WHERE did = :did{newer}",
    ]
    for query in queries:
        for cid, data in conn.execute(query, args):
            yield CID(cid), data


def find_record_blocks(conn: Any, did: str, cids: Iterable[CID]) -> dict[CID, bytes]:
    """
    The blocks of the repo's records with these CIDs (those found).  Records
    are not indexed by CID (every create would pay for it): this reads the
    repo's records, once for every 500 CIDs.
    """
    wanted = sorted({cid.cid_bytes for cid in cids})
    found: dict[CID, bytes] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        for cid, data in conn.execute(
            f"SELECT cid, data FROM records WHERE did = ? AND cid IN ({marks})", (did, *chunk)
        ):
            found[CID(cid)] = data
    return found
