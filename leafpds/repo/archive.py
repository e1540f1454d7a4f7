"""
Whole repositories as CAR files: streamed export, verified import.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread, deferToThread

from leafpds.db.pool import Database
from leafpds.errors import InvalidRequest, RepoNotFound
from leafpds.ipld import codec
from leafpds.ipld.car import CarError, CarWriter, read_car
from leafpds.ipld.cid import CID
from leafpds.repo import storage
from leafpds.repo.commit import Commit, InvalidCommit, verify_commit
from leafpds.repo.mst import (
    MST,
    InvalidMSTKey,
    InvalidMSTNode,
    MemoryBlockSource,
    MissingBlock,
    NodeCache,
)
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


@dataclass(frozen=True)
class VerifiedRepo:
    """A repo read from a CAR whose signature and whole tree have been checked."""

    commit: Commit
    commit_cid: CID
    blocks: dict[CID, bytes]  # the commit and the tree's nodes
    records: list[tuple[str, str, CID, bytes]]  # (collection, rkey, CID, block)


def verify_repo_car(data: bytes, did: str, did_key: str) -> VerifiedRepo:
    """
    Read a repo CAR and check everything: the CAR itself, the commit's
    signature by ``did_key`` for ``did``, every MST node (shape, order, layers,
    prefixes), and that every record block is present and a DAG-CBOR map.
    Raises InvalidRequest naming the first problem.
    """
    try:
        root, sections = read_car(data)
    except CarError as e:
        raise InvalidRequest(f"Invalid CAR file: {e}") from None
    if root is None:
        raise InvalidRequest("Invalid CAR file: no root")
    available = dict(sections)
    if root not in available:
        raise InvalidRequest("Invalid CAR file: the root commit block is missing")
    try:
        commit = verify_commit(available[root], did_key, did)
    except InvalidCommit as e:
        raise InvalidRequest(f"Invalid commit: {e}") from None
    # A private cache: every node must come from this CAR, not from memory.
    tree = MST.load(MemoryBlockSource(available), commit.data, cache=NodeCache())
    blocks = {root: available[root]}
    records = []
    try:
        tree.verify()
        blocks.update(tree.blocks())
        for key, cid in tree.walk():
            collection, rkey = key.split("/", 1)
            record = available.get(cid)
            if record is None:
                raise InvalidRequest(f"Invalid repo: record block missing for {key}")
            if not isinstance(codec.decode(record), dict):
                raise InvalidRequest(f"Invalid repo: record {key} is not a map")
            records.append((collection, rkey, cid, record))
    except (MissingBlock, InvalidMSTNode, InvalidMSTKey, codec.DecodeError) as e:
        raise InvalidRequest(f"Invalid repo: {e}") from None
    return VerifiedRepo(commit, root, blocks, records)


async def import_repo(db: Database, did: str, data: bytes, did_key: str) -> VerifiedRepo:
    """
    Replace ``did``'s repo (its account must exist) with the one in the CAR,
    all or nothing.  Checking runs in a thread (it is CPU work over every
    block); storing is one write transaction.
    """
    repo = await deferToThread(verify_repo_car, data, did, did_key)
    await db.write(_store_imported, did, repo)
    return repo


def _store_imported(conn: Any, did: str, repo: VerifiedRepo) -> None:
    if conn.execute("SELECT 1 FROM accounts WHERE did = ?", (did,)).fetchone() is None:
        raise RepoNotFound(f"Could not find account: {did}")
    rev = repo.commit.rev
    now = now_iso()
    conn.execute("DELETE FROM records WHERE did = ?", (did,))
    storage.delete_repo_blocks(conn, did)
    storage.put_blocks(conn, did, rev, repo.blocks.items(), settled=True)
    conn.executemany(
        "INSERT INTO records (did, collection, rkey, cid, rev, indexed_at, data)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (did, collection, rkey, cid.cid_bytes, rev, now, data)
            for collection, rkey, cid, data in repo.records
        ],
    )
    storage.write_root(conn, did, repo.commit_cid, rev, now)
