"""
Declaring XRPC methods.

A namespace module declares each method it serves with a decorator::

    @xrpc.query("com.atproto.server.describeServer")
    async def describe_server(ctx: XRPCContext) -> dict: ...

    @xrpc.procedure("com.atproto.server.createInviteCode", auth=admin)
    async def create_invite_code(ctx: XRPCContext) -> dict: ...

The HTTP layer looks methods up here, checks the HTTP method, runs the
declared auth verifier, validates parameters and input against the
method's lexicon, and calls the handler with an :class:`XRPCContext`.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.web.iweb import IRequest

if TYPE_CHECKING:
    from leafpds.app import AppContext


@dataclass
class XRPCContext:
    """What a handler gets: the request, the app, and the validated inputs."""

    request: IRequest
    app: "AppContext"
    nsid: str
    params: dict[str, Any] = field(default_factory=dict)
    input: Any = None
    auth: Any = None


@dataclass(frozen=True)
class XRPCResponse:
    """A non-JSON answer (a CAR file, a blob)."""

    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


class Answered:
    """Returned by a handler that has written its answer itself (the proxy's relay)."""


ANSWERED = Answered()


@dataclass(frozen=True)
class XRPCStream:
    """
    A streamed answer: ``produce(write)`` calls ``write(chunk)`` for each
    chunk (from the reactor thread); ``write`` returns a Deferred while the
    client is not keeping up, and the producer waits on it.
    """

    content_type: str
    produce: Callable[[Callable[[bytes], Any]], Awaitable[None]]


Handler = Callable[[XRPCContext], Awaitable[Any]]
# An auth verifier inspects the request and returns the caller's credentials,
# or raises an XRPCError (AuthMissing, InvalidToken, ...).
AuthVerifier = Callable[[XRPCContext], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    nsid: str
    kind: str  # "query" (GET) or "procedure" (POST)
    handler: Handler
    auth: AuthVerifier | None
    # The handler reads the request body itself (blobs, CAR imports) instead
    # of getting parsed, lexicon-validated JSON.
    raw_input: bool

    @property
    def http_method(self) -> bytes:
        return b"GET" if self.kind == "query" else b"POST"


class Registry:
    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def query(self, nsid: str, *, auth: AuthVerifier | None = None) -> Callable[[Handler], Handler]:
        return self._declare(nsid, "query", auth, raw_input=False)

    def procedure(
        self, nsid: str, *, auth: AuthVerifier | None = None, raw_input: bool = False
    ) -> Callable[[Handler], Handler]:
        return self._declare(nsid, "procedure", auth, raw_input)

    def _declare(
        self, nsid: str, kind: str, auth: AuthVerifier | None, raw_input: bool
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            if nsid in self.methods:
                raise ValueError(f"XRPC method {nsid} declared twice")
            self.methods[nsid] = Method(nsid, kind, handler, auth, raw_input)
            return handler

        return register


xrpc = Registry()
