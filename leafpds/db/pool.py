"""
The database handle every layer above uses.

SQLite in WAL mode lets one writer and many readers work at once.  Writes
go to one connection owned by a dedicated writer thread; reads go to a small
``adbapi`` pool of reader connections; a third thread copies the WAL back
into the database file (a checkpoint) so that the writer never has to.  A hop
to a database thread costs far more than SQLite's own work on a row, so
callers pass a whole unit of work — one function that does all of a
request's reads or writes — and it runs in one hop, in one transaction.
"""

import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from leafpds.db import affinity, migrations
from leafpds.db.space import DiskSpace, is_disk_full, refusal

T = TypeVar("T")
I = TypeVar("I")
log = Logger()

BUSY_TIMEOUT_MS = 10_000

# secure_delete: a deleted row's bytes are overwritten with zeros, and so are
# pages freed whole (which FAST would leave as they were), so a deleted
# account leaves nothing in the file (leafpds.admin.actions).  A commit
# frees few whole pages: bench/secure_delete.py measured the same bytes
# written per commit as OFF and FAST, within the noise in CPU.
# synchronous=NORMAL in WAL mode survives a killed process (only a power loss
# can lose the last transactions), at a fraction of FULL's fsync cost.
_PRAGMAS = (
    "PRAGMA secure_delete=ON",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA cache_size=-65536",
    "PRAGMA temp_store=MEMORY",
)

# The sqlite3 module passes str, int and float to SQLite as they are but
# looks every bytes parameter up as a candidate for adaptation, at the cost of
# two failed attribute look-ups (~0.3 us each; a commit binds some sixty CIDs
# and blocks).  An adapter registered for bytes turns that into one dict hit.
sqlite3.register_adapter(bytes, bytes)

# The writer never checkpoints (its commits would pay for copying pages and
# two fsyncs); the Checkpointer does it in its own thread.
_WRITER_PRAGMAS = ("PRAGMA wal_autocheckpoint=0",)


def connect(path: str | Path) -> sqlite3.Connection:
    """
    Open a connection configured as leafpds needs it.

    ``isolation_level=None`` hands transaction control to us: every unit of
    work opens its own ``BEGIN`` (``IMMEDIATE`` for writers), so a reader sees
    one consistent snapshot across all its statements.
    """
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    _open(conn)
    return conn


def _open(conn: sqlite3.Connection) -> None:
    for pragma in _PRAGMAS:
        conn.execute(pragma)


