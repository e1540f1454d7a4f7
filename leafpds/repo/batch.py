"""
Point reads that arrive together share one trip to a reader thread.

A hop to a database thread costs far more than SQLite's own work on one
row, so while one trip is under way the look-ups that arrive meanwhile
wait for it to end and then all go in the next trip, each answered
separately.  A look-up that finds the readers idle goes at once: a lone
client waits no longer than it would for a plain ``Database.read``.
"""

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from leafpds.db.pool import Coalescer, Database

T = TypeVar("T")

#: The most look-ups in one trip; more wait for the next.
MAX_BATCH = 64


class BatchedReads(Generic[T]):
    """
    ``get(*args)`` runs ``lookup(conn, *args)`` on a reader, sharing the trip
    (one read transaction) with the other look-ups pending at that moment.
    A look-up's exception fails only its own Deferred.
    """

    def __init__(self, db: Database, lookup: Callable[..., T], max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.lookup = lookup
        self._lookups: Coalescer[tuple, T] = Coalescer(self._trip, max_batch)

    def get(self, *args: Any) -> "Deferred[T]":
        return self._lookups.add(args)

    def _trip(self, batch: list[tuple], done: Callable[[Any], None]) -> None:
        self.db.read(_look_up_all, self.lookup, batch).addBoth(done)


def _look_up_all(conn: Any, lookup: Callable[..., Any], batch: list[tuple]) -> list[tuple[bool, Any]]:
    outcomes: list[tuple[bool, Any]] = []
    for args in batch:
        try:
            outcomes.append((True, lookup(conn, *args)))
        except Exception:
            outcomes.append((False, Failure()))
    return outcomes
