"""
Service proxying: an XRPC method leafpds does not serve itself is forwarded,
on the authenticated caller's behalf, to the service that does — the one an
``atproto-proxy: <did>#<service id>`` header names, else the configured
AppView (reports to the report service) — with a service JWT in place of the
caller's own token, as the official PDS does.

Both bodies stream: the request's from Twisted's buffer (already held to
the site's body limit), the answer's at the pace the client reads it (the
upstream connection is paused while the client's is full), so a large feed
or image never sits whole in memory.  Upstream errors are re-made as XRPC
errors; an upstream that cannot be reached or does not answer in time is 502
``UpstreamFailure``, never a hang.

A target named by a header is a stranger's choice: its DID document and its
endpoint are reached only on vetted public addresses
(:mod:`leafpds.outbound`) unless ``--allow-private-services``.
"""

import json
import time
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IRequest, IResponse
from zope.interface import implementer

from leafpds.accounts.service_auth import check_proxied_method, is_protected
from leafpds.app import AppContext
from leafpds.errors import InvalidRequest, InvalidToken, UpstreamFailure, XRPCError
from leafpds.identity.dids import service_endpoint
from leafpds.oauth.requirements import check_rpc
from leafpds.outbound import PinnedEndpointFactory, Refused, SystemResolver, read_bounded, vetted_address
from leafpds.web import incoming
from leafpds.repo import reads
from leafpds.xrpc import auth, readafterwrite
from leafpds.xrpc.registry import ANSWERED, Answered, XRPCContext

log = Logger()

REPORT_METHOD = "com.atproto.moderation.createReport"

# What goes up besides the body and the service JWT, and what comes back.
FORWARDED_REQUEST_HEADERS = ("accept-language", "atproto-accept-labelers", "x-bsky-topics")
BODY_HEADERS = ("content-type", "content-encoding")
CONTENT_HEADERS = (b"content-type", b"content-language", b"content-encoding")
RETURNED_HEADERS = (b"atproto-repo-rev", b"atproto-content-labelers", b"retry-after")

# An error answer is read whole to re-make it; nothing sane is bigger.
MAX_ERROR_BODY = 64 * 1024
# A query leafpds makes for itself (getFeedGenerator).
MAX_QUERY_ANSWER = 1024 * 1024

# XRPC's names for the statuses an upstream may answer.
STATUS_NAMES = {
    400: "InvalidRequest",
    401: "AuthenticationRequired",
    403: "Forbidden",
    404: "XRPCNotSupported",
    406: "NotAcceptable",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    429: "RateLimitExceeded",
    500: "InternalServerError",
    501: "MethodNotImplemented",
    502: "UpstreamFailure",
    503: "NotEnoughResources",
    504: "UpstreamTimeout",
}


@dataclass(frozen=True)
class Target:
    """Where a call goes: the service's URL (no trailing slash), DID and service id (``#bsky_appview``)."""

    url: str
    did: str
    #: Named by the caller: reached on vetted public addresses only.
    untrusted: bool
    service_id: str = ""

    @property
    def aud(self) -> str:
        """``did#service``, as OAuth's ``rpc:`` permissions name a service."""
        return self.did + self.service_id


