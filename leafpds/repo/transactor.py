"""
The per-DID transactor: the only way a repository changes.

``apply_writes`` encodes the new records and takes the DID's
``DeferredLock``; under it, the commit is built (the writes applied to the
MST, loading only the nodes on the changed paths; the commit signed; the
firehose CAR assembled) and ONE unit of work is handed to the database
writer.  That unit stores the new blocks, deletes the ones no longer
reachable, updates the records index and the root, and appends the
``#commit`` frame to ``repo_seq`` — all in one transaction, so a crash leaves
either the old state or the new one.  Only after the commit does the caller's
Deferred fire and the listeners (the firehose) hear of it.

Where the commit is built is a matter of speed, never of correctness.  The
writer thread is the one resource every write shares, so a small commit is
built on the reactor thread from memory alone: the repo's head (commit,
data root, rev) as the last commit through this transactor left it, and MST
nodes from the shared node cache.  The writer's unit then only checks that
the stored root is still that head and writes rows; meanwhile the reactor
builds the next commits, so tree and signature work overlaps the writer's
SQL and COMMIT.  If the head is unknown or no longer current (a restart, an
import), a node is not in memory, the commit is big, or building it raised an
error, the unit builds it itself against exactly the rows its transaction
sees — the same code, the same result.
"""

import inspect
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from leafpds import crypto, syntax
from leafpds.db.pool import Database
from leafpds.errors import InsufficientStorage, InvalidRequest, InvalidSwap, RecordNotFound, RepoNotFound, XRPCError
from leafpds.ipld import codec
from leafpds.ipld.car import encode_car
from leafpds.ipld.cid import CID
from leafpds.repo import events, mst, reads, storage
from leafpds.repo.commit import parse_commit, sign_commit
from leafpds.repo.mst import MST, KeyExists, MissingBlock, apply_ops
from leafpds.tid import TIDClock
from leafpds.timestamps import now_iso

log = Logger()

#: Commits of at most this many writes are built on the reactor thread (some
#: tens of µs per write); bigger ones in the writer's unit, off the reactor.
INLINE_WRITES = 10

#: How many repos' heads the transactor remembers.
HEADS = 10_000

#: Every this many record writes (a commit counts one at least), the fresh
#: blocks that have outlived the previous settling move to the main table
#: (see leafpds.repo.storage).  By then most blocks those commits wrote are
#: gone already; the rest move in one batch.
SETTLE_EVERY = 128


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
    #: The new MST root.
    data: CID | None = field(default=None, repr=False)
    #: What the commit hooks asked to run once the commit is durable.
    after_commit: list[Callable[[], Any]] = field(default_factory=list, repr=False)
    #: The blocks the commit made unreachable (tree nodes, the old commit).
    removed: list[CID] = field(default_factory=list, repr=False)


class KeyProvider(Protocol):
    async def signing_key(self, did: str) -> crypto.Keypair: ...


#: ``hook(conn, did, rev, ops, writes)`` runs inside a commit's unit of work,
#: after the records the commit creates or updates are written and before
#: those it deletes are removed.  It may raise (an XRPCError) to refuse the
#: whole commit, and may return an action to run on the reactor once the
#: commit is durable.
CommitHook = Callable[[Any, str, str, list[AppliedOp], list[Write]], Callable[[], Any] | None]


