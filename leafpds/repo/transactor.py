"""
The per-DID transactor: the only way a repository changes.

``apply_writes`` takes the DID's ``DeferredLock``, encodes the new records,
then hands ONE unit of work to the database writer.  That unit reads the
current root, applies the writes to the MST (loading only the nodes on the
changed paths), signs the commit, stores the new blocks, deletes the ones no
longer reachable, updates the records index and the root, and appends the
``#commit`` frame to ``repo_seq`` — all in one transaction, so a crash leaves
either the old state or the new one.  Only after the commit does the caller's
Deferred fire and the listeners (the firehose) hear of it.

Doing the MST and signing inside the writer's unit costs no extra thread hop
(the hop dominates: ~300 µs against ~100 µs of tree and signature work), keeps
the tree consistent with exactly the rows the transaction sees, and lets the
database group several DIDs' commits into one transaction.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import DeferredLock

from leafpds import crypto, syntax
from leafpds.db.pool import Database
from leafpds.errors import InvalidRequest, InvalidSwap, RecordNotFound, RepoNotFound
from leafpds.ipld import codec
from leafpds.ipld.car import encode_car
from leafpds.ipld.cid import CID
from leafpds.repo import events, storage
from leafpds.repo.commit import parse_commit, sign_commit
from leafpds.repo.mst import apply_ops
from leafpds.tid import TIDClock
from leafpds.timestamps import now_iso


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Write:
    """
    One record write.  ``action`` is ``create``, ``update``, ``put`` (create or
    update, decided under the lock) or ``delete``.  ``swap_record`` is the CID
    the record must have now (``None``: must not exist); UNSET skips the check.
    """

    action: str
    collection: str
    rkey: str
    record: Any = None
    swap_record: Any = UNSET

    @property
    def path(self) -> str:
        return f"{self.collection}/{self.rkey}"


@dataclass(frozen=True)
class AppliedOp:
    action: str  # create | update | delete
    collection: str
    rkey: str
    cid: CID | None
    prev: CID | None

    @property
    def path(self) -> str:
        return f"{self.collection}/{self.rkey}"


@dataclass(frozen=True)
class CommitResult:
    did: str
    cid: CID
    rev: str
    ops: list[AppliedOp]
    # (seq, frame) of every event the transaction appended, in order.
    events: list[tuple[int, bytes]] = field(repr=False)


class KeyProvider(Protocol):
    async def signing_key(self, did: str) -> crypto.Keypair: ...


class DIDLocks:
    """A ``DeferredLock`` per DID, made on demand and dropped when idle."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[DeferredLock, int]] = {}

    async def run(self, did: str, fn: Callable[[], Any]) -> Any:
        lock, users = self._locks.get(did, (None, 0))
        if lock is None:
            lock = DeferredLock()
        self._locks[did] = (lock, users + 1)
        try:
            await lock.acquire()
            try:
                return await fn()
            finally:
                lock.release()
        finally:
            lock, users = self._locks[did]
            if users == 1:
                del self._locks[did]
            else:
                self._locks[did] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class RepoTransactor:
    def __init__(self, db: Database, keys: KeyProvider) -> None:
        self.db = db
        self.keys = keys
        self.locks = DIDLocks()
        # Revisions are made only inside writer units, one at a time.
        self.revs = TIDClock()
        self.listeners: list[Callable[[list[tuple[int, bytes]]], None]] = []

    def notify(self, appended: list[tuple[int, bytes]]) -> None:
        """Tell the listeners about events that have just been committed."""
        for listener in self.listeners:
            listener(appended)

    async def create_repo(self, did: str, key: crypto.Keypair) -> CommitResult:
        """The genesis commit of an empty repo (the account row must exist)."""
        result = await self.db.write(self.create_repo_unit, did, key)
        self.notify(result.events)
        return result

    def create_repo_unit(self, conn: Any, did: str, key: crypto.Keypair) -> CommitResult:
        """The genesis commit, as a unit of work for a larger transaction."""
        if storage.read_root(conn, did) is not None:
            raise InvalidRequest(f"Repo already exists: {did}")
        diff = apply_ops(storage.SQLBlocks(conn, did), None, [])
        rev = self.revs.next()
        commit = sign_commit(did, diff.root, rev, key)
        commit_cid, commit_block = commit.to_block()
        now = now_iso()
        storage.put_blocks(conn, did, rev, [*diff.new_blocks.items(), (commit_cid, commit_block)])
        storage.write_root(conn, did, commit_cid, rev, now)
        appended = [
            events.append_event(conn, did, "#commit", {
                "repo": did,
                "commit": commit_cid,
                "rev": rev,
                "since": None,
                "blocks": encode_car(
                    commit_cid, [(commit_cid, commit_block), *diff.new_blocks.items()]
                ),
                "ops": [],
                "blobs": [],
                "rebase": False,
                "tooBig": False,
                "time": now,
            }, now),
            events.append_event(conn, did, "#sync", {
                "did": did,
                "blocks": encode_car(commit_cid, [(commit_cid, commit_block)]),
                "rev": rev,
                "time": now,
            }, now),
        ]
        return CommitResult(did, commit_cid, rev, [], appended)

    async def apply_writes(
        self, did: str, writes: list[Write], swap_commit: CID | None = None
    ) -> CommitResult:
        if not writes:
            raise InvalidRequest("No writes given")
        if len(writes) > events.MAX_COMMIT_OPS:
            raise InvalidRequest(f"Too many writes. Max: {events.MAX_COMMIT_OPS}")
        if len({w.path for w in writes}) != len(writes):
            raise InvalidRequest("A batch may write each record only once")
        for w in writes:
            if w.action not in ("create", "update", "put", "delete"):
                raise InvalidRequest(f"Unknown write action: {w.action!r}")
            try:
                syntax.validate_nsid(w.collection)
                syntax.validate_record_key(w.rkey)
            except syntax.InvalidSyntax as e:
                raise InvalidRequest(str(e)) from None
        # Encoding the records needs no lock and no database.
        encoded = [
            codec.encode_with_cid(w.record) if w.action != "delete" else None for w in writes
        ]
        key = await self.keys.signing_key(did)

        async def locked() -> CommitResult:
            return await self.db.write(self._commit_unit, did, writes, encoded, swap_commit, key)

        result = await self.locks.run(did, locked)
        self.notify(result.events)
        return result

    def _commit_unit(
        self,
        conn: Any,
        did: str,
        writes: list[Write],
        encoded: list[tuple[CID, bytes] | None],
        swap_commit: CID | None,
        key: crypto.Keypair,
    ) -> CommitResult:
        root = storage.read_root(conn, did)
        if root is None:
            raise RepoNotFound(f"Could not find repo: {did}")
        prev_commit_cid, prev_rev = root
        if swap_commit is not None and swap_commit != prev_commit_cid:
            raise InvalidSwap(f"Commit was at {prev_commit_cid.encode()}")
        source = storage.SQLBlocks(conn, did)
        prev_data = parse_commit(source.get_block(prev_commit_cid)).data

        ops = _resolve_ops(conn, did, writes, encoded)
        diff = apply_ops(source, prev_data, [(op.action, op.path, op.cid) for op in ops])
        rev = self.revs.next_after(prev_rev)
        commit_cid, commit_block = sign_commit(did, diff.root, rev, key).to_block()
        now = now_iso()

        record_blocks = {e[0]: e[1] for e in encoded if e is not None}
        new_blocks = {commit_cid: commit_block, **record_blocks, **diff.new_blocks}
        # The event carries the new blocks plus the proof nodes a relay needs to
        # verify (and invert) the ops; a dict keeps each block once.
        car = encode_car(commit_cid, {**new_blocks, **diff.proof_blocks}.items())
        if len(car) > events.MAX_COMMIT_BLOCKS_BYTES:
            raise InvalidRequest("Commit is too large for the firehose; write fewer records at once")

        storage.put_blocks(conn, did, rev, new_blocks.items())
        for op in ops:
            if op.action == "delete":
                storage.delete_record(conn, did, op.collection, op.rkey)
            else:
                storage.put_record(conn, did, op.collection, op.rkey, op.cid, rev, now)
        storage.delete_record_blocks(conn, did, [op.prev for op in ops if op.prev is not None])
        storage.delete_blocks(conn, did, [*diff.removed, prev_commit_cid])
        storage.write_root(conn, did, commit_cid, rev, now)

        appended = [events.append_event(conn, did, "#commit", {
            "repo": did,
            "commit": commit_cid,
            "rev": rev,
            "since": prev_rev,
            "blocks": car,
            "ops": [_op_json(op) for op in ops],
            "blobs": [],
            "prevData": prev_data,
            "rebase": False,
            "tooBig": False,
            "time": now,
        }, now)]
        return CommitResult(did, commit_cid, rev, ops, appended)


def _resolve_ops(
    conn: Any, did: str, writes: list[Write], encoded: list[tuple[CID, bytes] | None]
) -> list[AppliedOp]:
    """Check each write against the current records; turn it into an MST op."""
    ops: list[AppliedOp] = []
    for write, block in zip(writes, encoded):
        existing = storage.record_cid(conn, did, write.collection, write.rkey)
        if write.swap_record is not UNSET and write.swap_record != existing:
            found = existing.encode() if existing is not None else "null"
            raise InvalidSwap(f"Record was at {found}")
        action = write.action
        if action == "put":
            action = "update" if existing is not None else "create"
        if action == "create" and existing is not None:
            raise InvalidRequest(f"Record already exists: {write.path}")
        if action in ("update", "delete") and existing is None:
            raise RecordNotFound(f"Could not find record: {write.path}")
        cid = block[0] if block is not None else None
        ops.append(AppliedOp(action, write.collection, write.rkey, cid, existing))
    return ops


def _op_json(op: AppliedOp) -> dict[str, Any]:
    out: dict[str, Any] = {"action": op.action, "path": op.path, "cid": op.cid}
    if op.prev is not None:
        out["prev"] = op.prev
    return out

