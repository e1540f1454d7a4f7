"""
Hostile clients over a raw socket (HTTP client libraries refuse to send
these bytes): values that are not UTF-8 and control characters in every
header leafpds reads, in the path and in the query, for every XRPC method,
the pages and the firehose upgrade.  Each answer must be a 4xx with an XRPC
error name (or the page's error page), nothing may change, nothing may be
logged as a failure, and the server must stay healthy.  Then the
connection-level defences: the idle timeout and the open-file limit.
"""

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from leafpds.xrpc import auth as verifiers
from leafpds.xrpc.registry import xrpc
from leafpds.xrpc.site import IDLE_TIMEOUT
from tests.harness import ServerProcess, make_settings, start_pds
from tests.test_accounts import create
from tests.test_fuzz import snapshot

ADMIN_PASSWORD = "admin secret"

# Byte strings that are not UTF-8: Latin-1, a lone continuation, an encoded
# surrogate, an overlong encoding, a byte-order mark the wrong way round.
NOT_UTF8 = [b"caf\xe9", b"\xa9", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff\xfe"]
# Control characters Twisted passes on (it refuses NUL, CR and LF itself).
CONTROL = [b"a\x01b", b"a\x7fb", b"\x1b[31m"]
HOSTILE = NOT_UTF8 + CONTROL


@dataclass
class RawAnswer:
    code: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> tuple[str, str] | None:
        """The XRPC error (name, message) the body carries, if it is an error JSON."""
        try:
            value = json.loads(self.body)
        except ValueError:
            return None
        if isinstance(value, dict) and isinstance(value.get("error"), str) and isinstance(value.get("message"), str):
            return value["error"], value["message"]
        return None


class _Exchange(Protocol):
    """
    Writes one request and collects the answer until the server closes, or
    until its content-length is in (a connection may be kept alive).
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received: list[bytes] = []
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        head, found, body = b"".join(self.received).partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        if found and length and len(body) >= int(length[1]):
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.closed.callback(b"".join(self.received))


async def send_raw(port: int, request: bytes) -> RawAnswer:
    exchange = _Exchange(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), exchange)
    timer = reactor.callLater(10, exchange.transport.abortConnection)
    raw = await exchange.closed
    if timer.active():
        timer.cancel()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return RawAnswer(int(status.split(" ")[1]), headers, body)


def http_request(verb: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes = b"") -> bytes:
    fields = {b"host": b"127.0.0.1", b"connection": b"close", **headers}
    if body or verb == b"POST":
        fields[b"content-length"] = b"%d" % len(body)
    return b"".join(
        [verb, b" ", target, b" HTTP/1.1\r\n", *(b"%s: %s\r\n" % item for item in fields.items()), b"\r\n", body]
    )


# The errors expected, as (name, message); a message of None is Autobahn's to word.
BAD_TOKEN = ("InvalidToken", "Malformed authorization header")
BAD_CONTENT_TYPE = ("InvalidRequest", "Invalid content-type header")
BAD_HOST = ("InvalidRequest", "Invalid host header")
BAD_QUERY = ("InvalidRequest", "Query parameters must be UTF-8")
BAD_PATH = ("InvalidRequest", "The path must be UTF-8")
UNPARSABLE = ("InvalidRequest", "Malformed HTTP request")  # refused by Twisted's parser
BAD_HANDSHAKE = ("InvalidRequest", None)


def _cases_for(nsid: str, method, credentials: dict, lexicons) -> list[tuple[str, bytes, tuple]]:
    """(what, request, expected error) for one method; each is otherwise a sound request."""
    reads_body = method.raw_input or "input" in lexicons.get_def(nsid)
    verb = b"GET" if method.kind == "query" else b"POST"
    path = b"/xrpc/" + nsid.encode()
    good = dict(credentials.get(method.auth, {}))
    body = b""
    if method.kind == "procedure":
        content_type = b"image/png" if method.raw_input else b"application/json"
        good[b"content-type"] = content_type
        body = b"\x89PNG" if method.raw_input else b"{}"
    cases = []
    if method.auth is not None:
        bad_auths = [b"Bearer " + value for value in HOSTILE] + [b"Bearer caf\xc3\xa9", b"\xff\xfe token", b"Basic \xe9"]
        for value in bad_auths:
            cases.append((f"authorization {value!r}", http_request(verb, path, {**good, b"authorization": value}, body), BAD_TOKEN))
    if reads_body:
        for value in HOSTILE + [b"application/js\xffon", b"application/json\x01"]:
            cases.append((f"content-type {value!r}", http_request(verb, path, {**good, b"content-type": value}, body), BAD_CONTENT_TYPE))
    for query in [b"?x=%FF", b"?x=caf%E9", b"?x=\xa9", b"?%C0%AF=1"]:
        cases.append((f"query {query!r}", http_request(verb, path + query, good, body), BAD_QUERY))
    for tail in [b"%FF", b"caf%E9", b"\xa9"]:
        cases.append((f"path {tail!r}", http_request(verb, path + tail, good, body), BAD_PATH))
    # Twisted's request-line parser refuses raw bytes above 0xB0 and control characters.
    for tail in [b"\xff", b"\x01"]:
        cases.append((f"path {tail!r}", http_request(verb, path + tail, good, body), UNPARSABLE))
    if method.auth is not None:
        # NUL in a header value: Twisted refuses it before any resource.
        cases.append(("authorization NUL", http_request(verb, path, {**good, b"authorization": b"Bearer a\x00b"}, body), UNPARSABLE))
    return cases


UPGRADE = {
    b"upgrade": b"websocket",
    b"connection": b"Upgrade",
    b"sec-websocket-key": b"dGhlIHNhbXBsZSBub25jZQ==",
    b"sec-websocket-version": b"13",
}
FIREHOSE = b"/xrpc/com.atproto.sync.subscribeRepos"


def _outside_cases() -> list[tuple[str, bytes, tuple]]:
    """The routes outside the declared methods: plain pages, the firehose upgrade, the account pages' JSON."""
    cases = []
    for value in HOSTILE:
        for target in [b"/", b"/xrpc/_health", b"/.well-known/atproto-did", b"/account/", b"/auth/handle?handle=a", FIREHOSE]:
            cases.append((f"host {value!r} {target!r}", http_request(b"GET", target, {b"host": value}), BAD_HOST))
        cases.append((f"firehose upgrade {value!r}", http_request(b"GET", FIREHOSE, {**UPGRADE, b"upgrade": value}), ("InvalidRequest", "Invalid upgrade header")))
        for name in [b"sec-websocket-key", b"sec-websocket-version", b"connection"]:
            cases.append((f"firehose {name!r} {value!r}", http_request(b"GET", FIREHOSE, {**UPGRADE, name: value}), BAD_HANDSHAKE))
    for query in [b"?cursor=%FF", b"?cursor=\xa9", b"?%FF=1"]:
        cases.append((f"firehose query {query!r}", http_request(b"GET", FIREHOSE + query, UPGRADE), BAD_QUERY))
    for target in [b"/account/%FF", b"/auth/caf%E9", b"/\xa9"]:
        cases.append((f"path {target!r}", http_request(b"GET", target, {}), BAD_PATH))
    cases.append(("path /\\xff", http_request(b"GET", b"/\xff", {}), UNPARSABLE))
    exchange = {b"content-type": b"application/json"}
    cases.append(("exchange body", http_request(b"POST", b"/auth/exchange", exchange, b'{"code": "\xff"}'), ("InvalidRequest", "Expected {code, redirect_uri}")))
    return cases


def _page_cases() -> list[tuple[str, bytes]]:
    """Requests the account pages refuse with an error page of their own."""
    cases = []
    form = b"identifier=alice.test&password=x"
    for value in HOSTILE:
        content_type = b"application/x-www-form-urlencoded" + value
        cases.append((f"sign-in content-type {value!r}", http_request(b"POST", b"/account/signin", {b"content-type": content_type}, form)))
    for query in [b"?handle=%FF", b"?handle=\xa9", b"?x=caf%E9&handle=a"]:
        cases.append((f"handle check {query!r}", http_request(b"GET", b"/auth/handle" + query, {})))
    return cases


@pytest_twisted.async_yield_fixture
async def admin_pds(tmp_path):
    """A running leafpds whose admin methods accept a password (so their own checks are reached)."""
    running = await start_pds(make_settings(tmp_path / "data", admin_password=ADMIN_PASSWORD))
    yield running
    await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_hostile_bytes_are_refused_cleanly_everywhere(admin_pds):
    pds = admin_pds
    made = (await create(pds)).json()
    did = made["did"]
    access = {b"authorization": b"Bearer " + made["accessJwt"].encode()}
    await pds.post(
        "com.atproto.repo.createRecord",
        {"repo": did, "collection": "app.bsky.feed.post", "record": {"text": "keep", "createdAt": "2026-12-06T00:00:00.000Z"}},
        headers={"Authorization": "Bearer " + made["accessJwt"]},
    )
    credentials = {
        verifiers.access: access,
        verifiers.access_privileged: access,
        verifiers.access_full: access,
        verifiers.refresh: {b"authorization": b"Bearer " + made["refreshJwt"].encode()},
        verifiers.admin: {b"authorization": b"Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode())},
        # The sync reads: anyone may call them, credentials are optional.
        verifiers.access_or_admin_optional: {},
    }
    cases = [case for nsid, method in sorted(xrpc.methods.items()) for case in _cases_for(nsid, method, credentials, pds.service.app.lexicons)]
    assert {method.auth for method in xrpc.methods.values()} <= {None, *credentials}
    cases += _outside_cases()
    assert len(cases) > 600
    before = await snapshot(pds, did)
    port = pds.service.port.getHost().port

    failures = []
    with capturedLogs() as events:
        for what, request, expected in cases:
            answer = await send_raw(port, request)
            error = answer.error()
            if answer.code != 400 or error is None or error[0] != expected[0] or expected[1] not in (None, error[1]):
                failures.append((what, answer.code, answer.body[:200]))
            elif b"Traceback" in answer.body or b".py" in answer.body:
                failures.append((what, "leaks internals", answer.body[:200]))
        for what, request in _page_cases():
            answer = await send_raw(port, request)
            if answer.code != 400 or not answer.headers["content-type"].startswith("text/html") or b"role=alert" not in answer.body:
                failures.append((what, answer.code, answer.body[:200]))
    assert failures == [], failures[:10]
    # Nothing was logged as a failure (a 500, Klein's decoding traceback).
    logged = [event for event in events if event.get("log_failure") is not None or event.get("isError")]
    assert logged == [], logged[:3]
    assert (await pds.get("_health")).code == 200
    assert await snapshot(pds, did) == before


@pytest_twisted.ensureDeferred
async def test_a_garbled_cookie_is_no_cookie(pds):
    """A browser whose cookie was mangled still gets the sign-in page, not an error it cannot leave."""
    port = pds.service.port.getHost().port
    for value in HOSTILE:
        answer = await send_raw(port, http_request(b"GET", b"/account/", {b"cookie": b"leafpds_account=" + value}))
        assert answer.code == 200 and b"<title>Sign in" in answer.body
        answer = await send_raw(port, http_request(b"GET", b"/auth/github/login", {b"cookie": b"leafpds_signin=" + value}))
        assert answer.code == 404  # no provider configured: the page's own answer, not a 500


def test_the_site_drops_a_half_open_request_after_the_idle_timeout(pds):
    """The production site's channel, on a clock: 60 s of silence mid-request closes the connection."""
    site = pds.service.site
    assert site.timeOut == IDLE_TIMEOUT == 60
    clock = Clock()
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
    channel.callLater = clock.callLater
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /xrpc/_health HTTP/1.1\r\nhost: 127.0.0.1\r\n")
    clock.advance(IDLE_TIMEOUT - 1)
    channel.dataReceived(b"user-agent: slow\r\n")  # each byte that arrives restarts the count
    clock.advance(IDLE_TIMEOUT - 1)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting and transport.value() == b""
    channel.connectionLost(None)


@pytest_twisted.ensureDeferred
async def test_a_half_open_request_is_dropped_on_a_real_socket(pds):
    """The same over loopback, with the live site's timeout shortened for the test."""
    site = pds.service.site
    site.timeOut = 0.3
    try:
        exchange = _Exchange(b"GET /xrpc/_health HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", pds.service.port.getHost().port), exchange)
        assert not exchange.closed.called
        received = await exchange.closed.addTimeout(5, reactor)
    finally:
        site.timeOut = IDLE_TIMEOUT
    assert received == b""  # dropped, never answered
    assert (await pds.get("_health")).code == 200


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc/<pid>/limits")
@pytest_twisted.ensureDeferred
async def test_twistd_raises_its_open_file_limit_to_the_hard_limit(tmp_path):
    server = ServerProcess(tmp_path / "data", soft_open_files=256)
    await server.start()
    try:
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    finally:
        server.kill()
    [soft, hard] = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3:5]
    assert soft == hard and int(soft) > 256
    # twistd logs JSON events, one per record.
    events = [json.loads(record) for record in (tmp_path / "server.log").read_text().split("\x1e") if record.strip()]
    assert [e["limit"] for e in events if e.get("log_format", "").startswith("Open files")] == [int(soft)]


@pytest_twisted.ensureDeferred
async def test_hostile_bytes_in_headers_only_the_access_log_reads(pds):
    """user-agent and referer go into the access log as escaped bytes; the request is served."""
    port = pds.service.port.getHost().port
    with capturedLogs() as events:
        for value in HOSTILE:
            answer = await send_raw(port, http_request(b"GET", b"/xrpc/_health", {b"user-agent": value, b"referer": value}))
            assert answer.code == 200
        pds.service.site.flush_access_log()
    [lines] = [e["requests"].split("\n") for e in events if e.get("log_namespace") == "leafpds.access"]
    assert len(lines) == len(HOSTILE) and '"caf\\xe9" "caf\\xe9"' in lines[0]
    assert [e for e in events if e.get("log_failure") is not None] == []
