"""
The HTTP layer's fast paths: declared methods routed without Klein (with
Klein's answers), and the access log written in batches.
"""

import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from leafpds.xrpc.registry import Registry
from leafpds.xrpc.resource import MethodRouter, XRPCServer
from leafpds.xrpc.site import ACCESS_LOG_BATCH, ACCESS_LOG_INTERVAL, XRPCSite

DESCRIBE = "com.atproto.server.describeServer"


@pytest_twisted.ensureDeferred
async def test_a_declared_method_answers_alike_on_either_path(pds):
    direct = await pds.get(DESCRIBE)
    # A percent-encoded name does not take the fast path: Klein decodes it.
    through_klein = await pds.request("GET", "/xrpc/com.atproto.server.describe%53erver")
    assert direct.code == through_klein.code == 200
    assert direct.json() == through_klein.json()
    for answer in [direct, through_klein]:
        assert answer.header("access-control-allow-origin") == "*"
        assert answer.header("content-type") == "application/json; charset=utf-8"


@pytest_twisted.ensureDeferred
async def test_head_and_wrong_verbs_on_a_declared_method(pds):
    head = await pds.request("HEAD", "/xrpc/" + DESCRIBE)
    assert head.code == 200 and head.body == b""
    put = await pds.request("PUT", "/xrpc/" + DESCRIBE)
    assert (put.code, put.json()["error"], put.header("allow")) == (405, "InvalidRequest", "GET")
    # A verb the /xrpc/<nsid> route does not take at all is Klein's to refuse.
    trace = await pds.request("TRACE", "/xrpc/" + DESCRIBE)
    assert (trace.code, trace.json()["error"]) == (405, "MethodNotAllowed")
    preflight = await pds.request("OPTIONS", "/xrpc/" + DESCRIBE)
    assert preflight.code == 204 and "POST" in preflight.header("access-control-allow-methods")


@pytest_twisted.ensureDeferred
async def test_paths_with_their_own_route_keep_it(pds):
    assert (await pds.get("_health")).json()["version"]
    # The firehose's route answers a plain GET itself (it wants a WebSocket).
    plain = await pds.get("com.atproto.sync.subscribeRepos")
    assert plain.code != 501


@pytest_twisted.ensureDeferred
async def test_a_method_whose_client_went_away_is_cancelled(pds):
    waiting: Deferred = Deferred()
    registry = Registry()

    @registry.query(DESCRIBE)
    async def slow(ctx):
        await waiting
        return {}

    router = MethodRouter(XRPCServer(pds.service.app, registry), Resource())
    request = DummyRequest([])
    request.path = b"/xrpc/" + DESCRIBE.encode()
    request.getClientAddress = lambda: None
    assert router.render(request) is NOT_DONE_YET
    request.processingFailed(Failure(ConnectionLost()))
    assert waiting.called
    waiting.addErrback(lambda failure: failure.trap(CancelledError))
    assert request.written == [] and request.finished == 0


def _request(uri: bytes) -> Request:
    request = Request(DummyChannel())
    request.method, request.uri, request.clientproto = b"GET", uri, b"HTTP/1.1"
    request.code = 200
    return request


def _access_lines(events: list) -> list[list[str]]:
    return [formatEvent(e).split("\n") for e in events if e.get("log_namespace") == "leafpds.access"]


def test_access_log_lines_go_out_in_batches():
    clock = Clock()
    site = XRPCSite(Resource(), 1000)
    site.reactor = clock
    site.startFactory()
    with capturedLogs() as events:
        for n in range(3):
            site.log(_request(b"/xrpc/com.example.a?n=%d" % n))
        assert _access_lines(events) == []
        clock.advance(ACCESS_LOG_INTERVAL)
        [lines] = _access_lines(events)
        assert len(lines) == 3
        assert '"GET /xrpc/com.example.a?n=0 HTTP/1.1" 200' in lines[0]
        assert "?n=2" in lines[2]

        # A full batch goes at once, without waiting.
        for n in range(ACCESS_LOG_BATCH):
            site.log(_request(b"/xrpc/com.example.b"))
        assert [len(batch) for batch in _access_lines(events)] == [3, ACCESS_LOG_BATCH]

        # Stopping writes what waits, and leaves no timer behind.
        site.log(_request(b"/xrpc/com.example.c"))
        site.stopFactory()
        assert [len(batch) for batch in _access_lines(events)] == [3, ACCESS_LOG_BATCH, 1]
    assert clock.getDelayedCalls() == []
