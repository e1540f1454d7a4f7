"""
Where an upload's body goes as it arrives.

The HTTP layer makes an :class:`UploadSpool` the request's ``content`` for
``uploadBlob``, so each chunk the client sends is written to a file in the
spool folder and hashed on its way: when the handler runs, the blob's CID,
size and first bytes (for sniffing its type) are already known, and the
file can be moved into the blob store without being read or copied again.
"""

import hashlib
import os
import secrets
from pathlib import Path

from leafpds.db.space import is_disk_full
from leafpds.ipld.cid import CID, RAW_PREFIX

#: How much of the start of a blob is kept for recognising its type.
HEAD_BYTES = 4096

#: Spool files end in this; anything else in the folder is left alone.
SUFFIX = ".upload"


class UploadSpool:
    """
    A write-once file that measures and hashes what is written to it.

    It is file-like enough for ``twisted.web`` (``write``, ``seek``,
    ``tell``, ``read``, ``close``).  Closing deletes the file unless the blob
    store has already taken it (moved it away), so an upload that is refused,
    abandoned or cut off leaves nothing behind.
    """

    def __init__(self, folder: Path) -> None:
        self.name = secrets.token_hex(16)
        self.path = folder / (self.name + SUFFIX)
        self._file = open(self.path, "xb+")
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.head = b""
        #: The error that stopped the writing when the disk filled up: the
        #: rest of the body is then only counted, and the upload refused.
        self.no_room: OSError | None = None

    def write(self, data: bytes) -> None:
        self._sha256.update(data)
        self.size += len(data)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        if self.no_room is None:
            self._guard(self._file.write, data)

    def _guard(self, fn, *args) -> None:
        # Raising here would drop the connection unanswered.
        try:
            fn(*args)
        except OSError as e:
            if not is_disk_full(e):
                raise
            self.no_room = e

    @property
    def cid(self) -> CID:
        """The CID of everything written so far (raw codec, sha2-256)."""
        return CID(RAW_PREFIX + self._sha256.digest())

    def flush(self) -> None:
        if self.no_room is None:
            self._guard(self._file.flush)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as e:  # what was still buffered did not fit
            if not is_disk_full(e):
                raise
        self.path.unlink(missing_ok=True)
