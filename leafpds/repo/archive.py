"""
Whole repositories as CAR files: streamed export, verified import.

An import never holds the repo in memory.  The CAR is read a chunk at a
time into a staging database (a scratch SQLite file), every block checked
against its CID on the way; the tree is then walked from there, node by
node, checking its shape and that every record it names is present; the
verified repo finally replaces the account's in one write transaction,
copied row by row from the staging file.  Any fault before that commit
leaves the account as it was.
"""

import io
import os
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread, deferToThread

from leafpds.blobs import index
from leafpds.blobs.refs import find_blob_refs
from leafpds.blobs.spool import SUFFIX as SPOOL_SUFFIX
from leafpds.db.pool import Database
from leafpds.db.space import is_disk_full, refusal
from leafpds.errors import AuthenticationRequired, InvalidRequest, RepoNotFound
from leafpds.ipld import codec
from leafpds.ipld.car import CarError, CarReader, CarWriter
from leafpds.ipld.cid import CID
from leafpds.repo import storage
from leafpds.repo.commit import Commit, InvalidCommit, parse_commit, verify_commit
from leafpds.repo.mst import MST, InvalidMSTKey, InvalidMSTNode, MissingBlock, NodeCache, validate_key
from leafpds.timestamps import now_iso

# Export hands the consumer chunks of about this size.
CHUNK = 64 * 1024


async def export_repo(
    db: Database,
    reactor: IReactorFromThreads,
    did: str,
    write: Callable[[bytes], Any],
    since: str | None = None,
) -> None:
    """
    Stream the repo (or, with ``since``, the blocks newer than that rev) as a
    CAR whose root is the current commit.

    The export runs in one read transaction, so it is a consistent snapshot
    even while writes go on; it streams the blocks from cursors and hands ``write``
    (called in the reactor thread; it may return a Deferred to push back)
    one chunk at a time, so neither side holds the whole repo.
    """
    await db.read(_export_unit, reactor, did, write, since)


def _export_unit(
    conn: Any, reactor: IReactorFromThreads, did: str, write: Callable[[bytes], Any], since: str | None
) -> None:
    root = storage.read_root(conn, did)
    if root is None:
        raise RepoNotFound(f"Could not find repo for DID: {did}")
    commit_cid, _rev = root
    buffer: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        buffer.append(data)
        size += len(data)
        if size >= CHUNK:
            flush()

    def flush() -> None:
        nonlocal size
        if buffer:
            chunk = b"".join(buffer)
            buffer.clear()
            size = 0
            blockingCallFromThread(reactor, write, chunk)

    car = CarWriter(collect, commit_cid)
    # The commit first: readers that stop early still get the root.
    car.add(commit_cid, storage.SQLBlocks(conn, did).get_block(commit_cid))
    for cid, data in storage.iter_blocks(conn, did, since):
        if cid != commit_cid:
            car.add(cid, data)
    flush()


# -- import ----------------------------------------------------------------

#: Bytes of the CAR read at a time while staging.
READ_CHUNK = 256 * 1024
#: Rows written to the staging file per statement.
_BATCH = 1000
#: Decoded tree nodes kept while walking a staged tree (a few MB at most).
_WALK_CACHE = 4096

_STAGING_SCHEMA = """
    CREATE TABLE blocks (cid BLOB PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE nodes (cid BLOB PRIMARY KEY);
    CREATE TABLE records (collection TEXT NOT NULL, rkey TEXT NOT NULL, cid BLOB NOT NULL);
    CREATE TABLE links (blob_cid BLOB NOT NULL, collection TEXT NOT NULL, rkey TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StagedRepo:
    """A repo CAR read into a staging file (``path``) and verified there."""

    path: Path
    commit: Commit
    commit_cid: CID
    records: int

    def open(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)


class _StagedBlocks:
    """The staged blocks as the tree reads them; each node read is noted as kept."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get_block(self, cid: CID) -> bytes:
        row = self.conn.execute("SELECT data FROM blocks WHERE cid = ?", (cid.cid_bytes,)).fetchone()
        if row is None:
            raise KeyError(cid)
        self.conn.execute("INSERT OR IGNORE INTO nodes (cid) VALUES (?)", (cid.cid_bytes,))
        return row[0]