class DIDLocks:
    """
    Per-DID mutual exclusion, held only while someone holds or waits for it.

    Most writes find their DID idle, so the uncontended path makes no
    Deferred: a DID's entry is the queue of those waiting behind its holder.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, deque[Deferred[None]]] = {}

    async def run(self, did: str, fn: Callable[[], Any]) -> Any:
        waiting = self._waiting.get(did)
        if waiting is None:
            self._waiting[did] = deque()
        else:
            turn: Deferred[None] = Deferred()
            waiting.append(turn)
            await turn  # a cancelled wait raises here, owning nothing
        try:
            return await fn()
        finally:
            self._release(did)

    def _release(self, did: str) -> None:
        waiting = self._waiting[did]
        while waiting:
            turn = waiting.popleft()
            if not turn.called:  # not cancelled: its holder goes on at once
                turn.callback(None)
                return
        del self._waiting[did]

    def __len__(self) -> int:
        return len(self._waiting)


class RepoTransactor:
    def __init__(self, db: Database, keys: KeyProvider, settle_every: int = SETTLE_EVERY) -> None:
        self.db = db
        self.keys = keys
        self.settle_every = settle_every
        self.locks = DIDLocks()
        # Thread-safe: revisions are drawn on the reactor and in writer units.
        self.revs = TIDClock()
        self.listeners: list[Callable[[list[tuple[int, bytes]]], None]] = []
        self.commit_hooks: list[CommitHook] = []
        #: Called with each apply_writes commit's seconds, from arrival to durable (metrics).
        self.observe_commit: Callable[[float], None] | None = None
        # DID -> (commit CID, MST root, rev) after its last commit through us,
        # least recently used first.  Only ever a hint: units check it.
        self._heads: OrderedDict[str, tuple[CID, CID, str]] = OrderedDict()
        # Writes since the last settling; the mark it returned; one at a time.
        self._unsettled = 0
        self._settle_mark = 0
        self._settling = False

    def forget(self, did: str) -> None:
        """Drop what is remembered of a repo that is gone (an admin deleted the account)."""
        self._heads.pop(did, None)

    def notify(self, appended: list[tuple[int, bytes]]) -> None:
        """
        Tell the listeners about events that have just been committed.  The
        commit is durable: whatever a listener does, the write stands and is
        acknowledged, so a listener's failure is logged, never raised.
        """
        for listener in self.listeners:
            try:
                listener(appended)
            except Exception:
                log.failure("A commit listener failed")

    async def create_repo(self, did: str, key: crypto.Keypair) -> CommitResult:
        """The genesis commit of an empty repo (the account row must exist)."""
        result = await self.db.write(self.create_repo_unit, did, key)
        self._remember(result)
        self._settle_now_and_then(1)
        self.notify(result.events)
        return result

    def create_repo_unit(
        self, conn: Any, did: str, key: crypto.Keypair, announce: bool = True
    ) -> CommitResult:
        """
        The genesis commit, as a unit of work for a larger transaction; with
        ``announce`` False, no firehose events (an account migrating in,
        whose repo is about to be imported).
        """
        if storage.read_root(conn, did) is not None:
            raise InvalidRequest(f"Repo already exists: {did}")
        diff = apply_ops(storage.SQLBlocks(conn, did), None, [])
        rev = self.revs.next()
        commit = sign_commit(did, diff.root, rev, key)
        commit_cid, commit_block = commit.to_block()
        now = now_iso()
        storage.put_blocks(conn, did, rev, [*diff.new_blocks.items(), (commit_cid, commit_block)])
        storage.write_root(conn, did, commit_cid, rev, now)
        if not announce:
            return CommitResult(did, commit_cid, rev, [], [], diff.root)
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
        return CommitResult(did, commit_cid, rev, [], appended, diff.root)

    async def apply_writes(
        self, did: str, writes: list[Write], swap_commit: CID | None = None
    ) -> CommitResult:
        if not writes:
            raise InvalidRequest("No writes given")
        started = time.perf_counter()
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
        for write, block in zip(writes, encoded):
            if block is not None and len(block[1]) > events.MAX_RECORD_BYTES:
                raise InvalidRequest(
                    f"Record is too large: {write.path} (max {events.MAX_RECORD_BYTES} bytes)"
                )
        key = await self.keys.signing_key(did)

        async def locked() -> CommitResult:
            built = self._build_inline(did, writes, encoded, swap_commit, key)
            try:
                result = await self.db.write(
                    self._commit_unit, did, writes, encoded, swap_commit, key, built
                )
            except BaseException:
                self._heads.pop(did, None)  # the next unit will read the truth
                raise
            # Still under the lock: the next writer of this DID starts here.
            self._remember(result)
            mst.shared_cache.discard(result.removed)  # garbage now: see discard
            return result

        result = await self.locks.run(did, locked)
        if self.observe_commit is not None:
            self.observe_commit(time.perf_counter() - started)
        self._settle_now_and_then(len(writes))
        self.notify(result.events)
        await _run_after_commit(result.after_commit)
        return result

    def known_rev(self, did: str) -> str | None:
        """The rev of ``did``'s last commit through this transactor, if remembered (a hint)."""
        head = self._heads.get(did)
        return head[2] if head is not None else None

    def _remember(self, result: CommitResult) -> None:
        self._heads[result.did] = (result.cid, result.data, result.rev)
        self._heads.move_to_end(result.did)
        if len(self._heads) > HEADS:
            self._heads.popitem(last=False)

    def _settle_now_and_then(self, writes: int) -> None:
        self._unsettled += writes
        if self._unsettled < self.settle_every or self._settling:
            return
        self._unsettled = 0
        self._settling = True
        self.db.write(storage.settle_blocks, self._settle_mark).addCallbacks(
            self._settled, self._settle_failed
        )

    def _settled(self, mark: int) -> None:
        self._settling = False
        self._settle_mark = mark

    def _settle_failed(self, failure: Any) -> None:
        # Nothing is lost: the blocks stay fresh until the next settling.
        self._settling = False
        if not failure.check(InsufficientStorage):  # a full disk is logged once, elsewhere
            log.failure("Settling fresh blocks failed", failure)

    def _build_inline(
        self,
        did: str,
        writes: list[Write],
        encoded: list[tuple[CID, bytes] | None],
        swap_commit: CID | None,
        key: crypto.Keypair,
    ) -> "_Built | None":
        """The commit built from memory alone, or None if the unit must build it."""
        head = self._heads.get(did)
        if head is None or len(writes) > INLINE_WRITES:
            return None
        base, base_data, base_rev = head
        try:
            return _build(
                _NO_BLOCKS, did, writes, encoded, swap_commit, key, base, base_data, base_rev,
                self.revs,
            )
        except (MissingBlock, XRPCError):
            # A node not in memory, or an error only the stored rows can
            # confirm (the head may be out of date).
            return None

    def _commit_unit(
        self,
        conn: Any,
        did: str,
        writes: list[Write],
        encoded: list[tuple[CID, bytes] | None],
        swap_commit: CID | None,
        key: crypto.Keypair,
        built: "_Built | None" = None,
    ) -> CommitResult:
        # In the commit's transaction: a deactivation a moment ago is seen.
        reads.check_writable(conn, did)
        # The usual case: the commit was built on the stored root.
        if built is not None and storage.advance_root(
            conn, did, built.base, built.commit_cid, built.rev, built.now
        ):
            return _store(conn, built, writes, self.commit_hooks)
        root = storage.read_root(conn, did)
        if root is None:
            raise RepoNotFound(f"Could not find repo: {did}")
        base, base_rev = root
        source = storage.SQLBlocks(conn, did)
        base_data = parse_commit(source.get_block(base)).data
        built = _build(
            source, did, writes, encoded, swap_commit, key, base, base_data, base_rev, self.revs
        )
        storage.write_root(conn, did, built.commit_cid, built.rev, built.now)
        return _store(conn, built, writes, self.commit_hooks)


