"""A loopback HTTP server that serves whatever documents a test puts in it (OAuth client metadata, JWK sets)."""

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


@dataclass
class Document:
    body: bytes
    status: int = 200
    content_type: str = "application/json"
    # True: send headers, then never finish the body.
    hang: bool = False


class DocumentsServer(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.documents: dict[str, Document] = {}
        self.hits: dict[str, int] = {}
        self.port: Any = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def put(self, path: str, value: Any, **kw: Any) -> str:
        """Serve ``value`` (JSON-encoded unless bytes) at ``path``; returns its URL."""
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.documents[path] = Document(body, **kw)
        return self.origin + path

    def render_GET(self, request: Any) -> Any:
        path = request.path.decode()
        self.hits[path] = self.hits.get(path, 0) + 1
        doc = self.documents.get(path)
        if doc is None:
            request.setResponseCode(404)
            return b"not found"
        request.setResponseCode(doc.status)
        request.setHeader("content-type", doc.content_type)
        if doc.hang:
            request.write(doc.body[:1])
            return NOT_DONE_YET
        return doc.body

    @classmethod
    def start(cls) -> "DocumentsServer":
        server = cls()
        server.port = reactor.listenTCP(0, Site(server), interface="127.0.0.1")
        return server

    async def stop(self) -> None:
        await self.port.stopListening()