class Database:
    """
    Run units of work against ``leafpds.sqlite``.

    ``write(fn, *args)`` runs ``fn(conn, *args)`` in the writer thread inside
    a ``BEGIN IMMEDIATE … COMMIT`` (its changes rolled back if ``fn`` raises);
    ``read(fn, *args)`` runs it on a reader inside a read transaction.
    """

    def __init__(
        self,
        path: str | Path,
        readers: int = 3,
        reactor: IReactorFromThreads | None = None,
    ) -> None:
        self.path = Path(path)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._reader_count = readers
        self._readers = self._reader_pool()
        self.checkpointer = Checkpointer(self.path)
        self._writer = WriterThread(self.path, reactor, self.checkpointer.wrote)
        self._writes: Coalescer[tuple[Callable, tuple], Any] = Coalescer(self._submit)
        #: The data folder's disk (a write that does not fit marks it full).
        self.space = DiskSpace(self.path.parent, reactor)
        #: Set by :meth:`close`, cleared by :meth:`start`: units of work are then refused.
        self.closed = False

    def _reader_pool(self) -> adbapi.ConnectionPool:
        pool = adbapi.ConnectionPool(
            "sqlite3",
            database=str(self.path),
            isolation_level=None,
            check_same_thread=False,
            cp_min=0,
            cp_max=self._reader_count,
            cp_openfun=_open,
            cp_noisy=False,
            cp_reconnect=False,
        )
        # Its threads are started by the reactor, which may be pinned to one
        # CPU (see affinity), and the pool starts at once in a running
        # reactor: its first thread comes only once the factory is set.
        pool.threadpool.threadFactory = affinity.FreeThread
        pool.threadpool.adjustPoolsize(minthreads=1)
        return pool

    def migrate(self, steps: Sequence[str] | None = None) -> int:
        """
        Bring the schema up to date; call once at start-up before serving.

        Runs on the calling thread with its own connection, so the service
        refuses to start (rather than serve half-migrated) if it fails.
        """
        conn = connect(self.path)
        try:
            return migrations.migrate(conn, steps)
        finally:
            conn.close()

    def write(self, fn: Callable[..., T], *args: Any) -> "Deferred[T]":
        """
        Run ``fn(conn, *args)`` in a write transaction.

        Units of work that arrive while the writer is busy are grouped into
        the next transaction: one thread hop and one commit serve them all.
        If one of them fails, the group runs again with each unit inside its
        own savepoint, so a failing unit rolls back only itself: a unit may
        therefore run twice, and must do nothing but database work (an
        action for afterwards can be returned).  Each caller's Deferred fires
        only after the commit.
        """
        if self.closed:
            return fail(DatabaseClosed(self.path))
        return self._writes.add((fn, args))

    def read(self, fn: Callable[..., T], *args: Any) -> "Deferred[T]":
        # A stopped thread pool drops what it is given: the Deferred would never fire.
        if self.closed:
            return fail(DatabaseClosed(self.path))
        return self._readers.runWithConnection(_in_transaction, "BEGIN", fn, args)

    def purge(self) -> None:
        """
        Have the next checkpoint empty the WAL (truncate it to nothing), so
        that the pages earlier commits wrote there, deleted since, are gone
        from the disk too; called after an account's deletion.  Waits (in the
        checkpointer's thread) for readers older than the deletion; tried
        again until it succeeds.
        """
        self.checkpointer.purge()

    @property
    def pending_writes(self) -> int:
        """Units of work waiting for the writer (not counting those it is running)."""
        return len(self._writes.pending)

    def observe_write_batches(self, observe: Callable[[int], None]) -> None:
        """Have ``observe(units)`` called with the size of each write transaction."""
        self._writes.observe = observe

    def _submit(self, units: list[tuple[Callable, tuple]], done: Callable[[Any], None]) -> None:
        self._writer.submit(units, lambda outcome: done(self._no_room(outcome)))

    def _no_room(self, outcome: Any) -> Any:
        """
        The outcome with each "disk full" failure made the named error
        writers answer (:class:`~leafpds.errors.InsufficientStorage`, 507,
        never a 500), and the disk marked full.
        """
        if isinstance(outcome, Failure):
            return self._no_room_failure(outcome)
        if all(ok for ok, _ in outcome):
            return outcome
        return [(ok, result if ok else self._no_room_failure(result)) for ok, result in outcome]

    def _no_room_failure(self, failure: Failure) -> Failure:
        if not is_disk_full(failure.value):
            return failure
        self.space.filled(failure.value)
        return Failure(refusal())

    def start(self) -> None:
        """Start the threads; again after :meth:`close` too."""
        if self.closed:
            # Twisted's thread pools do not start again once stopped.
            self._readers = self._reader_pool()
            self.closed = False
        self.checkpointer.start()
        self._writer.start()
        self._readers.start()

    def share_cpu_with_caller(self, *pools: ThreadPool) -> int | None:
        """
        Pin the writer thread and the calling thread (the reactor's) to the
        CPU the caller is on, once started; the readers, the checkpointer and
        the threads of ``pools`` (which the caller starts) keep every CPU.
        Returns the CPU, or None where this cannot be done.  See
        :mod:`leafpds.db.affinity`.
        """
        if self._writer.thread is None:
            raise RuntimeError("start the database first")
        return affinity.pair_with_caller(self._writer.thread, pools)

    def close(self) -> None:
        """
        Finish the submitted writes and reads, then close every connection;
        until :meth:`start` again, units of work fail with :class:`DatabaseClosed`.
        """
        self._writer.stop()
        self._readers.close()
        self.checkpointer.stop()
        self.space.stop()
        self.closed = True


