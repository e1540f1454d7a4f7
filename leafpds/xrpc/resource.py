"""
The HTTP face of leafpds: a Klein application serving ``/xrpc/<nsid>`` and
the few plain pages around it, wrapped in CORS handling.
"""

import json
import time
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect
from zope.interface import implementer

import leafpds
from leafpds import syntax
from leafpds.app import AppContext
from leafpds.errors import (
    InternalServerError,
    InvalidRequest,
    PayloadTooLarge,
    XRPCError,
)
from leafpds.ipld import atjson
from leafpds.lexicon import ValidationError, validate_input, validate_params
from leafpds.oauth import metadata
from leafpds.oauth.endpoints import OAuthEndpoints
from leafpds.oauth.requirements import check_call
from leafpds.xrpc.registry import ANSWERED, Method, Registry, XRPCContext, XRPCResponse, XRPCStream, xrpc
from leafpds.xrpc import auth
from leafpds.xrpc.proxy import Proxy
from leafpds.xrpc.ratelimit import client_ip as _client_ip
from leafpds.xrpc.subscribe import FirehoseFactory
from leafpds.web.account import AccountPages
from leafpds.web.auth import AuthPages
from leafpds.web.authorize import AuthorizePages
from leafpds.web import incoming
from leafpds.web.layout import send_redirect

# Importing the namespace modules declares their methods on `xrpc`.
from leafpds.xrpc import identity as _identity, repo as _repo, server as _server, sync as _sync  # noqa: F401
from leafpds.xrpc import actor as _actor, blobs as _blobs, feed as _feed  # noqa: F401
from leafpds.xrpc import admin as _admin  # noqa: F401

log = Logger()

JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"

# Headers atproto clients send from browsers (@atproto/api, OAuth's DPoP, the
# Bluesky app); preflights must allow them.  tests/test_cors.py checks both lists.
CORS_ALLOW_HEADERS = (
    "authorization, content-type, atproto-accept-labelers, atproto-proxy, "
    "atproto-content-labelers, dpop, x-bsky-topics"
)
# Headers those clients read from answers; a browser hides the others.
CORS_EXPOSE_HEADERS = (
    "ratelimit-limit, ratelimit-remaining, ratelimit-reset, ratelimit-policy, "
    "atproto-content-labelers, atproto-repo-rev, content-language, content-length, www-authenticate, "
    "dpop-nonce"
)

BANNER = """\
         __
    ___ / /  leafpds {version}
   / _ \\ /   an AT Protocol Personal Data Server

This is a PDS: it hosts atproto accounts and their repositories.
Most API routes are under /xrpc/
Your account: /account/

Code: https://example.invalid/leafpds (see README.md)
"""

ROBOTS = "# Hello!\n\n# Crawling the public API is allowed\nUser-agent: *\nAllow: /\n"

# Folders several parties put names in: on a shared site leafpds claims only
# the names it answers there (a host keeps its ACME challenges, security.txt).
SHARED_FOLDERS = frozenset((b".well-known",))