class Proxy:
    """
    Forwards calls; one per server.  ``headers_timeout``: seconds for the
    upstream to answer with its status line and headers; ``idle_timeout``:
    seconds the upstream may then go without sending while the client waits.
    """

    def __init__(
        self,
        app: AppContext,
        *,
        headers_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.reactor = app.reactor
        self.headers_timeout = headers_timeout
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        settings = app.settings
        self.allow_private = settings.allow_private_services
        self.appview = Target(settings.appview_url, settings.appview_did, untrusted=False, service_id="#bsky_appview")
        self.reports = Target(
            settings.report_service_url, settings.report_service_did, untrusted=False, service_id="#atproto_labeler"
        )
        # One pool for every upstream: an AppView connection serves many calls.
        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self.pool.maxPersistentPerHost = 16
        self._trusted = Agent(self.reactor, pool=self.pool, connectTimeout=connect_timeout)
        self._dns: Any = None

    async def stop(self) -> None:
        """Close the idle connections and stop the DNS clients' timers."""
        if self._dns is not None:
            self._dns.stop()
        await self.pool.closeCachedConnections()

    # Choosing the target.

    async def target(self, request: IRequest, nsid: str) -> Target:
        """The service for this call: the header's, else the default for ``nsid``."""
        header = incoming.header(request, "atproto-proxy")
        if header:
            return await self._from_header(header)
        return self.reports if nsid == REPORT_METHOD else self.appview

    async def _from_header(self, header: str) -> Target:
        # The official PDS's checks, in its order and words.
        hash_index = header.find("#")
        if hash_index == 0:
            raise InvalidRequest("no did specified in proxy header")
        if hash_index == -1 or hash_index == len(header) - 1:
            raise InvalidRequest("no service id specified in proxy header")
        if header.find("#", hash_index + 1) != -1:
            raise InvalidRequest("invalid proxy header format")
        if " " in header:
            raise InvalidRequest("proxy header cannot contain spaces")
        did, service_id = header[:hash_index], header[hash_index:]
        # The configured AppView is reached as configured, not resolved.
        if did == self.appview.did and service_id == "#bsky_appview":
            return self.appview
        doc = await self.app.dids.resolve(did)
        if doc is None:
            raise InvalidRequest("could not resolve proxy did")
        url = service_endpoint(doc, service_id)
        if url is None:
            raise InvalidRequest("could not resolve proxy did service url")
        return Target(url, did, untrusted=True, service_id=service_id)

    # Forwarding.

    async def forward(self, ctx: XRPCContext, *, aud: str | None = None, lxm: str | None = None) -> Answered:
        """
        Forward the call ``ctx`` stands for and write the answer.  ``aud``
        and ``lxm`` replace the service JWT's audience and method (``getFeed``).
        """
        request, nsid = ctx.request, ctx.nsid
        if request.method not in (b"GET", b"HEAD", b"POST"):
            raise InvalidRequest("XRPC requests only supports GET and POST")
        if is_protected(nsid):
            raise InvalidToken("Bad token method")
        credentials = ctx.auth if ctx.auth is not None else await auth.access(ctx)
        target = await self.target(request, nsid)
        self.authorize(credentials, nsid, target)
        token = await self.app.service_auth.token(credentials.did, aud or target.did, lxm or nsid)
        mergeable = nsid in readafterwrite.MERGES and request.method == b"GET"
        response = await self.call(target, request, token, identity=mergeable)
        if response.code >= 400:
            raise await _upstream_error(request, response)
        if mergeable and await self._merged(ctx, credentials.did, response):
            return ANSWERED
        request.setResponseCode(response.code)
        _copy_headers(response, request, CONTENT_HEADERS + RETURNED_HEADERS)
        if response.length is not UNKNOWN_LENGTH:
            # Twisted keeps the upstream's Content-Length out of its headers.
            request.setHeader("content-length", str(response.length))
        await self.relay(response, request)
        return ANSWERED

    def authorize(self, credentials: auth.Caller, nsid: str, target: Target) -> None:
        """
        May ``credentials`` have ``nsid`` forwarded to ``target``?  A session
        as :func:`check_proxied_method` says; an OAuth grant if it allows
        ``rpc:<nsid>?aud=<target>`` (protected methods are no one's).
        """
        permissions = auth.oauth_permissions(credentials)
        if permissions is None:
            check_proxied_method(credentials, nsid)
        elif is_protected(nsid):
            raise InvalidToken("Bad token method")
        else:
            check_rpc(permissions, nsid, target.aud)

    async def _merged(self, ctx: XRPCContext, did: str, response: IResponse) -> bool:
        """
        Read-after-write (:mod:`leafpds.xrpc.readafterwrite`): if the answer
        is behind the caller's repo, answer it with the caller's newer
        records merged in and say True; else leave it to be relayed.
        """
        rev = _single(response, b"atproto-repo-rev")
        content_type = _single(response, b"content-type") or "application/json"
        length = response.length  # Twisted keeps Content-Length here, not in the headers
        if (
            rev is None
            or "json" not in content_type.lower()
            or _single(response, b"content-encoding") not in (None, "identity")
            # Only an answer whose size is known and bounded is read whole;
            # any other streams through as it came.
            or length is UNKNOWN_LENGTH
            or length > readafterwrite.MAX_BUFFERED
        ):
            return False
        known = self.app.transactor.known_rev(did)
        if known is not None and known <= rev:
            return False  # caught up: no database work
        found = await self.app.db.read(reads.written_since, did, rev, readafterwrite.LIMIT)
        if found is None:
            return False
        try:
            body = await read_bounded(response, readafterwrite.MAX_BUFFERED)
        except Exception:
            raise UpstreamFailure("Upstream answer could not be read") from None
        local = readafterwrite.local_view(found, did, self.app.public_url)
        merged = readafterwrite.merge(ctx.nsid, body, local, incoming.query_args(ctx.request))
        request = ctx.request
        request.setResponseCode(response.code)
        _copy_headers(response, request, (b"content-language", b"atproto-content-labelers", b"retry-after"))
        if merged is None:  # not JSON after all: as it came
            _copy_headers(response, request, (b"content-type", b"atproto-repo-rev"))
            merged = body
        else:
            request.setHeader("content-type", "application/json; charset=utf-8")
            request.setHeader("atproto-upstream-lag", str(readafterwrite.lag_ms(local, self.reactor.seconds())))
        request.setHeader("content-length", str(len(merged)))
        request.write(merged)
        return True

    async def query(self, did: str, target: Target, nsid: str, params: dict[str, str]) -> Any:
        """Call the query ``nsid`` of ``target`` for the account ``did``; its JSON answer."""
        token = await self.app.service_auth.token(did, target.did, nsid)
        url = f"{target.url}/xrpc/{nsid}?{urlencode(params)}"
        headers = Headers({b"authorization": [f"Bearer {token}".encode("ascii")], b"accept-encoding": [b"identity"]})
        response = await self._send(target, url, b"GET", headers, None)
        if response.code >= 400:
            raise await _upstream_error(None, response)
        try:
            return json.loads(await read_bounded(response, MAX_QUERY_ANSWER))
        except Exception:
            raise UpstreamFailure(f"Upstream answered {nsid} with something that is not JSON") from None

    async def call(self, target: Target, request: IRequest, token: str, identity: bool = False) -> IResponse:
        """
        Send ``request`` on to ``target`` (path and query verbatim); its
        answer's head.  ``identity``: ask for an uncompressed answer (to read it).
        """
        url = target.url + request.uri.decode("ascii")
        headers = Headers({b"authorization": [f"Bearer {token}".encode("ascii")]})
        # Read through incoming: a malformed value is refused, not passed on.
        forwarded = FORWARDED_REQUEST_HEADERS + (BODY_HEADERS if request.method == b"POST" else ())
        for name in forwarded:
            value = incoming.header(request, name)
            if value is not None:
                headers.setRawHeaders(name, [value.encode("utf-8")])
        # The client's encodings, or none: the body goes back as it comes.
        accepted = "identity" if identity else incoming.header(request, "accept-encoding") or "identity"
        headers.setRawHeaders("accept-encoding", [accepted])
        body = None
        if request.method == b"POST":
            request.content.seek(0)
            body = FileBodyProducer(request.content)
        return await self._send(target, url, request.method, headers, body)

    async def _send(
        self, target: Target, url: str, method: bytes, headers: Headers, body: FileBodyProducer | None
    ) -> IResponse:
        metrics = self.app.metrics
        service = self._service_label(target)
        try:
            agent = await self._agent(target, url)
            started = time.perf_counter()
            sent = agent.request(method, url.encode("ascii"), headers, body)
            sent.addTimeout(self.headers_timeout, self.reactor)
            response = await sent
        except XRPCError:
            raise
        except CancelledError:
            raise  # the client went away
        except Exception as e:
            metrics.upstream_failures.labels(service).inc()
            log.info("Upstream {url} failed: {reason}", url=target.url, reason=f"{type(e).__name__}: {e}")
            raise UpstreamFailure("Upstream service unreachable") from None
        metrics.upstream_seconds.labels(service).observe(time.perf_counter() - started)
        return response

    def _service_label(self, target: Target) -> str:
        # The configured services by role; any other (named by a header) as
        # one: their number has no bound.
        if target is self.appview:
            return "appview"
        if target is self.reports:
            return "report"
        return "other"

    async def _agent(self, target: Target, url: str) -> Agent:
        if not target.untrusted:
            return self._trusted
        host = urlsplit(url).hostname or ""
        if self._dns is None:
            self._dns = SystemResolver(self.reactor)
        try:
            address = await vetted_address(
                self._dns, host, allow_private=self.allow_private, timeout=self.connect_timeout
            )
        except Refused as e:
            log.info("Proxy target refused: {reason}", reason=str(e))
            raise InvalidRequest("proxy service endpoint is not on a public address") from None
        factory = PinnedEndpointFactory(self.reactor, host, address, self.connect_timeout)
        return Agent.usingEndpointFactory(self.reactor, factory, pool=self.pool)

    async def relay(self, response: IResponse, request: IRequest) -> None:
        """Write ``response``'s body to ``request`` at the client's pace."""
        relay = _Relay(request, self.reactor, self.idle_timeout)
        response.deliverBody(relay)
        try:
            await relay.done
        except CancelledError:
            raise
        except Exception as e:
            # The status line is out: cut the answer short so the client
            # sees a truncated body, never a silently incomplete one.
            log.info("Upstream answer broke off: {reason}", reason=f"{type(e).__name__}: {e}")
            request.channel.transport.abortConnection()


@implementer(IPushProducer)
class _Relay(Protocol):
    """An upstream body, written to the client; the client's back-pressure pauses the upstream."""

    def __init__(self, request: IRequest, reactor: Any, idle_timeout: float) -> None:
        self.request = request
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.done: Deferred[None] = Deferred(lambda _: self._stop())
        self._idle: Any = None
        self._paused = False

    def connectionMade(self) -> None:
        self.request.registerProducer(self, True)
        self._idle = self.reactor.callLater(self.idle_timeout, self._stalled)

    def dataReceived(self, data: bytes) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.idle_timeout)
        self.request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self.request.unregisterProducer()
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def _stalled(self) -> None:
        if self._paused:  # the client is the slow one: wait for it
            self._idle = self.reactor.callLater(self.idle_timeout, self._stalled)
            return
        self._stop()
        if not self.done.called:
            self.done.errback(UpstreamFailure("Upstream service stopped sending"))

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    # IPushProducer, driven by the client's connection.

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._stop()


