"""
``com.atproto.sync.subscribeRepos`` over WebSocket, on the same port as the
rest of the API: the Klein route hands the upgrade request to Autobahn's
:class:`WebSocketResource`, which takes the connection over.  Each message is
one binary frame, exactly the bytes stored in the log.
"""

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from leafpds.errors import XRPCError
from leafpds.lexicon import Lexicons, ValidationError, validate_params
from leafpds.repo import events
from leafpds.sequencer.fanout import Sequencer
from leafpds.sequencer.outbox import CLOSE_POLICY, Outbox
from leafpds.web import incoming
from leafpds.xrpc.site import raw_answer

NSID = "com.atproto.sync.subscribeRepos"

log = Logger()

# The firehose is one-way: clients only send control frames (pongs, close),
# so what a client sends is held to this.  Autobahn's maxMessagePayloadSize
# would also cap what the server sends, and frames go up to the sync spec's
# 2,000,000 bytes of blocks; the limit is kept here instead.
MAX_INCOMING_MESSAGE = 64 * 1024
# A subscriber that fell behind needs time to read what was already sent
# before it reaches the error frame and the close.
CLOSE_HANDSHAKE_TIMEOUT = 10
PING_INTERVAL = 30
PING_TIMEOUT = 60


class FirehoseProtocol(WebSocketServerProtocol):
    """One subscriber: a :class:`~leafpds.sequencer.outbox.FrameConsumer`."""

    factory: "FirehoseFactory"
    outbox: Outbox | None = None
    _query: dict[str, list[str]]

    def sendHttpErrorResponse(
        self, code: int, reason: str, responseHeaders: list[tuple[str, str]] | None = None
    ) -> None:
        # A handshake Autobahn refuses (its failHandshake) is answered like
        # every other XRPC error, not with the reason in the status line.
        self.sendData(raw_answer(XRPCError(reason, name="InvalidRequest", status=code), responseHeaders or ()))

    def onConnect(self, request: ConnectionRequest) -> None:
        self._query = request.params

    def onOpen(self) -> None:
        # Like the reference PDS, bad parameters get an error frame.
        try:
            params = validate_params(self.factory.lexicons, NSID, self._query)
        except ValidationError as e:
            self.send(events.encode_error_frame("InvalidRequest", str(e)))
            self.close(CLOSE_POLICY, "InvalidRequest")
            return
        # The HTTP channel that read the upgrade request is still registered
        # as the transport's producer; from now on the outbox is.
        self.transport.unregisterProducer()
        self.outbox = self.factory.sequencer.subscribe(self, params.get("cursor"))
        self.transport.registerProducer(self.outbox, True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.outbox is not None:
            self.outbox.stopProducing()

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        if self.message_data_total_length > MAX_INCOMING_MESSAGE and self.state == self.STATE_OPEN:
            log.info("A firehose subscriber sent a message over {limit} bytes; dropping it", limit=MAX_INCOMING_MESSAGE)
            self.dropConnection(abort=True)

    def send(self, frame: bytes) -> None:
        # Once a close has begun (either side), frames have nowhere to go;
        # the outbox ends when the connection does (onClose).
        if self.state == self.STATE_OPEN:
            self.sendMessage(frame, isBinary=True)

    def close(self, code: int, reason: str) -> None:
        # sendClose() only takes the codes an application may choose (1000,
        # 3000-4999); a server also closes with 1001, 1008 and 1011.
        self.sendCloseFrame(code, reason.encode("utf-8")[:123])

    def drop(self) -> None:
        self.dropConnection(abort=True)


class FirehoseFactory(WebSocketServerFactory):
    protocol = FirehoseProtocol

    def __init__(self, sequencer: Sequencer, lexicons: Lexicons, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.sequencer = sequencer
        self.lexicons = lexicons
        self.setProtocolOptions(
            webStatus=False,
            maxFramePayloadSize=MAX_INCOMING_MESSAGE,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_TIMEOUT,
        )
        self.resource = WebSocketResource(self)

    def upgrade(self, request: IRequest) -> IResource:
        """The resource that takes over an upgrade request; XRPCError otherwise."""
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader("allow", "GET")
            raise XRPCError(
                f"Incorrect HTTP method ({request.method.decode()}) expected GET",
                name="InvalidRequest",
                status=405,
            )
        if (incoming.header(request, "upgrade") or "").strip().lower() != "websocket":
            request.setHeader("upgrade", "websocket")
            raise XRPCError(
                f"{NSID} is a subscription: connect with a WebSocket client",
                name="InvalidRequest",
                status=426,
            )
        # Autobahn would read bytes that are not UTF-8 as U+FFFD.
        incoming.query_args(request)
        return self.resource
