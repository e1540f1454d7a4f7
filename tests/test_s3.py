"""
The S3 blob store beyond the shared suite (tests/test_blobs.py): options,
credentials, signing against the SDK, presigned getBlob, multipart, and the
faults — S3 refusing, failing, stalling or cutting a transfer — through the
fault proxy in front of moto (tests/s3_standin.py).
"""

import datetime
import io
import os
import time
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import botocore.auth
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import FileBodyProducer

from leafpds.blobs.s3 import BlobStoreUnavailable, S3BlobStore, S3Config, S3Error
from leafpds.config import ConfigError, Settings, parse_blobstore, resolve
from leafpds.ipld.cid import cid_for_raw
from leafpds.service import open_app
from leafpds.tap import Options
from tests.harness import ServerProcess, free_port, make_settings, start_pds
from tests.s3_standin import BUCKET, FaultProxy
from tests.test_accounts import assert_error, bearer, create
from tests.test_admin import ADMIN, ADMIN_PASSWORD
from tests.test_blobs import POST, PNG, blob_rows, create_record, image_post, spool_files, upload

MiB = 1024 * 1024
SECRET = "s3cr3t-never-shown"


# --- options ------------------------------------------------------------------------------


def test_blobstore_values():
    assert parse_blobstore("disk") is None
    assert parse_blobstore("s3://my-bucket") == ("my-bucket", "")
    assert parse_blobstore("s3://my.bucket/pds/one/") == ("my.bucket", "pds/one/")
    for bad in ("s3://", "s3://UPPER", "s3://a", "s3://a..b/x", "file:///blobs", "S3://x-y-z"):
        with pytest.raises(ValueError):
            parse_blobstore(bad)
    with pytest.raises(ConfigError):
        Settings.from_options(resolve({"blobstore": "s3://No"}, {}))


def test_s3_options_and_the_aws_environment():
    given = {"blobstore": "s3://bucket-1/leaf", "s3-force-path-style": True,
             "s3-endpoint": "http://127.0.0.1:9000/", "s3-secret-access-key": SECRET}
    settings = Settings.from_options(resolve(given, {"LEAFPDS_S3_ACCESS_KEY_ID": "AKID"}))
    assert (settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint) == (
        "bucket-1", "leaf/", "http://127.0.0.1:9000")
    assert settings.s3_force_path_style and not settings.s3_presigned_get
    assert SECRET not in repr(settings)
    environ = {"AWS_ACCESS_KEY_ID": "ENVID", "AWS_SECRET_ACCESS_KEY": "envsecret",
               "AWS_SESSION_TOKEN": "tok", "AWS_REGION": "eu-west-3"}
    config = S3Config.from_settings(settings, environ)
    # The options win; a session token belongs to the environment's keys only.
    assert (config.access_key_id, config.secret_access_key, config.session_token) == ("AKID", SECRET, None)
    assert config.region == "eu-west-3" and config.endpoint == "http://127.0.0.1:9000"
    assert SECRET not in repr(config) and SECRET not in config.describe()

    bare = Settings.from_options(resolve({"blobstore": "s3://bucket-1"}, {}))
    config = S3Config.from_settings(bare, environ)
    assert (config.access_key_id, config.secret_access_key, config.session_token) == ("ENVID", "envsecret", "tok")
    assert config.endpoint is None and config.prefix == ""
    store = S3BlobStore(config, reactor)
    # AWS by default: virtual-hosted addressing in the region.
    assert store._url("blocks/did:plc:x/b") == "https://bucket-1.s3.eu-west-3.amazonaws.com/blocks/did%3Aplc%3Ax/b"
    assert "envsecret" not in repr(store)
    assert S3Config.from_settings(bare, {}).region == "us-east-1"
    help_text = str(Options())
    for option in ("--blobstore", "--s3-endpoint", "--s3-region", "--s3-access-key-id",
                   "--s3-secret-access-key", "--s3-force-path-style", "--s3-presigned-get"):
        assert option in help_text


def test_missing_credentials_stop_start_up(tmp_path):
    settings = make_settings(tmp_path / "data", blobstore="s3://bucket-1")
    with pytest.raises(ConfigError, match="credentials"):
        open_app(settings, {}, reactor)


# --- signing ---------------------------------------------------------------------------------