class DatabaseClosed(Exception):
    """A unit of work was given to a :class:`Database` that has been closed."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"the database {path} is closed")


class Coalescer(Generic[I, T]):
    """
    One trip at a time to another thread; items that arrive while a trip is
    under way all go in the next one (at most ``max_batch`` of them).

    ``send(items, done)`` starts a trip; it must call ``done(outcome)`` on the
    reactor with one ``(ok, result or Failure)`` per item, or a Failure of
    the whole trip, which then fails every item.  A caller whose Deferred was
    cancelled (it went away) is skipped.
    """

    def __init__(
        self, send: Callable[[list[I], Callable[[Any], None]], Any], max_batch: int | None = None
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._pending: list[tuple[I, Deferred[T]]] = []
        self._busy = False
        #: Called with the number of items of each trip, if set.
        self.observe: Callable[[int], None] | None = None

    @property
    def pending(self) -> list[tuple[I, "Deferred[T]"]]:
        """The items waiting for the next trip."""
        return self._pending

    def add(self, item: I) -> "Deferred[T]":
        d: Deferred[T] = Deferred()
        self._pending.append((item, d))
        if not self._busy:
            self._trip()
        return d

    def _trip(self) -> None:
        cut = self._max_batch or len(self._pending)
        batch, self._pending = self._pending[:cut], self._pending[cut:]
        self._busy = True
        if self.observe is not None:
            self.observe(len(batch))
        waiting = [d for _, d in batch]
        self._send([item for item, _ in batch], lambda outcome: self._done(outcome, waiting))

    def _done(self, outcome: Any, waiting: list[Deferred]) -> None:
        # Still busy while the callers hear back: what they add in their
        # callbacks gathers into one next trip, not a lone first one.
        try:
            if isinstance(outcome, Failure):
                outcome = [(False, outcome)] * len(waiting)
            for d, (ok, result) in zip(waiting, outcome):
                if d.called:
                    continue
                if ok:
                    d.callback(result)
                else:
                    d.errback(result)
        finally:
            self._busy = False
            if self._pending:
                self._trip()


class WriterThread:
    """
    The one thread that owns the write connection.

    It takes batches of units from a queue, runs each batch as one
    transaction, and hands the outcome back to the reactor with
    ``callFromThread``: one queue put and one wake-up each way, with none of
    a thread pool's bookkeeping on a path every write takes.
    """

    def __init__(
        self, path: Path, reactor: IReactorFromThreads, committed: Callable[[], None]
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._committed = committed
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        conn = connect(self.path)
        for pragma in _WRITER_PRAGMAS:
            conn.execute(pragma)
        self._thread = affinity.FreeThread(
            target=self._run, args=(conn,), name="leafpds-writer", daemon=True
        )
        self._thread.start()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def submit(self, units: list[tuple[Callable, tuple]], done: Callable[[Any], None]) -> None:
        """Run ``units`` in one transaction; then ``done(outcome)`` in the reactor."""
        self._queue.put((units, done))

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while (job := self._queue.get()) is not None:
                units, done = job
                try:
                    outcome: Any = _run_batch(conn, units)
                except BaseException:
                    outcome = Failure()
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                self._reactor.callFromThread(done, outcome)
                if not isinstance(outcome, Failure):
                    # After waking the reactor: the callers wait, the checkpoint can.
                    self._committed()
        finally:
            conn.close()


class Checkpointer:
    """
    Copies committed pages from the WAL into the database file, in its own
    thread and connection, so commits only append to the WAL.

    The writer calls :meth:`wrote` after each commit; the checkpointer then
    runs a PASSIVE checkpoint (which never blocks the writer or readers),
    at most once per ``interval`` seconds so that one copy serves many
    commits.  When a reader keeps the WAL from being reused and it grows past
    ``max_wal_pages``, a RESTART checkpoint waits for the readers (holding
    the writer off meanwhile) so the WAL starts over: its size stays bounded.
    """

    def __init__(self, path: Path, interval: float = 0.05, max_wal_pages: int = 16_384) -> None:
        self.path = path
        self.interval = interval
        self.max_wal_pages = max_wal_pages
        #: A purge waits this long for readers at most, tried again after ``purge_retry``.
        self.purge_wait = 0.2
        self.purge_retry = 1.0
        #: Checkpoints run so far (for tests and curiosity).
        self.runs = 0
        # Purges asked for, and the last of them done (counted, so that one
        # asked for while another runs gets a run of its own).
        self._purges_asked = 0
        self._purges_done = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        conn = connect(self.path)
        self._thread = affinity.FreeThread(
            target=self._run, args=(conn,), name="leafpds-checkpointer", daemon=True
        )
        self._thread.start()

    def wrote(self) -> None:
        self._wake.set()

    def purge(self) -> None:
        self._purges_asked += 1
        self._wake.set()

    @property
    def purging(self) -> bool:
        """Whether a purge is asked for and not done yet."""
        return self._purges_done < self._purges_asked

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._wake.set()
            self._thread.join()
            self._thread = None

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                self._wake.wait()
                if self._stopping.is_set():
                    return
                self._wake.clear()
                try:
                    self.checkpoint(conn)
                except sqlite3.Error as e:
                    # A full disk is said once, by the writes that meet it.
                    if not is_disk_full(e):
                        log.failure("WAL checkpoint failed; will try again after the next write")
                if self.purging:
                    # A reader held the purge off: again in a while, not at
                    # once (writers wait while it tries).
                    self._stopping.wait(self.purge_retry)
                    self._wake.set()
                # Let commits accumulate: one checkpoint copies each page once.
                self._stopping.wait(self.interval)
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """One checkpoint: (busy, WAL pages, pages copied), as SQLite reports it."""
        if self.purging:
            asked = self._purges_asked
            # It waits for readers of older snapshots, holding writers off
            # meanwhile: not for long (a long read, e.g. an export, wins).
            conn.execute(f"PRAGMA busy_timeout={int(self.purge_wait * 1000)}")
            try:
                result = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if not result[0]:
                self._purges_done = asked
            self.runs += 1
            return result
        result = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if result[1] >= self.max_wal_pages:
            result = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        self.runs += 1
        return result


def _in_transaction(conn: Any, begin: str, fn: Callable[..., T], args: tuple) -> T:
    # adbapi commits after we return, or rolls back if we raise.
    conn.execute(begin)
    return fn(conn, *args)


def _run_batch(
    conn: sqlite3.Connection, units: list[tuple[Callable, tuple]]
) -> list[tuple[bool, Any]]:
    conn.execute("BEGIN IMMEDIATE")
    if len(units) == 1:
        fn, args = units[0]
        outcomes = [(True, fn(conn, *args))]  # a failure rolls back the transaction
    else:
        # Optimistically, without savepoints: a savepoint copies every page a
        # unit first touches (~30 us of a commit's ~400).  If a unit fails,
        # the whole batch runs again, each unit in its own savepoint.
        try:
            outcomes = [(True, fn(conn, *args)) for fn, args in units]
        except Exception as e:
            if is_disk_full(e):
                raise  # no unit fits alone either (SQLite may have rolled back already)
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            outcomes = _run_isolated(conn, units)
    conn.execute("COMMIT")
    return outcomes


def _run_isolated(
    conn: sqlite3.Connection, units: list[tuple[Callable, tuple]]
) -> list[tuple[bool, Any]]:
    """Run each unit in its own savepoint: a failing one rolls back only itself."""
    outcomes: list[tuple[bool, Any]] = []
    for fn, args in units:
        conn.execute("SAVEPOINT unit")
        try:
            result = fn(conn, *args)
        except Exception as e:
            if is_disk_full(e):
                raise  # the transaction may be gone: the whole batch fails
            outcomes.append((False, Failure()))
            conn.execute("ROLLBACK TO unit")
        else:
            outcomes.append((True, result))
        conn.execute("RELEASE unit")
    return outcomes