def stage_repo(car: IO[bytes], path: Path, did: str, did_key: str | None = None) -> StagedRepo:
    """
    Read the repo CAR ``car`` into a new staging file at ``path`` (the
    caller deletes it) and check everything: the CAR (varints, header,
    every block's hash), exactly one root, the root a commit of ``did``
    (signed by ``did_key`` if given), every MST node (form, order, layers,
    prefixes), and every record present and a DAG-CBOR map.  Raises
    InvalidRequest naming the first problem.  Blocking: run it in a thread.
    """
    conn = sqlite3.connect(path, check_same_thread=False)
    try:
        conn.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + _STAGING_SCHEMA)
        root = _stage_blocks(conn, car)
        row = conn.execute("SELECT data FROM blocks WHERE cid = ?", (root.cid_bytes,)).fetchone()
        if row is None:
            raise InvalidRequest("Invalid CAR file: the root commit block is missing")
        conn.execute("INSERT INTO nodes (cid) VALUES (?)", (root.cid_bytes,))
        try:
            commit = parse_commit(row[0]) if did_key is None else verify_commit(row[0], did_key)
        except InvalidCommit as e:
            raise InvalidRequest(f"Invalid commit: {e}") from None
        if commit.did != did:
            raise InvalidRequest(f"Invalid repo: the commit is for {commit.did}, not {did}")
        count = _stage_tree(conn, commit.data)
        conn.commit()
    finally:
        conn.close()
    return StagedRepo(path, commit, root, count)


def _stage_blocks(conn: sqlite3.Connection, car: IO[bytes]) -> CID:
    reader = CarReader()
    try:
        while chunk := car.read(READ_CHUNK):
            blocks = reader.feed(chunk)
            if reader.roots is not None and len(reader.roots) != 1:
                raise InvalidRequest(
                    f"Invalid CAR file: a repo has exactly one root, this has {len(reader.roots)}"
                )
            conn.executemany(
                "INSERT OR IGNORE INTO blocks (cid, data) VALUES (?, ?)",
                [(cid.cid_bytes, data) for cid, data in blocks],
            )
        reader.finish()
    except CarError as e:
        raise InvalidRequest(f"Invalid CAR file: {e}") from None
    assert reader.root is not None
    return reader.root


def _stage_tree(conn: sqlite3.Connection, data: CID) -> int:
    """Walk the staged tree in key order, noting its records and their blob links."""
    # A private, small cache: every node must come from this CAR, and the
    # walk must not hold the tree.
    tree = MST.load(_StagedBlocks(conn), data, cache=NodeCache(_WALK_CACHE))
    records: list[tuple[str, str, bytes]] = []
    links: list[tuple[bytes, str, str]] = []
    count = 0
    previous = ""

    def flush() -> None:
        conn.executemany("INSERT INTO records (collection, rkey, cid) VALUES (?, ?, ?)", records)
        conn.executemany("INSERT INTO links (blob_cid, collection, rkey) VALUES (?, ?, ?)", links)
        records.clear()
        links.clear()

    try:
        for key, cid in tree.walk():
            if key <= previous:
                raise InvalidMSTNode(f"MST keys out of order at {key!r}")
            previous = key
            validate_key(key)
            collection, rkey = key.split("/", 1)
            row = conn.execute("SELECT data FROM blocks WHERE cid = ?", (cid.cid_bytes,)).fetchone()
            if row is None:
                raise InvalidRequest(f"Invalid repo: record block missing for {key}")
            record = codec.decode(row[0])
            if not isinstance(record, dict):
                raise InvalidRequest(f"Invalid repo: record {key} is not a map")
            records.append((collection, rkey, cid.cid_bytes))
            links.extend((ref.cid.cid_bytes, collection, rkey) for ref in find_blob_refs(record))
            count += 1
            if len(records) >= _BATCH:
                flush()
        # The empty tree's one node is read only when its CID is asked for.
        tree.root_cid()
    except MissingBlock as e:
        missing = e.args[0].encode() if e.args and isinstance(e.args[0], CID) else "?"
        raise InvalidRequest(f"Invalid repo: MST node block missing: {missing}") from None
    except (InvalidMSTNode, InvalidMSTKey, codec.DecodeError) as e:
        raise InvalidRequest(f"Invalid repo: {e}") from None
    flush()
    return count


@dataclass(frozen=True)
class VerifiedRepo:
    """A repo read from a CAR and checked, whole in memory (for tests and tools)."""

    commit: Commit
    commit_cid: CID
    blocks: dict[CID, bytes]  # the commit and the tree's nodes
    records: list[tuple[str, str, CID, bytes]]  # (collection, rkey, CID, block)