def test_presigned_urls_are_the_sdks(s3, monkeypatch):
    # The same URL, byte for byte, as boto3 presigns for the same key at the
    # same moment: leafpds encodes keys (":" and "%" in DIDs) and signs as the SDK.
    moment = datetime.datetime(2026, 12, 6, 3, 0, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: moment)
    store = S3BlobStore(S3Config(
        bucket=BUCKET, prefix="pds/", endpoint=s3.url, force_path_style=True, presigned_get=True,
        access_key_id="AKIDEXAMPLE", secret_access_key=SECRET,
    ), reactor)
    did, cid = "did:web:localhost%3A8080", cid_for_raw(b"x")
    ours = store.redirect_url(did, cid, "image/png")
    sdk = s3.client("AKIDEXAMPLE", SECRET).generate_presigned_url(
        "get_object", ExpiresIn=300,
        Params={"Bucket": BUCKET, "Key": store.key(did, cid), "ResponseContentType": "image/png"},
    )
    ours_parts, sdk_parts = urlsplit(ours), urlsplit(sdk)
    assert ours_parts.path == sdk_parts.path == f"/{BUCKET}/pds/blocks/did%3Aweb%3Alocalhost%253A8080/{cid.encode()}"
    assert parse_qs(ours_parts.query) == parse_qs(sdk_parts.query)
    assert "X-Amz-Signature" in ours and SECRET not in ours


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_answer_a_named_error_and_store_nothing(tmp_path, s3):
    # moto checks every signature: a wrong secret is refused, not retried.
    settings = make_settings(tmp_path / "data", blobstore=f"s3://{BUCKET}", s3_endpoint=s3.url,
                             s3_force_path_style=True, s3_access_key_id=s3.access_key_id,
                             s3_secret_access_key=SECRET)
    running = await start_pds(settings)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        auth = bearer((await create(running)).json()["accessJwt"])
        answer = await upload(running, auth, PNG)
        assert_error(answer, 503, "BlobStoreUnavailable")
        assert answer.json()["message"] == "The blob store is unavailable"
        assert await blob_rows(running) == [] and spool_files(running) == [] and s3.keys() == {}
    finally:
        globalLogPublisher.removeObserver(events.append)
        await running.service.stopService()
    logged = "\n".join(formatEvent(event) for event in events)
    assert "1 attempts" in logged and "403" in logged  # not retried
    assert SECRET not in logged


# --- presigned getBlob, multipart -------------------------------------------------------


def s3_settings(s3, endpoint=None, **more):
    return dict(blobstore=f"s3://{BUCKET}/pds", s3_endpoint=endpoint or s3.url,
                s3_force_path_style=True, s3_access_key_id=s3.access_key_id,
                s3_secret_access_key=s3.secret_access_key, **more)


@pytest_twisted.async_yield_fixture
async def s3_pds(tmp_path, s3):
    running = await start_pds(make_settings(tmp_path / "data", admin_password=ADMIN_PASSWORD, **s3_settings(s3)))
    yield running
    await running.service.stopService()


async def account(pds, name="alice"):
    created = (await create(pds, name)).json()
    return created["did"], bearer(created["accessJwt"])


@pytest_twisted.ensureDeferred
async def test_presigned_get_redirects_to_s3(tmp_path, s3):
    settings = make_settings(tmp_path / "data", **s3_settings(s3, s3_presigned_get=True))
    running = await start_pds(settings)
    try:
        did, auth = await account(running)
        blob = (await upload(running, auth, PNG)).json()["blob"]
        params = {"did": did, "cid": blob["ref"]["$link"]}
        # Temporary blobs are not served, redirect or not.
        assert_error(await running.get("com.atproto.sync.getBlob", params), 400, "InvalidRequest")
        await create_record(running, auth, did, image_post(blob))
        got = await running.get("com.atproto.sync.getBlob", params, allow_redirects=False)
        assert got.code == 302 and got.header("cache-control") == "private, no-store"
        location = got.header("location")
        assert location.startswith(s3.url + f"/{BUCKET}/pds/blocks/") and "X-Amz-Signature" in location
        # moto checks only header signatures; test_presigned_urls_are_the_sdks checks this one.
        s3.stop_checking_signatures()
        fetched = await treq.get(location)
        assert fetched.code == 200 and await fetched.content() == PNG
        assert fetched.headers.getRawHeaders("content-type") == ["image/png"]
        # A client's Range goes to S3 with it.
        ranged = await treq.get(location, headers={"Range": "bytes=0-9"})
        assert ranged.code == 206 and await ranged.content() == PNG[:10]
    finally:
        await running.service.stopService()


