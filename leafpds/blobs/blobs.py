"""
Blobs: uploads, the link between records and the blobs they reference,
serving, and collecting the ones nobody references.

A blob's life: ``uploadBlob`` streams it into a spool file, the store takes
that file under the blob's final name, and a ``blobs`` row marks it
temporary.  A commit whose records reference it makes it permanent, in the
commit's own transaction (see :meth:`Blobs.commit_hook`); a commit that
removes the last reference deletes the row, and the file once the commit is
durable.  Temporary blobs older than the grace period are collected by a
background job.

File changes and row changes for one blob are ordered by a lock per
(account, blob): an upload holds it while it stores the file and records the
row, a deletion while it checks there is still no row and deletes the file.
So a blob deleted while the same bytes are being uploaded again never loses
the new upload's file.
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from leafpds.blobs import index, sniff
from leafpds.blobs.spool import SUFFIX, UploadSpool
from leafpds.blobs.store import BlobStore
from leafpds.db.pool import Database
from leafpds.db.space import is_disk_full, refusal
from leafpds.errors import InsufficientStorage
from leafpds.ipld.cid import CID
from leafpds.repo.transactor import DIDLocks
from leafpds.timestamps import iso_from_epoch

log = Logger()

#: The collector runs this often at most (and at least twice per grace
#: period), so a temporary blob outlives its grace period by little.
MAX_COLLECT_INTERVAL = 60.0


class Blobs:
    def __init__(
        self, db: Database, store: BlobStore, spool_dir: Path, grace: float, reactor: Any
    ) -> None:
        self.db = db
        self.store = store
        self.spool_dir = spool_dir
        self.grace = grace
        self.reactor = reactor
        self.now: Callable[[], float] = reactor.seconds
        self.locks = DIDLocks()
        spool_dir.mkdir(parents=True, exist_ok=True)

    def new_spool(self) -> UploadSpool:
        """A file for an upload's body to stream into."""
        return UploadSpool(self.spool_dir)

    async def upload(self, did: str, spool: UploadSpool, content_type: str | None) -> dict[str, Any]:
        """Store a finished upload as a temporary blob of ``did``; its blob reference."""
        spool.flush()
        if spool.no_room is not None:
            self.db.space.filled(spool.no_room)
            raise refusal()
        cid, size = spool.cid, spool.size
        mime_type = sniff.mime_type(spool.head, content_type)

        async def locked() -> str:
            try:
                await self.store.put(did, cid, spool.path)
            except OSError as e:  # a new account's folder, on a full disk
                if not is_disk_full(e):
                    raise
                self.db.space.filled(e)
                raise refusal() from None
            try:
                return await self.db.write(
                    index.track_upload, did, cid, mime_type, size, spool.name,
                    iso_from_epoch(self.now()),
                )
            except BaseException:
                await self._delete_unless_held(did, cid)  # no row, no file
                raise

        stored_type = await self.locks.run(_key(did, cid), locked)
        return {"$type": "blob", "ref": cid, "mimeType": stored_type, "size": size}

    def commit_hook(
        self, conn: Any, did: str, rev: str, ops: Sequence[Any], writes: Sequence[Any]
    ) -> Callable[[], Any] | None:
        """
        A ``RepoTransactor`` commit hook: keeps the blob links in step with
        the records (refusing a commit that references a blob not uploaded);
        deletes the files of blobs no longer referenced once it is durable.
        """
        gone = index.apply_commit(conn, did, ops, writes)
        if not gone:
            return None
        return lambda: self._delete_files([(did, cid) for cid in gone])

    async def delete_account(self, did: str, cids: Sequence[CID]) -> None:
        """Delete a deleted account's blobs (their rows are gone) and what the store kept for it."""
        await self._delete_files([(did, cid) for cid in cids])
        await self.store.delete_all(did)

    async def collect_garbage(self) -> int:
        """Delete temporary blobs older than the grace period; how many."""
        uploaded_before = iso_from_epoch(self.now() - self.grace)
        expired = await self.db.write(index.expire_temporary, uploaded_before)
        await self._delete_files(expired)
        # Spool files a crash left behind (live uploads keep theirs fresh).
        await deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), _sweep, self.spool_dir,
            self.now() - self.grace,
        )
        return len(expired)

    def collector(self) -> TimerService:
        """The background job that runs :meth:`collect_garbage`."""
        interval = max(1.0, min(MAX_COLLECT_INTERVAL, self.grace / 2))
        service = TimerService(interval, self._collect_logged)
        service.clock = self.reactor
        return service

    def _collect_logged(self) -> Deferred:
        # A failure must not stop the TimerService's loop for good.
        return ensureDeferred(self.collect_garbage()).addErrback(self._collect_failed)

    def _collect_failed(self, failure: Any) -> None:
        if not failure.check(InsufficientStorage):  # a full disk is logged once, elsewhere
            log.failure("Collecting temporary blobs failed", failure)

    async def _delete_files(self, blobs: Sequence[tuple[str, CID]]) -> None:
        for did, cid in blobs:
            try:
                await self.locks.run(_key(did, cid), lambda: self._delete_unless_held(did, cid))
            except Exception:
                # The row is gone already: one blob the store would not
                # delete (S3 down) must not keep the others.
                log.failure("Could not delete blob {cid} of {did}", did=did, cid=cid.encode())

    async def _delete_unless_held(self, did: str, cid: CID) -> None:
        # The same bytes may have been uploaded again since the row went.
        if not await self.db.read(index.has_blob, did, cid):
            await self.store.delete(did, cid)


def _key(did: str, cid: CID) -> str:
    return f"{did} {cid.encode()}"


def _sweep(folder: Path, modified_before: float) -> None:
    for path in folder.glob("*" + SUFFIX):
        try:
            if path.stat().st_mtime < modified_before:
                path.unlink()
        except FileNotFoundError:
            pass  # its upload finished meanwhile

