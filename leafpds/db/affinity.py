"""
The reactor and the database writer share one CPU.

Every commit crosses between the two threads twice: the reactor hands the
writer a unit of work, the writer hands back the outcome.  When they sit on
different CPUs, each crossing has to wake the other CPU from idle (an
inter-processor interrupt; in a VM, a trip through the hypervisor) and finds
its caches cold: a bare round trip measured 113–138 µs on the 2-CPU VM this
was built on, against 32–40 µs with both threads on one CPU.  The GIL lets
only one of them run Python at a time anyway, so sharing a CPU costs them
little.  Every other thread — the readers, the checkpointer, the reactor's
thread pool — keeps every CPU the process may use.

A new thread inherits the CPUs of the thread that starts it, and once paired
the reactor starts threads all the time (thread pools grow on demand): those
must be :class:`FreeThread` s, which give themselves back every CPU.

Linux only (``os.sched_setaffinity``); elsewhere, and on one CPU, nothing
changes.
"""

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from twisted.python.threadpool import ThreadPool

_SUPPORTED = hasattr(os, "sched_setaffinity")

#: The CPUs this process may use, as it started (before any pairing).
PROCESS_CPUS: frozenset[int] = frozenset(os.sched_getaffinity(0) if _SUPPORTED else ())


class FreeThread(threading.Thread):
    """A thread that may use every CPU of the process, whoever starts it."""

    def start(self) -> None:
        super().start()
        # From the starting thread, once the new one has its id: done before
        # anyone could pin it (the writer is pinned after it has started).
        if _SUPPORTED and self.native_id is not None and PROCESS_CPUS:
            try:
                os.sched_setaffinity(self.native_id, PROCESS_CPUS)
            except ProcessLookupError:
                pass  # it has already finished


def current_cpu() -> int | None:
    """The CPU the calling thread is running on, if the system says."""
    try:
        stat = Path("/proc/thread-self/stat").read_text()
    except OSError:
        return None
    # Field 39 ("processor"), counted after the parenthesised command name,
    # which may itself hold spaces.
    return int(stat.rsplit(")", 1)[1].split()[36])


def pair_with_caller(writer: threading.Thread, pools: Iterable[ThreadPool] = ()) -> int | None:
    """
    Pin the calling thread and ``writer`` to the CPU the caller is on; the
    threads ``pools`` start from now on are :class:`FreeThread` s.  Returns
    the CPU, or None if nothing was pinned.
    """
    if not _SUPPORTED or len(PROCESS_CPUS) < 2 or writer.native_id is None:
        return None
    cpu = current_cpu()
    if cpu not in PROCESS_CPUS:
        cpu = min(PROCESS_CPUS)
    for pool in pools:
        pool.threadFactory = FreeThread
    os.sched_setaffinity(0, {cpu})
    os.sched_setaffinity(writer.native_id, {cpu})
    return cpu