def small_parts(pds, **more):
    """Multipart from 5 MiB on, in 5 MiB parts (S3's smallest)."""
    store = pds.service.app.blobs.store
    store.config = replace(store.config, multipart_threshold=5 * MiB, part_size=5 * MiB, **more)
    return store


@pytest_twisted.ensureDeferred
async def test_a_large_blob_goes_up_in_parts(s3_pds, s3):
    store = small_parts(s3_pds)
    requests = []
    send = store._send
    store._send = lambda method, key, query=None, **kw: requests.append((method, sorted(query or {}))) or send(method, key, query, **kw)
    in_flight, most = [0], [0]
    call = store._call

    async def counted(*args, **kwargs):
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            return await call(*args, **kwargs)
        finally:
            in_flight[0] -= 1

    store._call = counted
    did, auth = await account(s3_pds)
    data = os.urandom(11 * MiB)
    answer = await upload(s3_pds, auth, FileBodyProducer(io.BytesIO(data)))
    assert answer.code == 200, answer.body
    assert requests == [("POST", ["uploads"])] + [("PUT", ["partNumber", "uploadId"])] * 3 + [("POST", ["uploadId"])]
    # The parts went up together: one after another would never have two in
    # flight.  (All three at once depends on each part's hashing, in the
    # thread pool, finishing before the first upload does: not under load.)
    assert most[0] >= 2
    cid = cid_for_raw(data).encode()
    assert s3.keys() == {f"pds/blocks/{did}/{cid}": data} and s3.multipart_uploads() == []
    assert spool_files(s3_pds) == []
    await create_record(s3_pds, auth, did, {"file": answer.json()["blob"]}, "com.example.file")
    got = await s3_pds.get("com.atproto.sync.getBlob", {"did": did, "cid": cid})
    assert got.code == 200 and got.body == data


# --- back-off ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_retries_back_off_exponentially():
    clock = task.Clock()
    store = S3BlobStore(S3Config(bucket="b-1", access_key_id="a", secret_access_key=SECRET,
                                 backoff=0.2, attempts=4), clock, rand=lambda: 1.0)
    calls = []

    async def flaky():
        calls.append(clock.seconds())
        if len(calls) < 3:
            raise S3Error("HTTP 503 SlowDown", retryable=True)
        return "stored"

    d = defer_of(store._retrying("PUT k", flaky))
    assert calls == [0]
    clock.advance(0.19)
    assert calls == [0]
    clock.advance(0.01)
    assert calls == [0, 0.2]
    clock.advance(0.4)
    assert calls == pytest.approx([0, 0.2, 0.6]) and await d == "stored"

    calls.clear()

    async def down():
        calls.append(clock.seconds())
        raise S3Error("HTTP 500", retryable=True)

    d = defer_of(store._retrying("PUT k", down))
    clock.pump([0.1] * 20)
    start = calls[0]
    assert [t - start for t in calls] == pytest.approx([0, 0.2, 0.6, 1.4])  # 4 attempts, then:
    with pytest.raises(BlobStoreUnavailable):
        await d

    calls.clear()

    async def refused():
        calls.append(clock.seconds())
        raise S3Error("HTTP 403 AccessDenied", retryable=False)

    with pytest.raises(BlobStoreUnavailable):
        await store._retrying("PUT k", refused)
    assert len(calls) == 1  # not worth trying again


def defer_of(coroutine):
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(coroutine)


# --- faults -------------------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def faulty(tmp_path, s3):
    """A leafpds whose S3 is behind the fault proxy; short timeouts, quick retries."""
    proxy = await FaultProxy(int(s3.url.rsplit(":", 1)[1])).start()
    running = await start_pds(make_settings(tmp_path / "data", admin_password=ADMIN_PASSWORD,
                                            **s3_settings(s3, proxy.url)))
    store = running.service.app.blobs.store
    store.config = replace(store.config, timeout=0.5, attempts=3, backoff=0.01)
    store.pool.persistent = False  # a connection per request: the proxy counts requests
    yield running, proxy
    await running.service.stopService()
    await proxy.stop()


async def assert_upload_fails_cleanly(pds, s3, auth, data=None):
    data = os.urandom(2000) if data is None else data
    rows, keys = await blob_rows(pds), s3.keys()
    answer = await upload(pds, auth, data)
    assert_error(answer, 503, "BlobStoreUnavailable")
    assert answer.json()["message"] == "The blob store is unavailable"
    # No record can point at it: no new row; nothing half-stored; no local leftovers.
    assert await blob_rows(pds) == rows and s3.keys() == keys and spool_files(pds) == []
    assert (await pds.get("_health")).code == 200


