"""
The firehose fan-out: every event the transactor commits goes to each
subscriber's :class:`Outbox` (the same bytes for all), and a background job
prunes the log of events older than the kept window.
"""

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from leafpds.db.pool import Database
from leafpds.errors import InsufficientStorage
from leafpds.sequencer import log as seqlog
from leafpds.sequencer.outbox import FrameConsumer, Outbox
from leafpds.timestamps import iso_from_epoch

log = Logger()

PRUNE_BATCH = 1000
MAX_PRUNE_INTERVAL = 600.0


class Sequencer:
    """
    ``window``: seconds of events a cursor can replay; ``max_buffer``: bytes
    a subscriber's outbox may hold.  Replay reads pages of ``page_frames``
    frames, or about ``page_bytes``, one read each.
    """

    def __init__(
        self,
        db: Database,
        clock: Any,
        window: float,
        max_buffer: int,
        page_frames: int = 500,
        page_bytes: int = 1 << 20,
    ) -> None:
        self.db = db
        self.clock = clock
        self.window = window
        self.max_buffer = max_buffer
        self.page_frames = page_frames
        self.page_bytes = page_bytes
        self.outboxes: set[Outbox] = set()
        #: Frames handed to subscribers, and subscribers dropped as too slow (metrics).
        self.frames_sent = 0
        self.dropped = 0

    def committed(self, appended: list[tuple[int, bytes]]) -> None:
        """A transactor listener: events that have just been committed."""
        for outbox in list(self.outboxes):
            outbox.offer(appended)

    def subscribe(self, consumer: FrameConsumer, cursor: int | None) -> Outbox:
        """
        A new subscriber, from ``cursor`` (exclusive) or live only.  Nothing
        is sent to the consumer before this returns.
        """
        outbox = Outbox(self, consumer)
        self.outboxes.add(outbox)
        outbox.start(cursor)
        return outbox

    def disconnect_all(self) -> None:
        for outbox in list(self.outboxes):
            outbox.shut_down()

    def cutoff(self) -> str:
        """Events sequenced before this time are outside the kept window."""
        return iso_from_epoch(self.clock.seconds() - self.window)

    async def prune(self) -> int:
        """Delete the events older than the window, a batch per transaction."""
        cutoff = self.cutoff()
        total = 0
        while True:
            deleted = await self.db.write(seqlog.prune, cutoff, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    def service(self) -> "FirehoseService":
        interval = max(1.0, min(MAX_PRUNE_INTERVAL, self.window / 4))
        return FirehoseService(self, interval)


class FirehoseService(Service):
    """Prunes the log every ``interval`` seconds while running; on stop, closes every subscription."""

    def __init__(self, sequencer: Sequencer, interval: float) -> None:
        self.sequencer = sequencer
        self.interval = interval
        self._loop = LoopingCall(self._prune_logged)
        self._loop.clock = sequencer.clock
        self._running: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._running = self._loop.start(self.interval, now=True)

    def _prune_logged(self) -> Deferred:
        # A failure must not stop the loop for good.
        return ensureDeferred(self.sequencer.prune()).addErrback(self._prune_failed)

    def _prune_failed(self, failure) -> None:
        if not failure.check(InsufficientStorage):  # a full disk is logged once, elsewhere
            log.failure("Pruning the firehose log failed", failure)

    def stopService(self) -> Deferred:
        super().stopService()
        self.sequencer.disconnect_all()
        running, self._running = self._running, None
        if self._loop.running:
            self._loop.stop()
        # Fires once a prune under way has finished.
        return running if running is not None else succeed(None)
