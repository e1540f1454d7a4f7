"""
The ``twisted.web`` site: requests whose body grows past the limit are
answered 413 and cut off as soon as the limit is crossed, not after the whole
body has been buffered.  Blob uploads have their own, larger limit, and
their body streams into an upload spool (hashed as it arrives) instead of
Twisted's buffer.  The access log goes out in batches.  :class:`SharedSite`
is the same site with a host application's resource beside leafpds's.
"""

import copy
import json
from collections.abc import Callable, Sequence
from typing import Any
from weakref import WeakSet

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import Request, Site

from leafpds.db.space import DiskSpace, is_disk_full, refusal
from leafpds.errors import InvalidRequest, PayloadTooLarge, XRPCError

#: The one method whose body is a blob.
UPLOAD_PATH = b"/xrpc/com.atproto.repo.uploadBlob"
#: The one method whose body is a whole repo (a CAR): spooled too, with its own limit.
IMPORT_PATH = b"/xrpc/com.atproto.repo.importRepo"

# Access log lines (Combined Log Format) go out as one log event per batch:
# a log event costs ~30 µs in the JSON log observer, a twentieth of a small
# request, while the line itself costs a few.
ACCESS_LOG_INTERVAL = 1.0  # seconds a line may wait
ACCESS_LOG_BATCH = 1000  # lines that are written at once without waiting

access_log = Logger(namespace="leafpds.access")

#: Seconds a connection may stay silent (a request's head or body not
#: arriving, or nothing after an answer) before it is dropped: Twisted's
#: default, kept.  The reference PDS (Node) holds half-open requests longer;
#: here each such connection costs a file descriptor for at most this long.
IDLE_TIMEOUT = 60

#: Seconds a request under way may take to finish once the service stops,
#: before its connection is cut.
CLOSE_GRACE = 10