@pytest_twisted.ensureDeferred
async def test_s3_answering_503_is_retried_then_given_up(faulty, s3):
    pds, proxy = faulty
    did, auth = await account(pds)
    proxy.fault("503", count=2)  # two failures, then it recovers
    answer = await upload(pds, auth, PNG)
    assert answer.code == 200, answer.body
    assert proxy.faulted == 2 and s3.keys() == {f"pds/blocks/{did}/{cid_for_raw(PNG).encode()}": PNG}

    proxy.fault("503")  # down for good
    await assert_upload_fails_cleanly(pds, s3, auth)
    assert proxy.faulted == 3  # every attempt
    proxy.heal()
    assert (await upload(pds, auth, PNG)).code == 200


@pytest_twisted.ensureDeferred
async def test_s3_unreachable_fails_fast_and_named(tmp_path, s3):
    running = await start_pds(make_settings(
        tmp_path / "data", **s3_settings(s3, f"http://127.0.0.1:{free_port()}")))
    try:
        store = running.service.app.blobs.store
        store.config = replace(store.config, attempts=2, backoff=0.01)
        _, auth = await account(running)
        began = time.monotonic()
        await assert_upload_fails_cleanly(running, s3, auth)
        assert time.monotonic() - began < 5
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_at_once_is_retried(faulty, s3):
    pds, proxy = faulty
    _, auth = await account(pds)
    proxy.fault("close", count=2)
    assert (await upload(pds, auth, PNG)).code == 200 and proxy.faulted == 2
    proxy.fault("close")
    await assert_upload_fails_cleanly(pds, s3, auth)


@pytest_twisted.ensureDeferred
async def test_a_silent_s3_never_hangs_an_upload(faulty, s3):
    pds, proxy = faulty
    _, auth = await account(pds)
    proxy.fault("stall")
    began = time.monotonic()
    await assert_upload_fails_cleanly(pds, s3, auth)
    # Three attempts of 0.5 s each, and little more.
    assert 1.5 <= time.monotonic() - began < 5 and proxy.faulted == 3


@pytest_twisted.ensureDeferred
async def test_a_partial_upload_stores_nothing(faulty, s3):
    pds, proxy = faulty
    did, auth = await account(pds)
    data = os.urandom(300_000)
    proxy.fault("cut-request", after=100_000)
    await assert_upload_fails_cleanly(pds, s3, auth, data)
    assert proxy.faulted == 3
    proxy.fault("cut-request", count=1, after=100_000)  # once: the retry completes it
    answer = await upload(pds, auth, data)
    assert answer.code == 200 and proxy.faulted == 1
    assert s3.keys() == {f"pds/blocks/{did}/{cid_for_raw(data).encode()}": data}


@pytest_twisted.ensureDeferred
async def test_a_failed_part_aborts_the_multipart_upload(faulty, s3):
    pds, proxy = faulty
    small_parts(pds, part_concurrency=1)  # one part at a time: the proxy's count is the part's
    did, auth = await account(pds)
    data = os.urandom(11 * MiB)
    # Create and part 1 pass; part 2 fails all three attempts; the abort passes.
    proxy.fault("503", skip=2, count=3)
    await assert_upload_fails_cleanly(pds, s3, auth, data)
    assert s3.multipart_uploads() == []
    proxy.fault("cut-request", skip=2, count=1, after=1 * MiB)  # part 2 cut once
    answer = await upload(pds, auth, data)
    assert answer.code == 200, answer.body
    assert s3.keys() == {f"pds/blocks/{did}/{cid_for_raw(data).encode()}": data}
    assert s3.multipart_uploads() == []


async def stored_blob(pds, size=300_000):
    did, auth = await account(pds)
    data = os.urandom(size)
    blob = (await upload(pds, auth, data)).json()["blob"]
    assert (await create_record(pds, auth, did, {"file": blob}, "com.example.file")).code == 200
    return did, auth, data, {"did": did, "cid": blob["ref"]["$link"]}


