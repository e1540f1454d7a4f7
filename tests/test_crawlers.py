"""requestCrawl to configured relays: a local relay stand-in counts the requests."""

import json

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Site

from leafpds.sequencer.crawlers import CrawlerNotifier
from tests.harness import make_settings, start_pds
from tests.test_accounts import create


class Relay(Resource):
    """Speaks com.atproto.sync.requestCrawl as a relay does."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict] = []
        self.arrived = None

    def render_POST(self, request):
        assert request.path == b"/xrpc/com.atproto.sync.requestCrawl"
        self.requests.append(json.loads(request.content.read()))
        if self.arrived is not None:
            arrived, self.arrived = self.arrived, None
            reactor.callLater(0, arrived.callback, None)
        request.setHeader("content-type", "application/json")
        return b"{}"


async def relay_on_loopback():
    relay = Relay()
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(relay))
    return relay, port


class ClockedReactor:
    """The real reactor for I/O, a Clock for the 20-minute spacing."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def seconds(self) -> float:
        return self.clock.seconds()

    def __getattr__(self, name):
        return getattr(reactor, name)


@pytest_twisted.ensureDeferred
async def test_at_most_once_per_interval_per_relay():
    relay, port = await relay_on_loopback()
    try:
        clock = Clock()
        url = f"http://127.0.0.1:{port.getHost().port}"
        notifier = CrawlerNotifier([url], lambda: "pds.example.com", ClockedReactor(clock))
        for d in notifier.notify(force=True):
            await d
        assert relay.requests == [{"hostname": "pds.example.com"}]
        assert notifier.notify() == []  # too soon
        clock.advance(19 * 60)
        assert notifier.notify() == []
        clock.advance(60)
        for d in notifier.notify():
            await d
        assert len(relay.requests) == 2
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_dead_relay_is_logged_not_fatal():
    notifier = CrawlerNotifier(["http://127.0.0.1:9"], lambda: "x.example", reactor, timeout=2)
    for d in notifier.notify(force=True):
        await d  # the failure is handled inside
    assert notifier._in_flight == set()


@pytest_twisted.ensureDeferred
async def test_the_pds_asks_on_start_and_after_events(tmp_path):
    from twisted.internet.defer import Deferred

    relay, port = await relay_on_loopback()
    url = f"http://127.0.0.1:{port.getHost().port}"
    relay.arrived = Deferred()
    waiting = relay.arrived
    running = await start_pds(make_settings(tmp_path, crawlers=url, hostname="localhost"))
    try:
        await waiting
        assert relay.requests == [{"hostname": "localhost"}]
        # Right after, new events do not ask again (20-minute spacing).
        assert (await create(running)).code == 200
        assert len(relay.requests) == 1
    finally:
        await running.service.stopService()
        await port.stopListening()
