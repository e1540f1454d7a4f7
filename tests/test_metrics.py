"""
Prometheus metrics: scraped over real HTTP from ``--metrics-listen`` and
parsed with prometheus-client's own parser, after real requests, commits,
uploads, subscribers and proxied calls.
"""

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.appview_standin import StandInAppView
from tests.harness import make_settings, start_pds
from tests.test_accounts import bearer, create
from tests.test_firehose import Reader

CREATE = "com.atproto.repo.createRecord"
TIMELINE = "app.bsky.feed.getTimeline"


class Scrape:
    """One scrape: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families.values()
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(pds) -> Scrape:
    port = pds.service.metrics_port.getHost().port
    response = await treq.get(f"http://127.0.0.1:{port}/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4")
    return Scrape((await response.content()).decode())


@pytest_twisted.async_yield_fixture
async def services(tmp_path):
    """A leafpds serving metrics, with a stand-in AppView."""
    appview = await StandInAppView.start()
    pds = await start_pds(make_settings(
        tmp_path / "data", metrics_listen="tcp:0:interface=127.0.0.1",
        appview_url=appview.url, appview_did=appview.did,
    ))
    appview.plc_url = pds.service.app.plc.base_url
    yield pds, appview
    await pds.service.stopService()
    await appview.stop()


def post(n: int) -> dict:
    return {"$type": "app.bsky.feed.post", "text": f"post {n}", "createdAt": "2024-01-01T00:00:00.000Z"}


@pytest_twisted.ensureDeferred
async def test_requests_commits_and_the_writer_are_counted(services):
    pds, _ = services
    made = (await create(pds, name="alice")).json()
    auth = bearer(made["accessJwt"])
    before = await scrape(pds)
    for n in range(5):
        answer = await pds.post(CREATE, {"repo": made["did"], "collection": "app.bsky.feed.post", "record": post(n)},
                                headers=auth)
        assert answer.code == 200, answer.body
    refused = await pds.post(CREATE, {"repo": made["did"], "collection": "app.bsky.feed.post", "record": post(9)})
    assert refused.code == 401
    assert (await pds.get("com.example.nothing.here")).code == 401  # proxied: needs a session
    after = await scrape(pds)

    def moved(name, **labels):
        return after(name, **labels) - before(name, **labels)

    assert moved("leafpds_xrpc_requests_total", nsid=CREATE, status="200") == 5
    assert moved("leafpds_xrpc_requests_total", nsid=CREATE, status="401") == 1
    # A name no lexicon declares is counted, but not as itself.
    assert moved("leafpds_xrpc_requests_total", nsid="other", status="401") == 1
    assert not any("com.example" in str(key) for key in after.samples)
    assert moved("leafpds_xrpc_request_duration_seconds_count", nsid=CREATE) == 6
    assert moved("leafpds_xrpc_request_duration_seconds_sum", nsid=CREATE) > 0
    assert after.families["leafpds_xrpc_request_duration_seconds"].type == "histogram"
    assert moved("leafpds_commit_duration_seconds_count") == 5
    assert 0 < moved("leafpds_commit_duration_seconds_sum") < 5
    assert moved("leafpds_commit_duration_seconds_bucket", le="+Inf") == 5
    assert moved("leafpds_db_write_batch_units_count") >= 5
    assert moved("leafpds_db_write_batch_units_sum") >= 5
    assert after("leafpds_db_write_queue_units") == 0
    assert after("leafpds_db_size_bytes") > 0
    assert after("leafpds_db_wal_size_bytes") >= 0
    assert after("leafpds_data_dir_free_bytes") > 0
    assert after("leafpds_disk_full") == 0


@pytest_twisted.ensureDeferred
async def test_blob_bytes_are_counted(services):
    pds, _ = services
    made = (await create(pds, name="bob")).json()
    before = await scrape(pds)
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    answer = await pds.request(
        "POST", "/xrpc/com.atproto.repo.uploadBlob", data=data,
        headers={**bearer(made["accessJwt"]), "Content-Type": "image/png"},
    )
    assert answer.code == 200, answer.body
    after = await scrape(pds)
    assert after("leafpds_blob_bytes") - before("leafpds_blob_bytes") == len(data)
    assert after("leafpds_blobs") - before("leafpds_blobs") == 1


@pytest_twisted.ensureDeferred
async def test_firehose_subscribers_and_frames(services):
    pds, _ = services
    assert (await scrape(pds))("leafpds_firehose_subscribers") == 0
    reader = Reader(pds, "?cursor=0")
    made = (await create(pds, name="carol")).json()
    for _ in range(100):
        if (await scrape(pds))("leafpds_firehose_subscribers") == 1 and reader.frames:
            break
        await deferLater(reactor, 0.05, lambda: None)
    during = await scrape(pds)
    assert during("leafpds_firehose_subscribers") == 1
    assert during("leafpds_firehose_frames_sent_total") >= len(reader.frames) > 0
    reader.target = 0  # stop as soon as it has anything
    await reader.done
    for _ in range(100):
        if (await scrape(pds))("leafpds_firehose_subscribers") == 0:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert (await scrape(pds))("leafpds_firehose_subscribers") == 0
    assert (await scrape(pds))("leafpds_firehose_subscribers_dropped_total") == 0
    assert made["did"]


@pytest_twisted.ensureDeferred
async def test_proxied_calls_time_the_upstream(services):
    pds, appview = services
    made = (await create(pds, name="dan")).json()
    appview.route(TIMELINE, body={"feed": []})
    answer = await pds.get(TIMELINE, headers=bearer(made["accessJwt"]))
    assert answer.code == 200, answer.body
    after = await scrape(pds)
    assert after("leafpds_proxy_upstream_duration_seconds_count", service="appview") == 1
    assert after("leafpds_proxy_upstream_duration_seconds_sum", service="appview") > 0
    assert after("leafpds_xrpc_requests_total", nsid=TIMELINE, status="200") == 1


@pytest_twisted.ensureDeferred
async def test_each_server_has_its_own_registry_and_no_endpoint_unless_asked(tmp_path):
    from prometheus_client import REGISTRY

    plain = await start_pds(make_settings(tmp_path / "plain"))
    try:
        assert plain.service.metrics_port is None
        assert plain.service.metrics.registry is not REGISTRY
        assert REGISTRY.get_sample_value("leafpds_commit_duration_seconds_count") is None
        # The embedding API: the same metrics, as a resource to mount anywhere.
        assert plain.service.metrics_resource().isLeaf
    finally:
        await plain.service.stopService()