@pytest_twisted.ensureDeferred
async def test_get_blob_faults(faulty, s3):
    pds, proxy = faulty
    did, auth, data, params = await stored_blob(pds, 3 * MiB)

    proxy.fault("503", count=2)
    got = await pds.get("com.atproto.sync.getBlob", params)
    assert got.code == 200 and got.body == data

    proxy.fault("503")
    assert_error(await pds.get("com.atproto.sync.getBlob", params), 503, "BlobStoreUnavailable")

    # Cut or stalled part-way: the answer has begun (200, its length), so the
    # client's connection is cut: it sees a truncated body, never a silently
    # short one, and never waits for ever.
    for mode in ("cut-response", "stall-response"):
        proxy.fault(mode, after=MiB)
        began = time.monotonic()
        response = await treq.get(pds.url + "/xrpc/com.atproto.sync.getBlob", params=params)
        assert response.code == 200 and response.length == len(data)
        with pytest.raises(Exception) as failed:
            await response.content()
        assert "ResponseFailed" in type(failed.value).__name__ or "PotentialDataLoss" in repr(failed.value)
        assert time.monotonic() - began < 5

    # Cut before any of it went out: a named error.
    proxy.fault("cut-response", after=100)
    assert_error(await pds.get("com.atproto.sync.getBlob", params), 503, "BlobStoreUnavailable")

    proxy.heal()
    got = await pds.get("com.atproto.sync.getBlob", params)
    assert got.code == 200 and got.body == data


@pytest_twisted.ensureDeferred
async def test_a_slow_s3_is_not_a_failed_one(faulty, s3):
    # The timeout is for silence, not for the whole transfer: a blob that
    # trickles in for six times the timeout still arrives.
    pds, proxy = faulty
    did, auth, data, params = await stored_blob(pds, 300_000)
    proxy.fault("slow-response", after=10_000)
    began = time.monotonic()
    got = await pds.get("com.atproto.sync.getBlob", params)
    assert got.code == 200 and got.body == data
    assert time.monotonic() - began > 3 * 0.5 * 2 and proxy.faulted == 1


@pytest_twisted.ensureDeferred
async def test_deleting_while_s3_is_down_keeps_going(faulty, s3):
    pds, proxy = faulty
    blobs = pds.service.app.blobs
    did, auth = await account(pds)
    first = (await upload(pds, auth, b"first")).json()["blob"]
    second = (await upload(pds, auth, b"second")).json()["blob"]
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        proxy.fault("503")
        clock = task.Clock()
        clock.advance(reactor.seconds() + blobs.grace + 1)
        blobs.now = clock.seconds
        # Both rows go; each delete fails on its own, logged; the job goes on.
        assert await blobs.collect_garbage() == 2
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert await blob_rows(pds) == []
    logged = [formatEvent(event) for event in events]
    for blob in (first, second):
        assert any(f"Could not delete blob {blob['ref']['$link']}" in line for line in logged)
    # The objects stay in the bucket (orphans: docs/operating.md); a commit is never held up.
    assert len(s3.keys()) == 2
    proxy.heal()
    made = await create_record(pds, auth, did, {"$type": POST, "text": "hi", "createdAt": "2026-12-06T00:00:00Z"})
    assert made.code == 200


@pytest_twisted.ensureDeferred
async def test_a_deleted_accounts_objects_are_deleted(s3_pds, s3):
    did, auth = await account(s3_pds)
    other, other_auth = await account(s3_pds, "bob")
    for data in (b"first", b"second"):
        assert (await upload(s3_pds, auth, data)).code == 200
    kept = (await upload(s3_pds, other_auth, b"bob's")).json()["blob"]["ref"]["$link"]
    assert len(s3.keys()) == 3
    answer = await s3_pds.post("com.atproto.admin.deleteAccount", {"did": did}, headers=ADMIN)
    assert answer.code == 200, answer.body
    # No key names it (S3 has no folders to leave behind), the other account's stays.
    assert list(s3.keys()) == [f"pds/blocks/{other}/{kept}"] and s3.multipart_uploads() == []


@pytest_twisted.ensureDeferred
async def test_a_deletion_while_s3_is_down_still_deletes_the_account(faulty, s3):
    pds, proxy = faulty
    did, auth = await account(pds)
    blob = (await upload(pds, auth, b"first")).json()["blob"]["ref"]["$link"]
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        proxy.fault("503")
        answer = await pds.post("com.atproto.admin.deleteAccount", {"did": did}, headers=ADMIN)
    finally:
        globalLogPublisher.removeObserver(events.append)
        proxy.heal()
    # The account is gone all the same; the object is an orphan, logged (docs/operating.md).
    assert answer.code == 200, answer.body
    assert any(f"Could not delete blob {blob} of {did}" in formatEvent(event) for event in events)
    assert (await pds.get("com.atproto.sync.getRepoStatus", {"did": did})).json()["error"] == "RepoNotFound"
    assert list(s3.keys()) == [f"pds/blocks/{did}/{blob}"]


