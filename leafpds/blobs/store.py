"""
Where blob bytes live.

A :class:`BlobStore` holds each account's blobs by CID.  Every method is
asynchronous and reading is streamed, so a store on the network fits the
same interface as the disk store here (:mod:`leafpds.blobs.s3`).  Whether a
blob is temporary or permanent is the database's business (the ``blobs``
table): the store only ever holds complete blobs under their final names, so
making a blob permanent moves nothing.  That holds on S3 too: an upload is
whole and hashed in the local spool before the store sees it, so it goes
straight to its final key (see :mod:`leafpds.blobs.s3` for why that beats
the official PDS's ``tmp/`` then copy).
"""

import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from twisted.internet.threads import deferToThreadPool

from leafpds.ipld.cid import CID


class MissingBlobFile(Exception):
    """The store has no such blob."""


class BlobReader(Protocol):
    async def read(self, size: int) -> bytes:
        """Up to ``size`` more bytes; ``b""`` at the end."""

    async def close(self) -> None: ...


class BlobStore(Protocol):
    async def put(self, did: str, cid: CID, source: Path) -> None:
        """
        Store the complete file at ``source`` as ``did``'s blob ``cid`` and
        consume it (moved if possible).  The blob is never visible under its
        name before all of it is durably written.
        """

    async def open(
        self, did: str, cid: CID, offset: int = 0, length: int | None = None
    ) -> BlobReader:
        """
        Start reading a blob, from ``offset`` for ``length`` bytes (to the
        end if None; the caller checks the span against the blob's size);
        raises :class:`MissingBlobFile`.
        """

    async def delete(self, did: str, cid: CID) -> None:
        """Delete a blob; deleting one that is not there is not an error."""

    async def delete_all(self, did: str) -> None:
        """
        After its deletion, remove whatever the store still keeps for an
        account (after each of its blobs was deleted): the disk store its folder.
        """

    async def exists(self, did: str, cid: CID) -> bool: ...

    def redirect_url(self, did: str, cid: CID, mime_type: str) -> str | None:
        """A URL getBlob may redirect to instead of streaming the blob; None: stream it."""

    async def close(self) -> None:
        """Let go of connections (at shutdown)."""


def check_did(did: str) -> None:
    """
    DIDs have no "/" and never start with "."; refuse anything that could
    step out of the store's folder or key prefix all the same.
    """
    if "/" in did or did.startswith(".") or "\x00" in did:
        raise ValueError(f"not a DID: {did!r}")


class DiskBlobStore:
    """
    Blobs as files, ``<root>/<did>/<cid>``.

    A blob arrives as a finished file on the same file system (the upload
    spool); it is fsynced, then renamed into place, then its folder is
    fsynced: a crash leaves either no file under the blob's name or the whole
    blob.  File operations run in the reactor's thread pool.
    """

    def __init__(self, root: Path, reactor: Any) -> None:
        self.root = root
        self.reactor = reactor
        root.mkdir(parents=True, exist_ok=True)

    def path(self, did: str, cid: CID) -> Path:
        check_did(did)
        return self.root / did / cid.encode()

    def _in_thread(self, fn: Any, *args: Any) -> Any:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    async def put(self, did: str, cid: CID, source: Path) -> None:
        await self._in_thread(self._put, self.path(did, cid), source)

    def _put(self, target: Path, source: Path) -> None:
        with open(source, "rb") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name is
        folder = target.parent
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        os.replace(source, target)
        _fsync_dir(folder)

    async def open(
        self, did: str, cid: CID, offset: int = 0, length: int | None = None
    ) -> "DiskBlobReader":
        try:
            f = await self._in_thread(_open_at, self.path(did, cid), offset)
        except FileNotFoundError:
            raise MissingBlobFile(f"{did} {cid.encode()}") from None
        return DiskBlobReader(f, self, length)

    async def delete(self, did: str, cid: CID) -> None:
        await self._in_thread(self.path(did, cid).unlink, True)

    async def delete_all(self, did: str) -> None:
        # With any file a crash left there unreferenced (stored, never recorded).
        check_did(did)
        await self._in_thread(shutil.rmtree, self.root / did, True)

    async def exists(self, did: str, cid: CID) -> bool:
        return await self._in_thread(self.path(did, cid).is_file)

    def redirect_url(self, did: str, cid: CID, mime_type: str) -> None:
        return None

    async def close(self) -> None:
        pass


class DiskBlobReader:
    def __init__(self, f: BinaryIO, store: DiskBlobStore, length: int | None = None) -> None:
        self._file = f
        self._store = store
        self._left = length  # None: to the end

    async def read(self, size: int) -> bytes:
        if self._left is not None:
            size = min(size, self._left)
            if size <= 0:
                return b""
        chunk = await self._store._in_thread(self._file.read, size)
        if self._left is not None:
            self._left -= len(chunk)
        return chunk

    async def close(self) -> None:
        self._file.close()


def _open_at(path: Path, offset: int) -> BinaryIO:
    f = open(path, "rb")
    if offset:
        f.seek(offset)
    return f


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
