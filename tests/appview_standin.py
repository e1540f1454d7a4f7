"""
A stand-in AppView for tests: a real Twisted HTTP server on 127.0.0.1 that
checks every request's service JWT on its own, records what it received and
answers canned JSON.

Its DID is ``did:web:localhost%3A<port>``; ``/.well-known/did.json`` lists the
services ``#bsky_appview`` (``BskyAppView``) and ``#bsky_chat``
(``BskyChatService``), both at ``http://localhost:<port>``.

Every other request must carry ``Authorization: Bearer <service JWT>``.  The
token is verified independently of leafpds, with the atproto SDK
(``atproto_server.auth.jwt.verify_jwt``, keys resolved by
``atproto_identity``'s ``DidResolver`` from the PLC directory it is given):
the signature against the ``#atproto`` key of the issuer's DID document,
``aud`` = the stand-in's DID, ``lxm`` = the NSID in the path, ``exp`` present
and in the future, header ``typ`` ``JWT``.  A request that fails is answered
401 ``{"error": "BadJwt…", "message"}`` and recorded with ``error`` set.

Usage::

    appview = await StandInAppView.start(plc_url)
    appview.route("app.bsky.feed.getTimeline", headers={"atproto-repo-rev": rev})
    ...  # make leafpds call it (getServiceAuth token, the proxy)
    (seen,) = appview.received
    assert seen.claims["iss"] == did and seen.nsid == "app.bsky.feed.getTimeline"
    await appview.stop()

By default a verified request is answered 200 with JSON that echoes it:
``{"standin": did, "method", "path", "query", "iss", "lxm", "body"}`` (the
body decoded as UTF-8, or null).  :meth:`route` replaces that per NSID with
a given status, body, headers, delay, or a body streamed in chunks.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from atproto_identity.did.resolver import DidResolver
from atproto_server.auth.jwt import parse_jwt, verify_jwt
from atproto_server.exceptions import (
    TokenDecodeError,
    TokenExpiredSignatureError,
    TokenInvalidAudienceError,
    TokenInvalidSignatureError,
)
from twisted.internet import reactor as default_reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

log = Logger()


@dataclass
class Received:
    """One request as the stand-in saw it."""

    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    #: The verified JWT claims; None if the request was refused.
    claims: dict[str, Any] | None
    #: Why the token was refused (the error name answered), or None.
    error: str | None
    #: The caller closed the connection before the answer was complete.
    disconnected: bool = False

    @property
    def nsid(self) -> str | None:
        return self.path[len("/xrpc/") :] if self.path.startswith("/xrpc/") else None


@dataclass
class Route:
    """How to answer one NSID (see :meth:`StandInAppView.route`)."""

    status: int = 200
    #: dict/list: sent as JSON; bytes: sent as they are; None: the echo.
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: If set, the body is these chunks, written one reactor turn apart
    #: (a streamed answer, no content-length); ``body`` is then ignored.
    chunks: Iterable[bytes] | None = None
    #: The audience and method the token must name, if not this stand-in's
    #: DID and the called NSID (an AppView's getFeed takes a token for the
    #: feed generator, bound to getFeedSkeleton, to pass on).
    aud: str | None = None
    lxm: str | None = None


class TokenRefused(Exception):
    """A request's token is not good for the stand-in; ``name`` is the error it answers."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class StandInAppView:
    """See the module docstring.  Build with :meth:`start`."""

    def __init__(self, plc_url: str | None, reactor: Any = default_reactor) -> None:
        #: The PLC directory the issuers' DID documents come from; may be set
        #: after :meth:`start` (e.g. once a leafpds configured with this
        #: stand-in's DID has started its embedded directory).
        self.plc_url = plc_url
        self.reactor = reactor
        self.received: list[Received] = []
        self.routes: dict[str, Route] = {}
        self.port: int = 0
        self._listening: IListeningPort | None = None

    @classmethod
    async def start(cls, plc_url: str | None = None, reactor: Any = default_reactor) -> "StandInAppView":
        """Listen on 127.0.0.1, on a port of the system's choosing."""
        standin = cls(plc_url, reactor)
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        standin._listening = await endpoint.listen(Site(_Root(standin)))
        standin.port = standin._listening.getHost().port
        return standin

    async def stop(self) -> None:
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await listening.stopListening()

    @property
    def did(self) -> str:
        return f"did:web:localhost%3A{self.port}"

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def did_document(self) -> dict[str, Any]:
        return {
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": self.did,
            "service": [
                {"id": "#bsky_appview", "type": "BskyAppView", "serviceEndpoint": self.url},
                {"id": "#bsky_chat", "type": "BskyChatService", "serviceEndpoint": self.url},
            ],
        }

    def route(
        self,
        nsid: str,
        status: int = 200,
        body: Any = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        chunks: Iterable[bytes] | None = None,
        aud: str | None = None,
        lxm: str | None = None,
    ) -> None:
        """Answer verified calls of ``nsid`` this way from now on (see :class:`Route`)."""
        self.routes[nsid] = Route(status, body, dict(headers or {}), delay, chunks, aud, lxm)

    async def verify(
        self, authorization: str | None, nsid: str | None, aud: str | None = None, lxm: str | None = None
    ) -> dict[str, Any]:
        """
        The claims of the service JWT in ``authorization`` (the header's value)
        if it is valid for a call of ``nsid``; :class:`TokenRefused` otherwise.
        """
        if not authorization:
            raise TokenRefused("AuthMissing", "Authentication Required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenRefused("BadJwt", "Unexpected authorization type")
        token = token.strip()
        if self.plc_url is None:
            raise TokenRefused("BadJwt", "the stand-in was given no PLC directory to resolve issuers with")
        # The SDK's resolver is synchronous (httpx): it runs in a thread, while
        # the reactor keeps serving the PLC directory it asks.  No cache: a
        # key is always the one the directory has now.
        resolver = DidResolver(plc_url=self.plc_url, timeout=10)
        try:
            header = parse_jwt(token)[2]
        except TokenDecodeError as e:
            raise TokenRefused("BadJwt", str(e)) from None
        if header.get("typ") != "JWT" or header.get("alg") not in ("ES256K", "ES256"):
            raise TokenRefused("BadJwtType", f"unexpected JWT header {header}")
        try:
            payload = await deferToThread(
                verify_jwt, token, resolver.resolve_atproto_key, aud or self.did
            )
        except TokenExpiredSignatureError as e:
            raise TokenRefused("JwtExpired", str(e)) from None
        except TokenInvalidAudienceError as e:
            raise TokenRefused("BadJwtAudience", str(e)) from None
        except TokenInvalidSignatureError as e:
            raise TokenRefused("BadJwtSignature", str(e)) from None
        except Exception as e:  # undecodable claims, an unresolvable issuer
            raise TokenRefused("BadJwt", f"{type(e).__name__}: {e}") from None
        claims = payload.model_dump(exclude_none=True)
        if claims.get("exp") is None:
            raise TokenRefused("BadJwt", "the token has no exp")
        if claims.get("lxm") != (lxm or nsid):
            raise TokenRefused("BadJwtLexiconMethod", f"lxm {claims.get('lxm')!r} is not {lxm or nsid!r}")
        return claims

    def _record(self, request: Any) -> Received:
        target = urlsplit(request.uri.decode("latin-1"))
        request.content.seek(0)
        seen = Received(
            method=request.method.decode("latin-1"),
            path=target.path,
            query=parse_qs(target.query, keep_blank_values=True),
            headers={
                name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
                for name, values in request.requestHeaders.getAllRawHeaders()
            },
            body=request.content.read(),
            claims=None,
            error=None,
        )
        self.received.append(seen)
        return seen

    async def _serve(self, request: Any, seen: Received) -> None:
        try:
            route = self.routes.get(seen.nsid or "", Route())
            seen.claims = await self.verify(seen.headers.get("authorization"), seen.nsid, route.aud, route.lxm)
        except TokenRefused as refused:
            seen.error = refused.name
            _send_json(request, 401, {"error": refused.name, "message": str(refused)})
            return
        route = self.routes.get(seen.nsid or "", Route())
        if route.delay:
            await deferLater(self.reactor, route.delay, lambda: None)
        request.setResponseCode(route.status)
        for name, value in route.headers.items():
            request.setHeader(name, value)
        if route.chunks is not None:
            for chunk in route.chunks:
                request.write(chunk)
                await deferLater(self.reactor, 0, lambda: None)
            request.finish()
            return
        body = route.body
        if body is None:
            body = {
                "standin": self.did,
                "method": seen.method,
                "path": seen.path,
                "query": seen.query,
                "iss": seen.claims.get("iss"),
                "lxm": seen.claims.get("lxm"),
                "body": seen.body.decode("utf-8", "replace") if seen.body else None,
            }
        if isinstance(body, bytes):
            if not request.responseHeaders.hasHeader(b"content-type"):
                request.setHeader("content-type", "application/octet-stream")
            request.setHeader("content-length", str(len(body)))
            request.write(body)
            request.finish()
        else:
            _send_json(request, None, body)


def _send_json(request: Any, status: int | None, value: Any) -> None:
    data = json.dumps(value).encode("utf-8")
    if status is not None:
        request.setResponseCode(status)
    if not request.responseHeaders.hasHeader(b"content-type"):
        request.setHeader("content-type", "application/json; charset=utf-8")
    request.setHeader("content-length", str(len(data)))
    request.write(data)
    request.finish()


class _Root(Resource):
    isLeaf = True

    def __init__(self, standin: StandInAppView) -> None:
        super().__init__()
        self.standin = standin

    def render(self, request: Any) -> Any:
        if request.path == b"/.well-known/did.json":
            _send_json(request, 200, self.standin.did_document())
            return NOT_DONE_YET
        seen = self.standin._record(request)
        answer = ensureDeferred(self.standin._serve(request, seen))
        finished = request.notifyFinish()

        def gone(_: Failure) -> None:  # the caller went away
            seen.disconnected = True
            answer.cancel()

        finished.addErrback(gone)

        def failed(failure: Failure) -> None:
            if finished.called:
                return  # cancelled: nobody is listening
            log.failure("The stand-in AppView failed", failure)
            _send_json(request, 500, {"error": "StandInFailure", "message": str(failure.value)})

        answer.addErrback(failed)
        return NOT_DONE_YET