@pytest_twisted.ensureDeferred
async def test_a_completion_whose_answer_is_lost_still_succeeds(faulty, s3):
    pds, proxy = faulty
    small_parts(pds)
    did, auth = await account(pds)
    data = os.urandom(11 * MiB)
    # Create and three parts pass; S3 completes the upload but its answer is
    # cut: the retry finds no such upload, and the object there, whole.
    proxy.fault("cut-response", skip=4, count=1, after=0)
    answer = await upload(pds, auth, data)
    assert answer.code == 200, answer.body
    # moto, like S3 for a while, completes the same upload again; S3 may
    # instead answer NoSuchUpload, checked below.
    assert proxy.faulted == 1 and proxy.connections >= 6
    key = f"pds/blocks/{did}/{cid_for_raw(data).encode()}"
    assert s3.keys() == {key: data}

    # S3's other answer to a repeated completion (moto has none: it fails).
    store = pds.service.app.blobs.store
    body = b"<CompleteMultipartUpload></CompleteMultipartUpload>"
    no_such_upload = b"<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>"
    proxy.fault("503", count=1, answer=b"404 Not Found", body=no_such_upload)
    await store._complete(key, "an-upload-id", body, len(data))  # there, whole: done
    assert proxy.faulted == 1 and proxy.connections == 2  # the completion, then a HEAD
    proxy.fault("503", count=1, answer=b"404 Not Found", body=no_such_upload)
    with pytest.raises(S3Error, match="404 NoSuchUpload"):
        await store._complete(key, "an-upload-id", body, len(data) - 1)  # not this object


@pytest_twisted.ensureDeferred
async def test_a_part_failing_for_good_stops_the_others_and_aborts(s3_pds, s3):
    store = small_parts(s3_pds)
    send, call, started, sent = store._send, store._call, [], []

    async def part_two_refused(method, key, query=None, **kwargs):
        if query and query.get("partNumber") == "2":
            while len(started) < 2:  # parts 1 and 3 are on their way
                await task.deferLater(reactor, 0.01)
            raise S3Error("HTTP 403 AccessDenied", retryable=False)
        return await call(method, key, query, **kwargs)

    async def parts_never_answered(method, key, query=None, **kwargs):
        sent.append(method)
        if query and "partNumber" in query:
            started.append(query["partNumber"])
            await Deferred()  # only a cancellation ends it
        return await send(method, key, query, **kwargs)

    store._call, store._send = part_two_refused, parts_never_answered
    _, auth = await account(s3_pds)
    answer = await upload(s3_pds, auth, os.urandom(11 * MiB), timeout=30)
    assert_error(answer, 503, "BlobStoreUnavailable")
    # Parts 1 and 3 were cancelled, not retried; then the upload was aborted.
    assert sorted(started) == ["1", "3"] and sent == ["POST", "PUT", "PUT", "DELETE"]
    assert s3.multipart_uploads() == [] and s3.keys() == {} and spool_files(s3_pds) == []
    assert await blob_rows(s3_pds) == []


@pytest_twisted.ensureDeferred
async def test_twistd_with_s3_options_and_aws_variables(tmp_path, s3, monkeypatch):
    # The real command line: --blobstore and --s3-* parsed by twistd, the keys
    # from the AWS_* variables the process inherits.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    server = ServerProcess(tmp_path / "data", "--blobstore", f"s3://{BUCKET}/proc",
                           "--s3-endpoint", s3.url, "--s3-force-path-style")
    await server.start()
    try:
        status, made = await server.call("com.atproto.server.createAccount", {
            "handle": "proc.test", "email": "p@example.com", "password": "a-good-password"})
        assert status == 200, made
        auth = {"Authorization": f"Bearer {made['accessJwt']}"}
        uploaded = await treq.post(server.url + "/xrpc/com.atproto.repo.uploadBlob", PNG,
                                   headers={**auth, "Content-Type": "image/png"})
        assert uploaded.code == 200
        blob = (await uploaded.json())["blob"]
        key = f"proc/blocks/{made['did']}/{blob['ref']['$link']}"
        assert s3.keys() == {key: PNG}
        assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file() and PNG in p.read_bytes()]
    finally:
        server.kill()
    log = (tmp_path / "server.log").read_text()
    assert "Blobs are kept in {where}" in log and f"s3://{BUCKET}/proc/ at {s3.url}" in log
    assert s3.secret_access_key not in log