def _single(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[-1].decode("latin-1").strip() if values else None


def _copy_headers(response: IResponse, request: IRequest, names: tuple[bytes, ...]) -> None:
    for name in names:
        values = response.headers.getRawHeaders(name)
        if values:
            request.responseHeaders.setRawHeaders(name, [b",".join(values)])


async def _upstream_error(request: IRequest | None, response: IResponse) -> XRPCError:
    """
    The XRPC error to answer for an upstream's error answer, as the official
    PDS re-makes it (its retry-after and atproto headers go on ``request``).
    """
    if request is not None:
        _copy_headers(response, request, RETURNED_HEADERS)
    status = 502 if response.code == 500 else response.code
    parsed: dict[str, Any] = {}
    content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
    try:
        data = await read_bounded(response, MAX_ERROR_BODY)
        if "json" in content_type.lower() or not content_type:
            encoding = (response.headers.getRawHeaders(b"content-encoding") or [b""])[0].strip().lower()
            if encoding in (b"gzip", b"deflate"):
                data = zlib.decompress(data, zlib.MAX_WBITS | 32)
            value = json.loads(data)
            if isinstance(value, dict):
                parsed = value
    except Exception:
        pass  # no big deal: the status says enough
    name = parsed.get("error")
    message = parsed.get("message")
    if not isinstance(name, str) or not name:
        name = STATUS_NAMES.get(status, "InvalidRequest" if status < 500 else "UpstreamFailure")
    if not isinstance(message, str):
        message = f"Upstream service answered {response.code}"
    return XRPCError(message, name=name, status=status)