def verify_repo_car(data: bytes, did: str, did_key: str) -> VerifiedRepo:
    """
    Check a repo CAR as an import does (signature included) and return it
    whole: for tests and tools that hold small repos, never for an import.
    """
    with tempfile.TemporaryDirectory() as scratch:
        staged = stage_repo(io.BytesIO(data), Path(scratch) / "staging.sqlite", did, did_key)
        conn = staged.open()
        try:
            blocks = {CID(cid): data for cid, data in conn.execute(_STAGED_NODES)}
            records = [
                (collection, rkey, CID(cid), data)
                for collection, rkey, cid, data in conn.execute(_STAGED_RECORDS)
            ]
        finally:
            conn.close()
    return VerifiedRepo(staged.commit, staged.commit_cid, blocks, records)


_STAGED_NODES = "SELECT b.cid, b.data FROM nodes n JOIN blocks b ON b.cid = n.cid"
_STAGED_RECORDS = (
    "SELECT r.collection, r.rkey, r.cid, b.data FROM records r JOIN blocks b ON b.cid = r.cid"
    " ORDER BY r.rowid"
)


async def import_repo(
    db: Database,
    did: str,
    car: bytes | IO[bytes] | Path,
    did_key: str | None = None,
    scratch: Path | None = None,
) -> StagedRepo:
    """
    Replace ``did``'s repo (its account must exist and not be taken down)
    with the one in ``car`` (bytes, a readable file, or a file's path), all
    or nothing.  The commit's signature is checked only if ``did_key`` is
    given: an account migrating in brings a repo signed by its old PDS's
    key, and the next write re-signs.  The staging file goes in ``scratch``
    (default: the system's temporary folder).  The records index and the
    records' blob links are rebuilt; no firehose event is emitted.
    """
    # Named as the spool's files are, so that one a crash leaves is swept.
    fd, name = tempfile.mkstemp(prefix="import-", suffix=".staging" + SPOOL_SUFFIX, dir=scratch)
    os.close(fd)  # SQLite takes the empty file for a new database
    path = Path(name)
    try:
        try:
            staged = await deferToThread(_stage_from, car, path, did, did_key)
        except (OSError, sqlite3.OperationalError) as e:
            if not is_disk_full(e):
                raise
            db.space.filled(e)
            raise refusal() from None
        await db.write(_store_imported, did, staged, now_iso())
        return staged
    finally:
        path.unlink(missing_ok=True)


def _stage_from(car: bytes | IO[bytes] | Path, path: Path, did: str, did_key: str | None) -> StagedRepo:
    if isinstance(car, bytes):
        return stage_repo(io.BytesIO(car), path, did, did_key)
    if isinstance(car, Path):
        with open(car, "rb") as f:
            return stage_repo(f, path, did, did_key)
    return stage_repo(car, path, did, did_key)


def _store_imported(conn: Any, did: str, staged: StagedRepo, now: str) -> None:
    # A unit may run twice (see Database.write): everything is read afresh
    # from the staging file each time.
    row = conn.execute("SELECT status FROM accounts WHERE did = ?", (did,)).fetchone()
    if row is None:
        raise RepoNotFound(f"Could not find account: {did}")
    if row[0] == "takendown":
        raise AuthenticationRequired("Account has been taken down", name="AccountTakedown")
    rev = staged.commit.rev
    source = staged.open()
    try:
        conn.execute("DELETE FROM record_blobs WHERE did = ?", (did,))
        conn.execute("DELETE FROM records WHERE did = ?", (did,))
        storage.delete_repo_blocks(conn, did)
        storage.put_blocks(
            conn, did, rev, ((CID(cid), data) for cid, data in source.execute(_STAGED_NODES)), settled=True
        )
        conn.executemany(
            "INSERT INTO records (did, collection, rkey, cid, rev, indexed_at, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (did, collection, rkey, cid, rev, now, data)
                for collection, rkey, cid, data in source.execute(_STAGED_RECORDS)
            ),
        )
        index.relink_imported(
            conn, did, source.execute("SELECT blob_cid, collection, rkey FROM links"), now
        )
    finally:
        source.close()
    storage.write_root(conn, did, staged.commit_cid, rev, now)
