"""
Telling relays to crawl us: ``com.atproto.sync.requestCrawl`` with our
hostname, sent to each configured relay at start-up and after new events,
at most once per interval per relay (20 minutes, as the reference PDS).
"""

import json
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

INTERVAL = 20 * 60.0


class CrawlerNotifier:
    def __init__(
        self,
        relays: list[str],
        hostname: Callable[[], str],
        reactor: Any,
        interval: float = INTERVAL,
        timeout: float = 10.0,
    ) -> None:
        self.relays = [relay.rstrip("/") for relay in relays]
        self.hostname = hostname
        self.reactor = reactor
        self.interval = interval
        self.timeout = timeout
        self._last: dict[str, float] = {}
        self._in_flight: set[str] = set()

    def start(self) -> None:
        self.notify(force=True)

    def committed(self, events: list[tuple[int, bytes]]) -> None:
        """A transactor listener: new events may mean it is time to ask again."""
        self.notify()

    def notify(self, force: bool = False) -> list[Deferred]:
        now = self.reactor.seconds()
        sent = []
        for relay in self.relays:
            due = force or now - self._last.get(relay, float("-inf")) >= self.interval
            if due and relay not in self._in_flight:
                self._last[relay] = now
                self._in_flight.add(relay)
                d = Deferred.fromCoroutine(self._request(relay))
                d.addBoth(self._done, relay)
                sent.append(d)
        return sent

    async def _request(self, relay: str) -> None:
        d = treq.post(
            f"{relay}/xrpc/com.atproto.sync.requestCrawl",
            json.dumps({"hostname": self.hostname()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        d.addTimeout(self.timeout, self.reactor)
        response = await d
        await response.content()
        if response.code != 200:
            raise RuntimeError(f"answered {response.code}")

    def _done(self, result: Any, relay: str) -> None:
        self._in_flight.discard(relay)
        if isinstance(result, Failure):
            log.warn("requestCrawl to {relay} failed: {error}", relay=relay, error=result.getErrorMessage())
        else:
            log.info("Asked {relay} to crawl us", relay=relay)
