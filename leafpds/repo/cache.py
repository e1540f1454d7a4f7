"""
A bounded cache of records as ``getRecord`` answers them, kept on the
reactor thread, so that reading a record already read needs no thread hop.

Entries are keyed by ``(did, collection, rkey)`` and hold the record's CID
and the answer's bytes, encoded once.  The cache is only a copy of the
records index; it stays exact because:

- the transactor's commit hook names every record a commit changed, and the
  cache forgets them on the reactor once that commit is durable, before the
  writer's caller hears back (so a read after an acknowledged write misses);
- a fill from the database counts only if no commit forgot its key while
  the read was under way (:meth:`RecordCache.loading` hands out a ticket
  that :meth:`RecordCache.forget` voids), so a read that began before a
  commit never stores what that commit replaced.

Between a commit reaching the database and the reactor hearing of it, a
read may still get the previous record from the cache: the write has not
been acknowledged yet, so that read simply ran before it.

Anything else that changes what getRecord answers must call
:meth:`RecordCache.forget` or :meth:`RecordCache.forget_repo` too: the
admin's takedowns and account deletion (leafpds/admin/actions.py) do.

Only touch it from the reactor thread; the commit hook itself runs in the
writer's thread and returns the forgetting as an action for the reactor.
"""

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from leafpds.ipld.cid import CID

Key = tuple[str, str, str]

#: Bytes counted for each entry on top of its answer: the key's strings, the
#: CID and the dictionary slot (roughly what CPython spends on them).
ENTRY_OVERHEAD = 300


class RecordCache:
    """Least-recently-used ``(did, collection, rkey) -> (cid, answer)``, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[Key, tuple[CID, bytes]] = OrderedDict()
        # Key -> the ticket of the fill under way for it (the latest one).
        self._loading: dict[Key, object] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> tuple[CID, bytes] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def loading(self, key: Key) -> object:
        """A ticket for filling ``key``: take it *before* reading the database."""
        ticket = object()
        self._loading[key] = ticket
        return ticket

    def fill(self, key: Key, ticket: object, entry: tuple[CID, bytes] | None) -> None:
        """
        End a fill: store ``entry`` (None: the record is absent, nothing to
        store) unless a commit forgot ``key`` since ``ticket`` was taken.
        """
        if self._loading.get(key) is not ticket:
            return  # voided by a commit, or a later fill took over
        del self._loading[key]
        if entry is None:
            return
        cost = len(entry[1]) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= len(old[1]) + ENTRY_OVERHEAD
        self._entries[key] = entry
        self.size += cost
        while self.size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size -= len(evicted[1]) + ENTRY_OVERHEAD

    def forget(self, keys: Iterable[Key]) -> None:
        """Drop ``keys`` and void the fills under way for them."""
        for key in keys:
            self._loading.pop(key, None)
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.size -= len(entry[1]) + ENTRY_OVERHEAD

    def forget_repo(self, did: str) -> None:
        """Drop every record of ``did`` (a scan: only for rare admin changes)."""
        self.forget([key for key in [*self._entries, *self._loading] if key[0] == did])

    def commit_hook(
        self, conn: Any, did: str, rev: str, ops: Sequence[Any], writes: Sequence[Any]
    ) -> Callable[[], None]:
        """A ``RepoTransactor`` commit hook: forget the records the commit changes."""
        keys = [(did, op.collection, op.rkey) for op in ops]
        return lambda: self.forget(keys)