async def _run_after_commit(actions: list[Callable[[], Any]]) -> None:
    # The commit stands whatever happens here: failures are only logged.
    for action in actions:
        try:
            outcome = action()
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.failure("An after-commit action failed")


class _NoBlocks:
    """A block source with nothing in it: the tree may use only cached nodes."""

    def get_block(self, cid: CID) -> bytes:
        raise MissingBlock(cid)


_NO_BLOCKS = _NoBlocks()


@dataclass(frozen=True)
class _Built:
    """A signed commit on top of ``base``, with everything needed to store it."""

    did: str
    base: CID
    base_data: CID
    base_rev: str
    ops: list[AppliedOp]
    commit_cid: CID
    data: CID
    rev: str
    now: str
    #: The blocks to store: the commit and the new tree nodes.
    new_blocks: dict[CID, bytes]
    #: The blocks of the records created or updated, by CID.
    records: dict[CID, bytes]
    #: Node blocks no longer reachable, and the old commit.
    removed: list[CID]
    #: The firehose event's blocks.
    car: bytes


def _build(
    source: Any,
    did: str,
    writes: list[Write],
    encoded: list[tuple[CID, bytes] | None],
    swap_commit: CID | None,
    key: crypto.Keypair,
    base: CID,
    base_data: CID,
    base_rev: str,
    revs: TIDClock,
) -> _Built:
    """Apply ``writes`` to the repo whose head is ``base``; sign the result."""
    if swap_commit is not None and swap_commit != base:
        raise InvalidSwap(f"Commit was at {base.encode()}")
    ops = _resolve_ops(MST.load(source, base_data), writes, encoded)
    try:
        diff = apply_ops(source, base_data, [(op.action, op.path, op.cid) for op in ops])
    except KeyExists as e:
        raise InvalidRequest(f"Record already exists: {e.args[0]}") from None
    rev = revs.next()
    if len(rev) != len(base_rev) or rev <= base_rev:
        # A stored rev from a clock running ahead of ours (TIDs of one length
        # compare as their numbers); decoding it is the exception.
        rev = revs.next_after(base_rev)
    commit_cid, commit_block = sign_commit(did, diff.root, rev, key).to_block()
    records = {e[0]: e[1] for e in encoded if e is not None}
    new_blocks = {commit_cid: commit_block, **diff.new_blocks}
    # The event carries the new blocks plus the proof nodes a relay needs to
    # verify (and invert) the ops; a dict keeps each block once.
    car = encode_car(
        commit_cid,
        {commit_cid: commit_block, **records, **diff.new_blocks, **diff.proof_blocks}.items(),
    )
    if len(car) > events.MAX_COMMIT_BLOCKS_BYTES:
        raise InvalidRequest("Commit is too large for the firehose; write fewer records at once")
    return _Built(
        did, base, base_data, base_rev, ops, commit_cid, diff.root, rev, now_iso(), new_blocks,
        records, [*diff.removed, base], car,
    )


