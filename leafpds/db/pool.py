"""
The database handle every layer above uses.

SQLite in WAL mode lets one writer and many readers work at once, so there
are two ``adbapi`` pools over the same file: a single-connection writer pool
(every write is serialized there, which is what SQLite does anyway) and a
small reader pool.  A hop to a pool thread costs far more than SQLite's own
work on a row, so callers pass a whole unit of work — one function that does
all of a request's reads or writes — and it runs in one hop, in one
transaction.
"""

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from leafpds.db import migrations

T = TypeVar("T")

# synchronous=NORMAL in WAL mode survives a killed process (only a power loss
# can lose the last transactions), at a fraction of FULL's fsync cost.
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
    "PRAGMA cache_size=-65536",
    "PRAGMA temp_store=MEMORY",
)


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

    def __init__(self, path: str | Path, readers: int = 3) -> None:
        self.path = Path(path)
        common = dict(
            database=str(self.path),
            isolation_level=None,
            check_same_thread=False,
            cp_openfun=_open,
            cp_noisy=False,
            cp_reconnect=False,
        )
        self._writer = adbapi.ConnectionPool("sqlite3", cp_min=1, cp_max=1, **common)
        self._readers = adbapi.ConnectionPool(
            "sqlite3", cp_min=1, cp_max=readers, **common
        )
        self._pending: list[tuple[Callable, tuple, Deferred]] = []
        self._writing = False

    def migrate(self) -> int:
        """
        Bring the schema up to date; call once at start-up before serving.

        Runs on the calling thread with its own connection, so the service
        refuses to start (rather than serve half-migrated) if it fails.
        """
        conn = connect(self.path)
        try:
            return migrations.migrate(conn)
        finally:
            conn.close()

    def write(self, fn: Callable[..., T], *args: Any) -> "Deferred[T]":
        """
        Run ``fn(conn, *args)`` in a write transaction.

        Units of work that arrive while the writer is busy are grouped into
        the next transaction (each inside its own savepoint, so one failing
        unit rolls back only itself): one thread hop and one commit serve
        them all.  Each caller's Deferred fires only after that commit.
        """
        d: Deferred[T] = Deferred()
        self._pending.append((fn, args, d))
        if not self._writing:
            self._flush()
        return d

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._writing = True
        units = [(fn, args) for fn, args, _ in batch]
        done = self._writer.runWithConnection(_run_batch, units)
        done.addBoth(self._batch_done, [d for _, _, d in batch])

    def _batch_done(self, outcome: Any, waiting: list[Deferred]) -> None:
        self._writing = False
        if isinstance(outcome, Failure):
            # The transaction as a whole failed (e.g. the commit itself).
            for d in waiting:
                d.errback(outcome)
        else:
            for d, (ok, result) in zip(waiting, outcome):
                if ok:
                    d.callback(result)
                else:
                    d.errback(result)
        if self._pending and not self._writing:
            self._flush()

    def read(self, fn: Callable[..., T], *args: Any) -> "Deferred[T]":
        return self._readers.runWithConnection(_in_transaction, "BEGIN", fn, args)

    def start(self) -> None:
        self._writer.start()
        self._readers.start()

    def close(self) -> None:
        self._writer.close()
        self._readers.close()


def _in_transaction(conn: Any, begin: str, fn: Callable[..., T], args: tuple) -> T:
    # adbapi commits after we return, or rolls back if we raise.
    conn.execute(begin)
    return fn(conn, *args)


def _run_batch(conn: Any, units: list[tuple[Callable, tuple]]) -> list[tuple[bool, Any]]:
    conn.execute("BEGIN IMMEDIATE")
    if len(units) == 1:
        fn, args = units[0]
        return [(True, fn(conn, *args))]  # a failure rolls back the transaction
    outcomes: list[tuple[bool, Any]] = []
    for fn, args in units:
        conn.execute("SAVEPOINT unit")
        try:
            result = fn(conn, *args)
        except Exception:
            outcomes.append((False, Failure()))
            conn.execute("ROLLBACK TO unit")
        else:
            outcomes.append((True, result))
        conn.execute("RELEASE unit")
    return outcomes