def json_body(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def body(request: IRequest, content_type: str, data: bytes) -> bytes:
    """A whole answer: with its length, so clients need no chunked decoding."""
    request.setHeader("content-type", content_type)
    request.setHeader("content-length", str(len(data)))
    return data


def write_error(request: IRequest, error: XRPCError) -> bytes:
    request.setResponseCode(error.status)
    return body(request, JSON, json_body(error.to_json()))


class XRPCServer:
    """Routes requests to the methods declared on a :class:`Registry`."""

    app = Klein()

    def __init__(self, ctx: AppContext, registry: Registry = xrpc) -> None:
        self.ctx = ctx
        self.registry = registry
        self.firehose = FirehoseFactory(ctx.sequencer, ctx.lexicons, ctx.reactor)
        self.proxy = ctx.proxy = Proxy(ctx)
        self.auth = AuthPages(ctx)
        self.account = AccountPages(ctx, self.auth)
        self.oauth = OAuthEndpoints(ctx.oauth)
        self.authorize = AuthorizePages(ctx, ctx.oauth, self.auth)
        self._folders, self._names = _claimed(self.app)

    def resource(self) -> IResource:
        return CORSResource(MethodRouter(self, self.app.resource()))

    def serves(self, path: bytes) -> bool:
        """
        Whether a request for ``path`` (as sent: before decoding) is
        leafpds's on a site shared with a host application: everything in a
        folder its routes live in (``/xrpc/``, ``/account/``, ``/auth/`` …,
        the folder's own name too, which redirects), and the exact names it
        answers in a shared folder (``/.well-known/atproto-did``).  The rest —
        ``/``, ``/robots.txt``, other ``/.well-known/`` names — is the host's.
        Derived from the routes, so a new folder of routes is claimed as
        soon as it is declared.
        """
        # Decoded segment by segment, as Twisted decodes the path it walks.
        segments = [unquote_to_bytes(segment) for segment in path.split(b"/")]
        return (len(segments) > 1 and segments[1] in self._folders) or b"/".join(segments) in self._names

    @app.route("/", methods=["GET", "HEAD"])
    def banner(self, request: IRequest) -> bytes:
        return body(request, TEXT, BANNER.format(version=leafpds.__version__).encode("utf-8"))

    @app.route("/auth/", branch=True, methods=["GET", "HEAD", "POST"])
    def auth_pages(self, request: IRequest) -> Any:
        """Sign-in with GitHub or Google (see :mod:`leafpds.web.auth`)."""
        return self._limited(request, self.auth.resource())

    @app.route("/account/", branch=True, methods=["GET", "HEAD", "POST"])
    def account_pages(self, request: IRequest) -> Any:
        """The sign-in and account pages (see :mod:`leafpds.web.account`)."""
        return self._limited(request, self.account.resource())

    def _limited(self, request: IRequest, pages: IResource) -> Any:
        # Pages count against the same per-IP limit as XRPC calls.
        try:
            self.ctx.request_limits.consume(_client_ip(request), 1, request)
        except XRPCError as e:
            return write_error(request, e)
        return pages

    @app.route("/oauth/", branch=True, methods=["GET", "POST"])
    def oauth_endpoints(self, request: IRequest) -> Any:
        """The OAuth authorization server's JSON endpoints (see :mod:`leafpds.oauth.endpoints`)."""
        return self._limited(request, self.oauth.resource())

    @app.route("/oauth/authorize", methods=["GET", "HEAD", "POST"])
    def authorize_page(self, request: IRequest) -> Any:
        """The authorization page (see :mod:`leafpds.web.authorize`)."""
        return self._limited(request, self.authorize.resource())

    @app.route("/.well-known/oauth-protected-resource", methods=["GET", "HEAD"])
    def oauth_protected_resource(self, request: IRequest) -> bytes:
        """RFC 9728: this PDS is its own authorization server."""
        return body(request, JSON, json_body(metadata.protected_resource(self.ctx.public_url)))

    @app.route("/.well-known/oauth-authorization-server", methods=["GET", "HEAD"])
    def oauth_authorization_server(self, request: IRequest) -> bytes:
        """RFC 8414 metadata of the authorization server."""
        return body(request, JSON, json_body(metadata.authorization_server(self.ctx.public_url)))

    @app.route("/robots.txt", methods=["GET", "HEAD"])
    def robots(self, request: IRequest) -> bytes:
        return body(request, TEXT, ROBOTS.encode("utf-8"))

    @app.route("/.well-known/atproto-did", methods=["GET", "HEAD"])
    async def atproto_did(self, request: IRequest) -> bytes:
        """The DID of the account whose handle is this request's host name."""
        host = (incoming.header(request, "host") or "").rsplit(":", 1)[0].strip().lower()
        did = await self.ctx.accounts.resolve_local_handle(host) if host else None
        if did is None:
            request.setResponseCode(404)
            return body(request, TEXT, b"User not found")
        return body(request, TEXT, did.encode("utf-8"))

    @app.route("/xrpc/_health", methods=["GET", "HEAD"])
    async def health(self, request: IRequest) -> bytes:
        status: dict[str, Any] = {"version": leafpds.__version__}
        try:
            await self.ctx.db.read(_probe)
        except Exception:
            log.failure("Health check: the database cannot be read")
            request.setResponseCode(503)
            status["error"] = "Service Unavailable"
            return body(request, JSON, json_body(status))
        space = self.ctx.db.space
        if space.full:
            request.setResponseCode(503)
            status["error"] = "InsufficientStorage"
            status["message"] = "The data folder's disk is full: writes are refused, reads go on"
            status["freeBytes"] = space.free_bytes()
        return body(request, JSON, json_body(status))

    @app.route("/xrpc/com.atproto.sync.subscribeRepos")
    def subscribe_repos(self, request: IRequest) -> Any:
        try:
            self.ctx.request_limits.consume(_client_ip(request), 1, request)
            return self.firehose.upgrade(request)
        except XRPCError as e:
            return write_error(request, e)

    @app.route(
        "/xrpc/<nsid>",
        methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"],
    )
    async def dispatch(self, request: IRequest, nsid: str) -> bytes:
        started = time.perf_counter()
        try:
            return await self._dispatch(request, nsid)
        finally:
            self.ctx.metrics.request(nsid, request.code, time.perf_counter() - started)

    async def _dispatch(self, request: IRequest, nsid: str) -> bytes:
        try:
            method = self._lookup(request, nsid)
            self.ctx.request_limits.consume(_client_ip(request), 1, request)
            ctx = XRPCContext(request=request, app=self.ctx, nsid=nsid)
            if method is None:
                await self.proxy.forward(ctx)
                return b""
            if method.auth is not None:
                ctx.auth = await method.auth(ctx)
            ctx.params = validate_params(self.ctx.lexicons, nsid, incoming.query_args(request))
            if method.kind == "procedure" and not method.raw_input:
                ctx.input = self._json_input(request, nsid)
            permissions = auth.oauth_permissions(ctx.auth)
            if permissions is not None:
                check_call(permissions, nsid, ctx.input, self.proxy.appview.aud)
            result = await method.handler(ctx)
            if result is ANSWERED:
                return b""
            if isinstance(result, XRPCStream):
                return await _stream(request, result)
        except XRPCError as e:
            return write_error(request, e)
        except ValidationError as e:
            return write_error(request, InvalidRequest(str(e)))
        except Exception:
            log.failure("Unhandled error in XRPC method {nsid}", Failure(), nsid=nsid)
            return write_error(request, InternalServerError("Internal Server Error"))
        return _render(request, result)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        # Paths Klein cannot route (outside /xrpc/<nsid>), as XRPC-style JSON.
        exc = failure.value
        if isinstance(exc, RequestRedirect):
            # "/account" -> "/account/": a real redirect, kept on this host.
            parts = urlsplit(exc.new_url)
            return send_redirect(request, parts.path + (f"?{parts.query}" if parts.query else ""))
        return write_error(
            request, XRPCError(exc.description or exc.name, name=exc.name.replace(" ", ""), status=exc.code)
        )

    def _lookup(self, request: IRequest, nsid: str) -> Method | None:
        """The method declared as ``nsid``; None for a method served elsewhere (proxied)."""
        method = self.registry.methods.get(nsid)
        if method is None:
            # Declared methods have valid names; only an unknown one needs checking.
            try:
                syntax.validate_nsid(nsid)
            except syntax.InvalidSyntax:
                raise InvalidRequest(f"Invalid XRPC method name: {nsid!r}") from None
            return None
        verb = request.method
        if verb == b"HEAD":
            verb = b"GET"
        if verb != method.http_method:
            request.setHeader("allow", method.http_method.decode())
            raise XRPCError(
                f"Incorrect HTTP method ({request.method.decode()}) "
                f"expected {method.http_method.decode()}",
                name="InvalidRequest",
                status=405,
            )
        return method

    def _json_input(self, request: IRequest, nsid: str) -> Any:
        request.content.seek(0)
        content = request.content.read()
        lexicon_input = self.ctx.lexicons.get_def(nsid).get("input")
        if lexicon_input is None:
            return None
        if not content:
            raise InvalidRequest("Request encoding (Content-Type) required but not provided")
        content_type = (incoming.header(request, "content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise InvalidRequest(
                f"Wrong request encoding (Content-Type): {content_type or 'none'}"
            )
        if len(content) > self.ctx.settings.max_json_body:
            raise PayloadTooLarge("request entity too large")
        try:
            value = atjson.loads(content)
        except atjson.DataModelError as e:
            raise InvalidRequest(f"Invalid JSON body: {e}") from None
        validate_input(self.ctx.lexicons, nsid, value)
        return value


def _claimed(app: Klein) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """The folders a Klein app's routes live in, and its names in shared folders."""
    folders, names = set(), set()
    for rule in app.url_map.iter_rules():
        path = rule.rule.encode()
        segments = path.split(b"/")
        if len(segments) < 3 or b"<" in segments[1]:
            continue  # a page at the top (/, /robots.txt): the site's own
        if segments[1] in SHARED_FOLDERS:
            names.add(path)
        else:
            folders.add(segments[1])
    return frozenset(folders), frozenset(names)


def _probe(conn: Any) -> None:
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()


@implementer(IPushProducer)
class _PacedWriter:
    """
    Writes a streamed answer at the pace the client reads it: while the
    transport's buffer is full, ``write`` returns a Deferred that fires when
    it drains.
    """

    def __init__(self, request: IRequest) -> None:
        self.request = request
        self.started = False
        self.stopped = False
        self._paused: Deferred | None = None
        request.registerProducer(self, True)

    def write(self, data: bytes) -> Deferred | None:
        if self.stopped:
            raise ConnectionDone("the client went away")
        self.started = True
        self.request.write(data)
        return self._paused

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()

    def done(self) -> None:
        self.request.unregisterProducer()


async def _stream(request: IRequest, stream: XRPCStream) -> bytes:
    request.setHeader("content-type", stream.content_type)
    writer = _PacedWriter(request)
    try:
        await stream.produce(writer.write)
    except Exception as e:
        if not writer.started:
            writer.done()
            raise
        # Too late for an error answer: cut the response short so the client
        # sees a truncated body, never a silently incomplete one.
        if not writer.stopped:
            log.failure("Streamed answer failed part-way", Failure(e))
            request.channel.transport.abortConnection()
    writer.done()
    return b""


def _render(request: IRequest, result: Any) -> bytes:
    if isinstance(result, XRPCResponse):
        for name, value in result.headers.items():
            request.setHeader(name, value)
        return body(request, result.content_type, result.body)
    if result is None:
        request.setHeader("content-length", "0")
        return b""
    return body(request, JSON, atjson.dumps(result))


class CORSResource(Resource):
    """
    Adds the CORS headers browsers need to every answer and answers
    preflight requests, in front of the whole site.
    """

    isLeaf = True

    def __init__(self, wrapped: IResource) -> None:
        super().__init__()
        self.wrapped = wrapped

    def render(self, request: IRequest) -> Any:
        request.setHeader("access-control-allow-origin", "*")
        request.setHeader("access-control-expose-headers", CORS_EXPOSE_HEADERS)
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            request.setHeader("access-control-allow-methods", "GET, HEAD, POST, OPTIONS")
            request.setHeader("access-control-allow-headers", CORS_ALLOW_HEADERS)
            request.setHeader("access-control-max-age", "86400")
            request.setHeader("content-length", "0")
            return b""
        return self.wrapped.render(request)


class MethodRouter(Resource):
    """
    Sends ``/xrpc/<nsid>`` for a declared method straight to
    :meth:`XRPCServer.dispatch`, and everything else through the Klein app.
    Klein's URL matching and Deferred plumbing cost as much as the rest of
    a small query; for these paths its answer would be the same.
    """

    isLeaf = True

    # The HTTP methods the ``/xrpc/<nsid>`` route accepts.
    VERBS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH"))

    def __init__(self, server: XRPCServer, klein: IResource) -> None:
        super().__init__()
        self.server = server
        self.klein = klein
        # Paths with a route of their own (the firehose, the health check).
        self.routed = frozenset(rule.rule.encode() for rule in server.app.url_map.iter_rules())

    def render(self, request: IRequest) -> Any:
        path = request.path
        if (
            not path.startswith(b"/xrpc/")
            or request.method not in self.VERBS
            or path in self.routed
            or (nsid := path[6:].decode("latin-1")) not in self.server.registry.methods
        ):
            try:
                incoming.check_url(request)
            except XRPCError as e:
                return write_error(request, e)
            return self.klein.render(request)
        answer = ensureDeferred(self.server.dispatch(request, nsid))
        finished = request.notifyFinish()
        finished.addErrback(lambda _: answer.cancel())  # the client went away

        def respond(data: bytes) -> None:
            if not finished.called:
                request.write(data)
                request.finish()

        answer.addCallback(respond)
        answer.addErrback(lambda failure: log.failure("Writing an XRPC answer failed", failure))
        return NOT_DONE_YET
