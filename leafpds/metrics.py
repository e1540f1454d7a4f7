"""
Prometheus metrics of one leafpds, in a registry of its own (never the
process-wide default: a process may run several servers, and an application
that embeds leafpds has metrics of its own).

What happens per request or per commit is counted where it happens, at the
cost of a counter increment or a histogram observation (about a microsecond;
a small request costs some 150).  Everything that is a state rather than an
event — queue depth, subscribers, file sizes, free space — is read only when
Prometheus scrapes, by :class:`_StateCollector`.
"""

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

if TYPE_CHECKING:
    from leafpds.app import AppContext

log = Logger()

#: The label for requests to methods no lexicon declares: clients choose
#: the name, and each label value is a time series kept forever.
OTHER_METHOD = "other"

# The classic text format, which every Prometheus reads (leafpds's names
# need nothing newer).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Commits take ~0.5 ms alone and tens of ms in a busy batch.
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The metrics of one PDS; ``registry`` holds them all."""

    def __init__(self, app: "AppContext") -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "leafpds_xrpc_requests", "XRPC requests answered, by method and HTTP status.",
            ["nsid", "status"], registry=registry,
        )
        self.request_seconds = Histogram(
            "leafpds_xrpc_request_duration_seconds", "Time to answer an XRPC request, by method.",
            ["nsid"], registry=registry,
        )
        self.commit_seconds = Histogram(
            "leafpds_commit_duration_seconds",
            "Time from a repo write's arrival at the transactor to its durable commit "
            "(its count: commits made).",
            buckets=_COMMIT_BUCKETS, registry=registry,
        )
        self.write_batch = Histogram(
            "leafpds_db_write_batch_units",
            "Units of work (commits and other writes) per database write transaction.",
            buckets=_BATCH_BUCKETS, registry=registry,
        )
        self.upstream_seconds = Histogram(
            "leafpds_proxy_upstream_duration_seconds",
            "Time for a service leafpds forwards to to answer with its status and headers.",
            ["service"], registry=registry,
        )
        self.upstream_failures = Counter(
            "leafpds_proxy_upstream_failures",
            "Forwarded calls whose service could not be reached or did not answer in time.",
            ["service"], registry=registry,
        )
        self._state = _StateCollector(app)
        registry.register(self._state)
        self._known = app.lexicons.method_type
        # (nsid, status) -> the children to update: labels() validates and
        # locks each time, a dict hit does not.
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        app.transactor.observe_commit = self.commit_seconds.observe
        app.db.observe_write_batches(self.write_batch.observe)

    def request(self, nsid: str, status: int, seconds: float) -> None:
        """An XRPC request for ``nsid`` answered ``status`` in ``seconds``."""
        children = self._children.get((nsid, status))
        if children is None:
            children = self._add_children(nsid, status)
        children[0].inc()
        children[1].observe(seconds)

    def _add_children(self, nsid: str, status: int) -> tuple[Any, Any]:
        label = nsid if self._known(nsid) is not None else OTHER_METHOD
        children = (self.requests.labels(label, str(status)), self.request_seconds.labels(label))
        if label == nsid:  # an unknown name is not kept: there is no end to them
            self._children[(nsid, status)] = children
        return children

    def refresh(self) -> Deferred:
        """Re-read what needs the database (blob totals); fires when done."""
        return self._state.refresh()

    def resource(self) -> Resource:
        """A ``twisted.web`` resource answering every GET with the metrics."""
        return MetricsResource(self)


class _StateCollector:
    """The gauges (and counters kept as plain numbers) read at scrape time."""

    def __init__(self, app: "AppContext") -> None:
        self.app = app
        self.blobs = 0
        self.blob_bytes = 0

    def describe(self) -> list:
        # Not collect(): registering would then read the files and the queues.
        return []

    def refresh(self) -> Deferred:
        def stored(totals: tuple[int, int]) -> None:
            self.blobs, self.blob_bytes = totals

        return self.app.db.read(_blob_totals).addCallback(stored)

    def collect(self) -> Any:
        app = self.app
        yield _gauge("leafpds_db_write_queue_units", "Units of work waiting for the database writer.",
                     app.db.pending_writes)
        sequencer = app.sequencer
        yield _gauge("leafpds_firehose_subscribers", "Connected subscribeRepos subscribers.",
                     len(sequencer.outboxes))
        sent = CounterMetricFamily("leafpds_firehose_frames_sent", "Firehose frames sent to subscribers.")
        sent.add_metric([], sequencer.frames_sent)
        yield sent
        dropped = CounterMetricFamily(
            "leafpds_firehose_subscribers_dropped",
            "Subscribers disconnected for falling too far behind (ConsumerTooSlow).",
        )
        dropped.add_metric([], sequencer.dropped)
        yield dropped
        yield _gauge("leafpds_blobs", "Blobs stored (as of the last scrape's count).", self.blobs)
        yield _gauge("leafpds_blob_bytes", "Bytes of blobs stored (as of the last scrape's count).",
                     self.blob_bytes)
        path = app.db.path
        yield _gauge("leafpds_db_size_bytes", "Size of the database file.", _size(path))
        yield _gauge("leafpds_db_wal_size_bytes", "Size of the database's write-ahead log.",
                     _size(path.with_name(path.name + "-wal")))
        space = app.db.space
        yield _gauge("leafpds_data_dir_free_bytes",
                     "Bytes free for leafpds on the data folder's file system.", space.free_bytes())
        yield _gauge("leafpds_disk_full",
                     "1 while writes are refused because the data folder's disk is full.",
                     int(space.full))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _size(path: os.PathLike) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _blob_totals(conn: Any) -> tuple[int, int]:
    return tuple(conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM blobs").fetchone())


class MetricsResource(Resource):
    """The Prometheus text format, at whatever path it is mounted on."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: IRequest) -> Any:
        def answer(_: Any) -> None:
            data = generate_latest(self.metrics.registry)
            request.setHeader("content-type", CONTENT_TYPE)
            request.setHeader("content-length", str(len(data)))
            request.write(data)
            request.finish()

        def failed(failure: Failure) -> None:
            # The blob totals stay as they were; the rest is still worth serving.
            log.failure("Reading the blob totals for the metrics failed", failure)

        finished = request.notifyFinish()
        d = self.metrics.refresh()
        d.addErrback(failed)
        d.addCallback(lambda _: None if finished.called else answer(_))
        d.addErrback(lambda failure: log.failure("Serving the metrics failed", failure))
        return NOT_DONE_YET
