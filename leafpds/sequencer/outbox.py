"""
One subscriber's view of the firehose: a replay from its cursor out of the
log, then the live events, without a gap or a duplicate, at the pace the
subscriber reads and within a bounded buffer.

The outbox is the push producer of the subscriber's connection: the
transport pauses it while its own write buffer is full.  While paused, live
events wait in the outbox's queue; when the queue would pass its byte limit
the subscriber is too slow, and is sent ``ConsumerTooSlow`` and closed.
Nobody else ever waits for it.

The cutover from replay to live: the outbox hears of live events from the
moment it subscribes, and holds them (``pending``) while it replays.  Each
event is committed before it is announced, so an event announced before a
page's read began is in that page's snapshot, and one announced after is
pending: once a page reaches the end of the log, the pending events after
the last replayed one complete the stream.  The pending buffer is bounded
too: if it overflows it is dropped, and the replay reads on from the log
before going live.
"""

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from leafpds.repo import events
from leafpds.sequencer import log as seqlog

if TYPE_CHECKING:
    from leafpds.sequencer.fanout import Sequencer

_log = Logger()

# WebSocket close codes (RFC 6455).  atproto servers close with "policy
# violation" after an error frame.
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011

OUTDATED_CURSOR = "Requested cursor is older than the events kept; some events are missing"


class FrameConsumer(Protocol):
    """Where an outbox's frames go: one subscriber's connection."""

    def send(self, frame: bytes) -> None:
        """Send one whole frame (a binary message)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection after what has been sent."""

    def drop(self) -> None:
        """Drop the connection at once, without a closing handshake."""


@implementer(IPushProducer)
class Outbox:
    """One subscription; made by :meth:`Sequencer.subscribe`."""

    def __init__(self, sequencer: "Sequencer", consumer: FrameConsumer) -> None:
        self._sequencer = sequencer
        self._consumer = consumer
        self.closed = False
        # The highest seq sent or queued: anything at or below it is a duplicate.
        self._last = 0
        self._paused = False
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        # Replay state.
        self._replaying = False
        self._reading = False
        self._caught_up = False
        self._pending: deque[tuple[int, bytes]] = deque()
        self._pending_bytes = 0
        self._missed = False

    @property
    def live(self) -> bool:
        """Whether the replay (if any) is over."""
        return not self._replaying and not self.closed

    def start(self, cursor: int | None) -> None:
        """Begin: live only without a cursor, else replay events after it first."""
        if cursor is None:
            return
        self._replaying = True
        self._reading = True
        seq = self._sequencer
        d = seq.db.read(seqlog.start, cursor, seq.cutoff(), seq.page_frames, seq.page_bytes)
        d.addCallbacks(self._started, self._read_failed)

    def offer(self, appended: Iterable[tuple[int, bytes]]) -> None:
        """Events just committed, in seq order."""
        if self.closed:
            return
        limit = self._sequencer.max_buffer
        if self._replaying:
            for seq, frame in appended:
                if self._pending_bytes + len(frame) > limit:
                    # Read them from the log instead.
                    self._pending.clear()
                    self._pending_bytes = 0
                    self._missed = True
                else:
                    self._pending.append((seq, frame))
                    self._pending_bytes += len(frame)
            return
        for seq, frame in appended:
            if seq <= self._last:
                continue
            waits = self._paused or self._queue
            if waits and self._queued_bytes + len(frame) > limit:
                self._sequencer.dropped += 1
                self.fail("ConsumerTooSlow", "Stream consumer too slow")
                return
            self._last = seq
            self._push(frame)

    def fail(self, error: str, message: str) -> None:
        """Send an error frame and close."""
        if self.closed:
            return
        self._close()
        if self._send(events.encode_error_frame(error, message)):
            self._consumer.close(CLOSE_POLICY, error)

    def shut_down(self) -> None:
        """The server is stopping."""
        if not self.closed:
            self._close()
            self._consumer.close(CLOSE_GOING_AWAY, "Server shutting down")

    # IPushProducer: the connection's transport drives these.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._queue and not self._paused and not self.closed:
            frame = self._queue.popleft()
            self._queued_bytes -= len(frame)
            self._send(frame)
        self._advance()

    def stopProducing(self) -> None:
        """The connection is gone."""
        if not self.closed:
            self._close()

    # Sending.

    def _push(self, frame: bytes) -> None:
        if self.closed:  # a send before this one failed
            return
        if self._paused or self._queue:
            self._queue.append(frame)
            self._queued_bytes += len(frame)
        else:
            self._send(frame)

    def _send(self, frame: bytes) -> bool:
        """
        Hand ``frame`` to the consumer; False if it could not take it.  A
        consumer that fails is dropped alone: its failure must reach neither
        the writer whose commit is being announced nor the other subscribers.
        """
        try:
            self._consumer.send(frame)
            self._sequencer.frames_sent += 1
        except Exception:
            _log.failure("A firehose subscriber could not take a frame; dropping it")
            self._close()
            try:
                self._consumer.drop()
            except Exception:
                _log.failure("Dropping a failed firehose subscriber failed")
            return False
        return True

    def _close(self) -> None:
        self.closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._pending.clear()
        self._sequencer.outboxes.discard(self)

    # Replaying.

    def _started(self, start: seqlog.Start | None) -> None:
        self._reading = False
        if self.closed:
            return
        if start is None:
            self.fail("FutureCursor", "Cursor in the future.")
            return
        if start.outdated:
            self._push(events.encode_frame("#info", {"name": "OutdatedCursor", "message": OUTDATED_CURSOR}))
        self._replayed(start.page)

    def _replayed(self, page: seqlog.Page) -> None:
        self._reading = False
        if self.closed:
            return
        # Replayed frames are paced by reading the next page only once these
        # are sent, so they bypass the live buffer's limit.
        for seq, frame in page.frames:
            self._last = seq
            self._push(frame)
        self._caught_up = not page.more
        self._advance()

    def _advance(self) -> None:
        """While replaying, once the consumer has taken all: read on, or go live."""
        if not self._replaying or self._reading or self._paused or self._queue or self.closed:
            return
        if self._caught_up and not self._missed:
            self._go_live()
            return
        # An overflow from here on must be noticed after this read.
        self._missed = False
        self._reading = True
        seq = self._sequencer
        d = seq.db.read(seqlog.page, self._last, seq.page_frames, seq.page_bytes)
        d.addCallbacks(self._replayed, self._read_failed)

    def _go_live(self) -> None:
        pending = self._pending
        self._pending = deque()
        self._pending_bytes = 0
        self._replaying = False
        # At most the buffer's limit, into an empty queue: this cannot overflow.
        self.offer(pending)

    def _read_failed(self, failure: Failure) -> None:
        self._reading = False
        _log.failure("Reading the firehose log failed", failure)
        if not self.closed:
            self._close()
            if self._send(events.encode_error_frame("InternalServerError", "Internal Server Error")):
                self._consumer.close(CLOSE_INTERNAL_ERROR, "Internal Server Error")