def raw_answer(error: XRPCError, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """
    A whole HTTP/1.1 answer carrying ``error``, for writing straight to a
    connection that no request object answers (its writer then closes it).
    """
    body = json.dumps(error.to_json(), separators=(",", ":")).encode()
    lines = [
        f"HTTP/1.1 {error.status} {RESPONSES.get(error.status, b'Error').decode()}",
        "content-type: application/json; charset=utf-8",
        "access-control-allow-origin: *",
        "connection: close",
        f"content-length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + body


class BodyLimitedRequest(Request):
    _received = 0
    _refused = False
    _upload = False
    _max = 0

    def gotLength(self, length: int | None) -> None:
        site = self.channel.site
        # The body comes next, so the path decides now.  Twisted sets
        # Request.path only once the body is in; until then the channel
        # holds the request line's path.
        path = getattr(self.channel, "_path", b"").split(b"?", 1)[0]
        self._upload = site.is_upload(path)
        self._max = site.body_limit(path)
        if length is not None and length > self._max:
            super().gotLength(0)  # an empty buffer, never written to
            self._refuse(PayloadTooLarge("request entity too large"))
            return
        spool = self._open_spool(site) if self._upload else None
        if spool is not None:
            self.content = spool
        elif self._upload:
            super().gotLength(0)
            self._refuse(refusal())
        else:
            super().gotLength(length)

    def _open_spool(self, site: "XRPCSite") -> Any:
        """The upload's spool; None if the disk is full (nothing of the body would fit)."""
        if site.space is not None and site.space.full:
            return None
        try:
            return site.spool()
        except OSError as e:
            if not is_disk_full(e) or site.space is None:
                raise
            site.space.filled(e)
            return None

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._max:
            self._refuse(PayloadTooLarge("request entity too large"))
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self, error: XRPCError) -> None:
        # The request has not been dispatched yet, so answer on the raw
        # transport and close: nothing more of the body is read.
        self._refused = True
        self.channel.transport.write(raw_answer(error))
        self.channel.transport.loseConnection()


class XRPCChannel(HTTPChannel):
    """
    Twisted's HTTP/1.1 channel, except that the requests it refuses itself,
    before any resource sees them (a request line or header it cannot parse:
    a raw byte above 0xB0 or a control character in the path, NUL in a
    header value, headers over 16 KiB), are answered like every other error,
    with an XRPC error body instead of a bare status line.
    """

    #: Set once the service behind the site stops: the answer under way is the last.
    closing = False
    _closed: Deferred[None] | None = None

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own (private) hook for these refusals; the same effect.
        self.transport.write(raw_answer(InvalidRequest("Malformed HTTP request")))
        self.loseConnection()

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        if self.closing:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def connectionLost(self, reason: Any) -> None:
        self.site.forget(self)
        super().connectionLost(reason)
        if self._closed is not None:
            self._closed.callback(None)

    def close_when_idle(self) -> "Deferred[None]":
        """
        Close the connection now if no request is under way, else after its
        answer; the Deferred fires once it is closed.
        """
        if self._closed is None:
            self._closed = Deferred()
            self.closing = True
            self.persistent = False
            for request in self.requests:
                if not request.startedWriting:  # the client is told
                    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            if not self.requests:
                self.loseConnection()
        return self._closed


class XRPCSite(Site):
    """
    ``spool()`` makes the file an upload's (or a repo import's) body
    streams into (closing it must discard it); without one, they are
    ordinary bodies.  While ``space`` is full, they are refused (507)
    before their body is read.
    """

    requestFactory = BodyLimitedRequest
    # HTTP/1.1 only (TLS and HTTP/2 end at the reverse proxy), so the plain
    # channel rather than Twisted's default, which can switch to HTTP/2.
    protocol = XRPCChannel
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        max_body_size: int,
        max_blob_size: int | None = None,
        spool: Callable[[], Any] | None = None,
        space: DiskSpace | None = None,
        max_import_size: int | None = None,
    ) -> None:
        # XRPC parameters come from the query string only: never merge a
        # form-encoded body into request.args (nor read it all to do so).
        super().__init__(resource, timeout=IDLE_TIMEOUT, parsePOSTFormSubmission=False)
        self.max_body_size = max_body_size
        self.max_blob_size = max_body_size if max_blob_size is None else max_blob_size
        self.max_import_size = max_body_size if max_import_size is None else max_import_size
        self.spool = spool
        self.space = space
        self._access_lines: list[str] = []
        self._access_flush: IDelayedCall | None = None
        # Weak: a WebSocket takes its connection over and the channel is
        # never told it ended.
        self._channels: WeakSet[XRPCChannel] = WeakSet()

    def buildProtocol(self, addr: Any) -> XRPCChannel:
        channel = super().buildProtocol(addr)
        self._channels.add(channel)
        return channel

    def forget(self, channel: XRPCChannel) -> None:
        self._channels.discard(channel)

    def close_connections(self, grace: float = CLOSE_GRACE) -> "Deferred[None]":
        """
        Close the connections this site serves once their answer under way
        is sent (those still open after ``grace`` seconds are cut): the
        service behind it stops.  A client's next request then opens a new
        connection, to whatever listens by then, rather than reaching the
        stopped service on one kept alive.  Fires once they are closed.
        """
        # A connection a WebSocket took over is the WebSocket's to close.
        channels = [channel for channel in self._channels if channel.transport is not None]
        closed = gatherResults([channel.close_when_idle() for channel in channels])
        cut = self.reactor.callLater(grace, _abort, channels)
        return closed.addCallback(lambda _: cut.cancel() if cut.active() else None)

    def is_upload(self, path: bytes) -> bool:
        """Whether the body of a request for ``path`` goes to an upload spool."""
        return self.spool is not None and path in (UPLOAD_PATH, IMPORT_PATH)

    def body_limit(self, path: bytes) -> int:
        """The largest body a request for ``path`` may send."""
        if path == IMPORT_PATH:
            return self.max_import_size
        return self.max_blob_size if path == UPLOAD_PATH else self.max_body_size

    def log(self, request: Request) -> None:
        self._access_lines.append(self._logFormatter(self._logDateTime, request))
        if len(self._access_lines) >= ACCESS_LOG_BATCH:
            self.flush_access_log()
        elif self._access_flush is None:
            self._access_flush = self.reactor.callLater(ACCESS_LOG_INTERVAL, self.flush_access_log)

    def flush_access_log(self) -> None:
        """Write the waiting access log lines now."""
        if self._access_flush is not None and self._access_flush.active():
            self._access_flush.cancel()
        self._access_flush = None
        if self._access_lines:
            lines, self._access_lines = self._access_lines, []
            access_log.info("{requests}", requests="\n".join(lines))

    def stopFactory(self) -> None:
        self.flush_access_log()
        super().stopFactory()


def _abort(channels: list[XRPCChannel]) -> None:
    for channel in channels:
        if channel.transport is not None:
            channel.transport.abortConnection()


class SharedSite(XRPCSite):
    """
    leafpds beside a host application, on one site: a request for a path
    leafpds serves (``serves(path)``) goes to leafpds's resource, any other
    to ``host``, walked exactly as a site walks its root resource.  The
    choice is made on the site, not by a resource in front of both, because
    it must also be made before the body arrives: leafpds's limits and
    upload spool apply to its paths, ``host_max_body_size`` to the host's.
    """

    def __init__(
        self,
        resource: IResource,
        host: IResource,
        serves: Callable[[bytes], bool],
        max_body_size: int,
        max_blob_size: int | None = None,
        spool: Callable[[], Any] | None = None,
        host_max_body_size: int | None = None,
        space: DiskSpace | None = None,
        max_import_size: int | None = None,
    ) -> None:
        super().__init__(resource, max_body_size, max_blob_size, spool, space, max_import_size)
        self.host = host
        self.serves = serves
        self.host_max_body_size = max_body_size if host_max_body_size is None else host_max_body_size

    def body_limit(self, path: bytes) -> int:
        return super().body_limit(path) if self.serves(path) else self.host_max_body_size

    def getResourceFor(self, request: Request) -> IResource:
        # Site.getResourceFor, with the root chosen by the path.
        root = self.resource if self.serves(request.path) else self.host
        request.site = self
        request.sitepath = copy.copy(request.prepath)
        return getChildForRequest(root, request)
