"""
A loopback HTTP server that serves whatever documents a test puts in it
(OAuth client metadata, JWK sets); over TLS as ``https://app.localhost:<port>``
if asked, with a certificate of its own (``cert_pem``) that clients must be
told to trust.  (A name under ``localhost``, which is loopback too: the
official OAuth client wants an https ``client_id`` on a name that is
neither an IP address nor ``localhost`` itself.)
"""

import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from tests.tls_certs import self_signed

TLS_HOST = "app.localhost"


@implementer(IOpenSSLContextFactory)
class _ServerTLS:
    """The server side's TLS context (made from cryptography's objects, as pyOpenSSL now wants)."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self._context = SSL.Context(SSL.TLS_METHOD)
        self._context.use_certificate(x509.load_pem_x509_certificate(cert_pem))
        self._context.use_privatekey(load_pem_private_key(key_pem, None))

    def getContext(self) -> SSL.Context:
        return self._context


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
        self.cert_pem: bytes | None = None

    @property
    def origin(self) -> str:
        if self.cert_pem is not None:
            return f"https://{TLS_HOST}:{self.port.getHost().port}"
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
    def start(cls, tls: bool = False) -> "DocumentsServer":
        server = cls()
        if tls:
            server.cert_pem, key_pem = self_signed(TLS_HOST)
            server.port = reactor.listenSSL(0, Site(server), _ServerTLS(server.cert_pem, key_pem), interface="127.0.0.1")
        else:
            server.port = reactor.listenTCP(0, Site(server), interface="127.0.0.1")
        return server

    async def stop(self) -> None:
        await self.port.stopListening()