def _store(
    conn: Any, built: _Built, writes: list[Write], hooks: list[CommitHook]
) -> CommitResult:
    """
    Write a built commit's rows (but the root, which the caller has moved) and
    its firehose event; run the commit hooks.
    """
    did, rev, now = built.did, built.rev, built.now
    storage.put_blocks(conn, did, rev, built.new_blocks.items())
    for op in built.ops:
        if op.action != "delete":
            storage.put_record(
                conn, did, op.collection, op.rkey, op.cid, built.records[op.cid], rev, now
            )
    after_commit = [
        action for hook in hooks if (action := hook(conn, did, rev, built.ops, writes)) is not None
    ]
    for op in built.ops:
        if op.action == "delete":
            storage.delete_record(conn, did, op.collection, op.rkey)
    storage.delete_blocks(conn, did, built.removed)
    appended = [events.append_event(conn, did, "#commit", {
        "repo": did,
        "commit": built.commit_cid,
        "rev": rev,
        "since": built.base_rev,
        "blocks": built.car,
        "ops": [_op_json(op) for op in built.ops],
        "blobs": [],
        "prevData": built.base_data,
        "rebase": False,
        "tooBig": False,
        "time": now,
    }, now)]
    return CommitResult(
        did, built.commit_cid, rev, built.ops, appended, built.data, after_commit, built.removed
    )


def _resolve_ops(
    tree: MST, writes: list[Write], encoded: list[tuple[CID, bytes] | None]
) -> list[AppliedOp]:
    """Check each write against the current tree; turn it into an MST op."""
    if all(w.action == "create" and w.swap_record is UNSET for w in writes):
        # The commonest commit needs no look-up: adding the keys to the tree
        # meets the first that exists already (KeyExists), in write order.
        return [
            AppliedOp("create", w.collection, w.rkey, block[0], None)
            for w, block in zip(writes, encoded)
        ]
    ops: list[AppliedOp] = []
    for write, block in zip(writes, encoded):
        existing = tree.get(write.path)
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
