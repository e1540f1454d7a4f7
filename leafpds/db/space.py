"""
Whether the data folder's disk has room.

A full disk shows itself as SQLite's ``SQLITE_FULL`` or an ``ENOSPC`` from
a file write.  Whoever meets one calls :meth:`DiskSpace.filled`: the state
turns full (logged once), the health check and the metrics say so, and
uploads are refused before their bodies are read.  Record writes are still
tried (one that fits still succeeds) and one that does not is answered 507
``InsufficientStorage``.  While full, the free space is looked at every
second; once it has grown by ``resume_margin`` the state is left (logged
once) — no restart needed.
"""

import errno
import os
import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from leafpds.errors import InsufficientStorage

log = Logger()

#: errno values that mean "no room": the disk, or the user's quota.
_NO_ROOM = frozenset((errno.ENOSPC, errno.EDQUOT))


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's or the OS's way of saying the disk is full."""
    if isinstance(error, InsufficientStorage):
        return True
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(error, OSError) and error.errno in _NO_ROOM


def refusal() -> InsufficientStorage:
    """The error a write or upload that does not fit is answered with."""
    return InsufficientStorage("The server's disk is full; try again later")


class DiskSpace:
    """The data folder's disk: free bytes, and whether it was found full."""

    def __init__(
        self,
        folder: Path,
        reactor: Any,
        check_interval: float = 1.0,
        resume_margin: int = 1 << 20,
    ) -> None:
        self.folder = folder
        self.reactor = reactor
        self.check_interval = check_interval
        self.resume_margin = resume_margin
        #: True from a write that did not fit until space comes back.
        self.full = False
        self._free_when_full = 0
        self._watch: LoopingCall | None = None

    def free_bytes(self) -> int:
        """Bytes an unprivileged process may still write on the folder's file system."""
        stat = os.statvfs(self.folder)
        return stat.f_bavail * stat.f_frsize

    def filled(self, error: BaseException | str) -> None:
        """A write did not fit (call on the reactor thread)."""
        if self.full:
            return
        self.full = True
        self._free_when_full = free = self.free_bytes()
        log.error(
            "The disk of the data folder {folder} is full ({free} bytes free; {error}): writes and "
            "uploads are answered 507 InsufficientStorage, reads go on. Free some space: writes "
            "resume by themselves.",
            folder=str(self.folder), free=free, error=str(error),
        )
        self._watch = LoopingCall(self._check)
        self._watch.clock = self.reactor
        self._watch.start(self.check_interval, now=False)

    def _check(self) -> None:
        free = self.free_bytes()
        if free < self._free_when_full + self.resume_margin:
            return
        self.full = False
        self.stop()
        log.info("The data folder's disk has room again ({free} bytes free): writes resume", free=free)

    def stop(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None
