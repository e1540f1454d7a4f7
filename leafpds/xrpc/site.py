"""
The ``twisted.web`` site: requests whose body grows past the limit are
answered 413 and cut off as soon as the limit is crossed, not after the whole
body has been buffered.
"""

import json

from twisted.web.resource import IResource
from twisted.web.server import Request, Site


class BodyLimitedRequest(Request):
    _received = 0
    _refused = False

    def _limit(self) -> int:
        return self.channel.site.max_body_size

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            super().gotLength(0)  # an empty buffer, never written to
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        # The request has not been dispatched yet, so answer on the raw
        # transport and close: nothing more of the body is read.
        self._refused = True
        body = json.dumps(
            {"error": "PayloadTooLarge", "message": "request entity too large"}
        ).encode()
        head = (
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"content-type: application/json; charset=utf-8\r\n"
            b"access-control-allow-origin: *\r\n"
            b"connection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        self.channel.transport.write(head + body)
        self.channel.transport.loseConnection()


class XRPCSite(Site):
    requestFactory = BodyLimitedRequest
    displayTracebacks = False

    def __init__(self, resource: IResource, max_body_size: int) -> None:
        super().__init__(resource)
        self.max_body_size = max_body_size
