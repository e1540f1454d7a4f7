"""
leafpds inside an application of one's own (leafpds.service.PDSService): in
this test's reactor, on one real port shared with a host's routes — a
``twisted.web`` resource tree here, and the Klein example app of
docs/examples, driven by the Python ``atproto`` SDK.
"""

import importlib.util
import os
import threading
from pathlib import Path

import pytest
import pytest_twisted
import treq
from cbrrr import decode_multi_dag_cbor_in_violation_of_the_spec as decode_multi
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet import error
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from leafpds.service import build_pds
from tests.harness import RunningPDS, make_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "embedded_app.py"
PASSWORD = "hunter2 hunter2"
POST = "app.bsky.feed.post"


def load_example():
    spec = importlib.util.spec_from_file_location("embedded_app", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()


class Text(Resource):
    isLeaf = True

    def __init__(self, text: bytes) -> None:
        super().__init__()
        self.text = text

    def render_GET(self, request):
        request.setHeader("content-type", "text/plain")
        return self.text


class Echo(Resource):
    """A host route that reads its request body: answers its length."""

    isLeaf = True

    def render_POST(self, request):
        return b"%d" % len(request.content.read())


class Folder(Resource):
    def getChild(self, name, request):
        return notFound()


def host_root() -> Resource:
    """A host application as a plain twisted.web resource tree."""
    root = Folder()
    root.putChild(b"", Text(b"the host's home page"))
    root.putChild(b"hello", Text(b"hello from the host"))
    root.putChild(b"robots.txt", Text(b"User-agent: *\nDisallow: /private/\n"))
    root.putChild(b"echo", Echo())
    well_known = Folder()
    well_known.putChild(b"security.txt", Text(b"Contact: mailto:security@example.com\n"))
    root.putChild(b".well-known", well_known)
    return root


@pytest_twisted.async_yield_fixture
async def embedded(tmp_path):
    """leafpds beside host_root() on one port; a RunningPDS at that port."""
    settings = make_settings(tmp_path / "data", max_json_body=10_000, max_blob_size=100_000)
    pds = build_pds(settings, {})
    pds.startService()
    await pds.ready
    site = pds.make_site(host_root(), host_max_body_size=50_000)
    port = await pds.listen("tcp:0:interface=127.0.0.1", site)
    yield RunningPDS(pds, f"http://127.0.0.1:{port.getHost().port}")
    await pds.stopService()


async def create_account(pds, name="alice", **kwargs):
    body = {"handle": f"{name}.test", "email": f"{name}@example.com", "password": PASSWORD}
    answer = await pds.post("com.atproto.server.createAccount", body, **kwargs)
    assert answer.code == 200, answer.body
    return answer.json()


@pytest_twisted.ensureDeferred
async def test_the_host_keeps_its_paths_and_leafpds_keeps_its_own(embedded):
    pds = embedded
    for path, text in [
        ("/", b"the host's home page"),
        ("/hello", b"hello from the host"),
        ("/robots.txt", b"User-agent: *\nDisallow: /private/\n"),
        ("/.well-known/security.txt", b"Contact: mailto:security@example.com\n"),
    ]:
        answer = await pds.request("GET", path)
        assert (answer.code, answer.body) == (200, text), path
        # leafpds's CORS wrapper is on its own paths only.
        assert answer.header("access-control-allow-origin") is None
    assert (await pds.request("GET", "/nowhere")).code == 404  # the host's 404, a plain page
    assert (await pds.request("GET", "/nowhere")).header("content-type") != "application/json; charset=utf-8"

    health = await pds.get("_health")
    assert health.code == 200 and "version" in health.json()
    assert health.header("access-control-allow-origin") == "*"
    described = await pds.get("com.atproto.server.describeServer")
    assert described.code == 200 and described.json()["did"] == pds.service.app.service_did
    preflight = await pds.request("OPTIONS", "/xrpc/com.atproto.repo.createRecord")
    assert preflight.code == 204 and "authorization" in preflight.header("access-control-allow-headers")
    unknown = await pds.request("GET", "/xrpc")
    assert unknown.code == 404 and unknown.json()["error"] == "NotFound"  # leafpds's, as XRPC JSON

    did = (await create_account(pds))["did"]
    # The handle's host asks for its DID.
    answer = await pds.request("GET", "/.well-known/atproto-did", headers={"Host": "alice.test"})
    assert (answer.code, answer.body) == (200, did.encode())
    page = await pds.request("GET", "/account/")
    assert page.code == 200 and b"<title>Sign in" in page.body
    moved = await pds.request("GET", "/account", allow_redirects=False)
    assert moved.code in (301, 302, 303, 307, 308) and moved.header("location") == "/account/"
    assert (await pds.request("GET", "/auth/github/login")).code == 404  # leafpds's: no provider set up

    # What decides, path by path (as sent, before decoding).
    serves = pds.service.xrpc.serves
    assert all(
        serves(path)
        for path in [b"/xrpc/_health", b"/xrpc", b"/%78rpc/_health", b"/account", b"/auth/google/login",
                     b"/.well-known/atproto-did", b"/oauth/par", b"/oauth/authorize",
                     b"/.well-known/oauth-authorization-server", b"/.well-known/oauth-protected-resource"]
    )
    assert not any(
        serves(path)
        for path in [b"/", b"/hello", b"/robots.txt", b"/xrpcs/x", b"/.well-known", b"/.well-known/security.txt",
                     b"/.well-known/acme-challenge/token"]
    )


@pytest_twisted.ensureDeferred
async def test_body_limits_and_the_upload_spool_hold_on_the_embedded_mount(embedded):
    pds = embedded
    made = await create_account(pds)
    auth = {"Authorization": f"Bearer {made['accessJwt']}"}
    record = {"repo": made["did"], "collection": POST, "record": {"text": "x" * 20_000, "createdAt": "2024-01-01T00:00:00Z"}}
    too_big = await pds.post("com.atproto.repo.createRecord", record, headers=auth)
    assert (too_big.code, too_big.json()["error"]) == (413, "PayloadTooLarge")

    upload = {**auth, "Content-Type": "application/octet-stream"}
    too_big = await pds.request("POST", "/xrpc/com.atproto.repo.uploadBlob", data=os.urandom(100_001), headers=upload)
    assert (too_big.code, too_big.json()["error"]) == (413, "PayloadTooLarge")
    fits = await pds.request("POST", "/xrpc/com.atproto.repo.uploadBlob", data=os.urandom(100_000), headers=upload)
    assert fits.code == 200, fits.body
    # uploadBlob answers only for a body that streamed into an upload spool.
    assert fits.json()["blob"]["size"] == 100_000

    # The host's paths have the host's limit, larger than leafpds's JSON one here.
    echoed = await pds.request("POST", "/echo", data=b"y" * 50_000)
    assert (echoed.code, echoed.body) == (200, b"50000")
    refused = await pds.request("POST", "/echo", data=b"y" * 50_001)
    assert (refused.code, refused.json()["error"]) == (413, "PayloadTooLarge")


async def delayed_calls_settle(before, timeout=5.0):
    """The reactor's delayed calls that are not in ``before``, once the new ones are gone (or timeout)."""
    for _ in range(int(timeout / 0.05)):
        left = [call for call in reactor.getDelayedCalls() if call not in before and call.active()]
        if not left:
            return []
        await deferLater(reactor, 0.05, lambda: None)
    return left


class Subscriber:
    """A firehose subscriber in a thread, reading until the server closes."""

    def __init__(self, url: str) -> None:
        self.received = threading.Event()
        self.done = deferToThread(self._read, url.replace("http", "ws") + "/xrpc/com.atproto.sync.subscribeRepos?cursor=0")

    def _read(self, url: str) -> None:
        with connect(url, proxy=None) as ws:
            try:
                while True:
                    header, _body = decode_multi(ws.recv(timeout=10))
                    assert header["op"] == 1
                    self.received.set()
            except ConnectionClosed:
                return None


async def until(predicate, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("timed out")


@pytest_twisted.ensureDeferred
async def test_stopping_the_host_service_stops_leafpds_cleanly(tmp_path):
    before = set(reactor.getDelayedCalls())
    application = MultiService()
    pds = build_pds(make_settings(tmp_path / "data"), {})
    pds.setServiceParent(application)
    application.startService()
    await pds.ready
    port = await pds.listen("tcp:0:interface=127.0.0.1", pds.make_site(host_root()))
    running = RunningPDS(pds, f"http://127.0.0.1:{port.getHost().port}")
    try:
        # Work that leaves timers behind while it runs: the PLC directory,
        # the access log, a firehose subscriber (no keep-alive connections
        # of the test's own).
        assert (await create_account(running, persistent=False))["did"].startswith("did:plc:")
        assert (await running.request("GET", "/hello", persistent=False)).code == 200
        subscriber = Subscriber(running.url)
        await until(subscriber.received.is_set)
    finally:
        await application.stopService()
    # Stopping closed the subscriber's connection too.
    assert (await subscriber.done.addTimeout(10, reactor)) is None

    assert pds.app.db.closed and not pds.running
    with pytest.raises(error.ConnectionRefusedError):
        await treq.get(running.url + "/hello", persistent=False)
    left = await delayed_calls_settle(before)
    assert not left, "\n".join(map(str, left))

async def post(pds, made: dict, text: str) -> str:
    """createRecord over HTTP with ``made``'s session; the record's rkey."""
    answer = await pds.post(
        "com.atproto.repo.createRecord",
        {"repo": made["did"], "collection": POST,
         "record": {"$type": POST, "text": text, "createdAt": "2026-12-06T06:00:00.000Z"}},
        headers={"Authorization": "Bearer " + made["accessJwt"]},
    )
    assert answer.code == 200, answer.body
    return answer.json()["uri"].rsplit("/", 1)[-1]


async def texts(pds, did: str) -> list[str]:
    answer = await pds.get("com.atproto.repo.listRecords", {"repo": did, "collection": POST})
    assert answer.code == 200, answer.body
    return sorted(record["value"]["text"] for record in answer.json()["records"])


async def serve(pds, port: int = 0) -> RunningPDS:
    """``pds`` started, beside host_root() on ``port`` (0: any free one)."""
    await pds.ready
    listening = await pds.listen(f"tcp:{port}:interface=127.0.0.1", pds.make_site(host_root()))
    return RunningPDS(pds, f"http://127.0.0.1:{listening.getHost().port}")


@pytest_twisted.ensureDeferred
async def test_an_application_restarts_leafpds_on_its_folder_and_port(tmp_path):
    """
    An application reloads leafpds: stops it, builds and starts another on
    the same data folder and port, in the same process.  Its clients keep
    connections alive (treq's pool here, as browsers do): the requests they
    send afterwards reach the new leafpds, never the stopped one.
    """
    settings = make_settings(tmp_path / "data")
    first = build_pds(settings, {})
    first.startService()
    running = await serve(first)
    port = int(running.url.rsplit(":", 1)[1])
    try:
        made = await create_account(running)
        await post(running, made, "before the reload")
    finally:
        await first.stopService()
    assert first.app.db.closed

    second = build_pds(settings, {})
    second.startService()
    try:
        again = await serve(second, port)
        assert again.url == running.url
        # Before the fix the stopped leafpds answered on the kept-alive
        # connection, its closed database never did: the client hung.
        reading = ensureDeferred(texts(again, made["did"])).addTimeout(30, reactor)
        assert await reading == ["before the reload"]
        login = await again.post("com.atproto.server.createSession", {"identifier": "alice.test", "password": PASSWORD})
        assert login.code == 200, login.body
        await post(again, login.json(), "after the reload")
        assert await texts(again, made["did"]) == ["after the reload", "before the reload"]
        assert (await again.request("GET", "/hello")).body == b"hello from the host"
    finally:
        await second.stopService()


@pytest_twisted.ensureDeferred
async def test_the_same_service_starts_again_after_a_stop(tmp_path):
    """
    A PDSService is a Twisted MultiService, and like one it starts again
    after a stop (its application's stopService, then startService): the
    database, the embedded PLC directory and the background jobs run again.
    """
    application = MultiService()
    pds = build_pds(make_settings(tmp_path / "data"), {})
    pds.setServiceParent(application)
    application.startService()
    running = await serve(pds)
    try:
        made = await create_account(running)
        await post(running, made, "first run")
    finally:
        await application.stopService()
    assert pds.app.db.closed and not pds.running

    application.startService()
    try:
        running = await serve(pds)
        assert not pds.app.db.closed
        assert await texts(running, made["did"]) == ["first run"]
        await post(running, made, "second run")
        # A new account: the embedded PLC directory serves again too.
        other = await create_account(running, "bob")
        document = await running.get("com.atproto.identity.resolveHandle", {"handle": "bob.test"})
        assert document.json() == {"did": other["did"]}
        assert await texts(running, made["did"]) == ["first run", "second run"]
    finally:
        await application.stopService()
    assert pds.app.db.closed


class Held(Resource):
    """A host route that answers only when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []

    def render_GET(self, request):
        self.requests.append(request)
        return NOT_DONE_YET


class Connection(Protocol):
    """A client connection kept alive: what it received, and when the server closed it."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(self.received)


async def connection(port: int, path: str) -> Connection:
    """A connection to ``port`` that has sent a keep-alive GET for ``path``."""
    client = Connection()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    client.transport.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return client


async def held_and_idle(tmp_path):
    """leafpds beside a host with a held route; an idle kept-alive connection and one waiting on /held."""
    root = host_root()
    held = Held()
    root.putChild(b"held", held)
    pds = build_pds(make_settings(tmp_path / "data"), {})
    pds.startService()
    await pds.ready
    port = (await pds.listen("tcp:0:interface=127.0.0.1", pds.make_site(root))).getHost().port
    idle = await connection(port, "/hello")
    await until(lambda: idle.received.endswith(b"hello from the host"))
    busy = await connection(port, "/held")
    await until(lambda: held.requests)
    return pds, held, idle, busy


@pytest_twisted.ensureDeferred
async def test_stopping_closes_idle_connections_and_answers_the_requests_under_way(tmp_path):
    pds, held, idle, busy = await held_and_idle(tmp_path)
    stopped = []
    stopping = pds.stopService().addCallback(stopped.append)
    # The idle connection is closed at once, with nothing more sent on it ...
    assert (await idle.closed.addTimeout(10, reactor)).endswith(b"hello from the host")
    # ... the one with a request under way stays until its answer is sent,
    # and so does the service's database.
    assert not stopped and not busy.closed.called and not pds.app.db.closed
    held.requests[0].write(b"the held answer")
    held.requests[0].finish()
    answer = await busy.closed.addTimeout(10, reactor)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nthe held answer\r\n" in answer
    assert b"\r\nConnection: close\r\n" in answer
    await stopping
    assert stopped and pds.app.db.closed


@pytest_twisted.ensureDeferred
async def test_a_request_that_does_not_end_is_cut_after_the_grace(tmp_path):
    pds, held, idle, busy = await held_and_idle(tmp_path)
    try:
        (site,) = pds.sites
        await site.close_connections(grace=0).addTimeout(10, reactor)
        # Cut without an answer; the idle one closed as usual.
        assert (await busy.closed.addTimeout(10, reactor)) == b""
        assert (await idle.closed.addTimeout(10, reactor)).endswith(b"hello from the host")
        assert not held.requests[0].finished
    finally:
        await pds.stopService()


def sdk_session(url: str) -> dict:
    """What an app does with the Python SDK: create an account, log in, post, read the post back."""
    from atproto import Client

    client = Client(base_url=url)
    made = client.com.atproto.server.create_account(
        {"handle": "carol.test", "email": "carol@example.com", "password": PASSWORD}
    )
    app = Client(base_url=url)
    app.login("carol.test", PASSWORD, fetch_bsky_profile=False)  # no AppView here
    post = app.send_post("Hello from an application with leafpds inside", profile_identify=made.did)
    rkey = post.uri.rsplit("/", 1)[-1]
    record = app.com.atproto.repo.get_record({"repo": made.did, "collection": POST, "rkey": rkey})
    for each in (client, app):
        each.request.close()
    return {"did": made.did, "uri": post.uri, "read": record.uri, "text": record.value.text}


def firehose_ops(url: str, did: str) -> list[str]:
    """The paths of the first #commit frame for ``did`` on the firehose at ``url``."""
    with connect(url.replace("http", "ws") + "/xrpc/com.atproto.sync.subscribeRepos?cursor=0", proxy=None) as ws:
        while True:
            header, body = decode_multi(ws.recv(timeout=10))  # exactly two objects
            if header.get("t") == "#commit" and body["repo"] == did and body["ops"]:
                return [op["path"] for op in body["ops"]]


@pytest_twisted.ensureDeferred
async def test_the_example_app_serves_its_page_and_the_pds_on_one_port(tmp_path):
    bundle = tmp_path / "atproto-api.mjs"
    bundle.write_text("export class AtpAgent {}\n")  # the real bundle is the browser test's (see docs)
    app = example.ExampleService(make_settings(tmp_path / "data"), bundle, environ={})
    app.startService()
    try:
        port = (await app.listening).getHost().port
        url = f"http://127.0.0.1:{port}"
        host = RunningPDS(app.pds, url)

        page = await host.request("GET", "/")
        assert page.code == 200 and page.header("content-type") == "text/html; charset=utf-8"
        assert b'import { AtpAgent } from "/static/atproto-api.mjs";' in page.body
        assert b"new AtpAgent({ service: location.origin })" in page.body
        hello = await host.request("GET", "/hello")
        assert hello.json() == {"hello": "from the application", "pds": f"http://localhost:{port}"}
        script = await host.request("GET", "/static/atproto-api.mjs")
        assert script.body == bundle.read_bytes() and script.header("content-type").startswith("text/javascript")

        session = await deferToThread(sdk_session, url)
        did = session["did"]
        assert session["uri"].startswith(f"at://{did}/{POST}/") and session["read"] == session["uri"]
        assert session["text"] == "Hello from an application with leafpds inside"
        rkey = session["uri"].rsplit("/", 1)[-1]
        assert await deferToThread(firehose_ops, url, did) == [f"{POST}/{rkey}"]
        # After login the SDK talked to the PDS the DID document names: this
        # port, by the public URL derived from it.
        document = await app.pds.app.plc.resolve(did)
        assert [s["serviceEndpoint"] for s in document["service"]] == [f"http://localhost:{port}"]
    finally:
        await app.stopService()
    assert app.pds.app.db.closed



def sign_up_and_post_on_the_example_page(url: str, shots: Path) -> dict:
    """The example page in Chromium: create an account, sign in again, post; what the page showed."""
    from playwright.sync_api import expect, sync_playwright

    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        console: list[str] = []
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda e: console.append(f"page error: {e}"))
            try:
                page.goto(url)
                expect(page.locator("#hello")).to_contain_text("from the application")
                page.fill("#handle", "dave.test")
                page.fill("#email", "dave@example.com")
                page.fill("#password", PASSWORD)
                page.click("#create")
                expect(page.locator("#status")).to_contain_text("Signed in as dave.test")
                page.screenshot(path=shots / "01-created.png", full_page=True)
                # A fresh page: sign in with the password, as a returning user.
                page.reload()
                page.fill("#handle", "dave.test")
                page.fill("#password", PASSWORD)
                page.click("#sign-in")
                expect(page.locator("#status")).to_contain_text("Signed in as dave.test")
                expect(page.locator("#compose")).to_be_visible()
                page.fill("#text", "Posted from the page, same origin")
                page.click("#post")
                expect(page.locator("#posted")).to_contain_text("Posted at://")
                page.screenshot(path=shots / "02-posted.png", full_page=True)
                return {"posted": page.locator("#posted").inner_text()}
            except Exception as e:
                page.screenshot(path=shots / "failed.png", full_page=True)
                raise AssertionError(f"{e}\nbrowser console:\n" + "\n".join(console) + f"\n(screenshots in {shots})") from e
        finally:
            browser.close()


@pytest_twisted.ensureDeferred
async def test_the_example_page_signs_up_and_posts_in_a_browser(tmp_path, atproto_api_bundle):
    app = example.ExampleService(make_settings(tmp_path / "data"), atproto_api_bundle, environ={})
    app.startService()
    try:
        port = (await app.listening).getHost().port
        shots = tmp_path / "screenshots"
        shots.mkdir()
        # localhost, the origin the DID document names: the agent stays on it after login.
        seen = await deferToThread(sign_up_and_post_on_the_example_page, f"http://localhost:{port}/", shots)
        uri = seen["posted"].split()[1].rstrip(":")
        did, collection, rkey = uri[len("at://"):].split("/")
        host = RunningPDS(app.pds, f"http://127.0.0.1:{port}")
        record = await host.get("com.atproto.repo.getRecord", {"repo": did, "collection": collection, "rkey": rkey})
        assert record.code == 200 and record.json()["value"]["text"] == "Posted from the page, same origin"
        account = await host.get("com.atproto.repo.describeRepo", {"repo": did})
        assert account.json()["handle"] == "dave.test"
    finally:
        await app.stopService()
