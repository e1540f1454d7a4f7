"""Blobs: the store, sniffing, references, and uploadBlob/getBlob/listBlobs end to end."""

import io
import os
import tracemalloc

import pytest
import pytest_twisted
import treq
from twisted.application.internet import TimerService
from twisted.internet import defer, reactor, task
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from leafpds.blobs import sniff
from leafpds.blobs.refs import BlobRef, find_blob_refs
from leafpds.blobs.spool import UploadSpool
from leafpds.blobs.s3 import S3BlobStore, S3Config
from leafpds.blobs.store import DiskBlobStore, MissingBlobFile
from leafpds.ipld import atjson
from leafpds.ipld.cid import cid_for_raw, parse_cid
from tests.harness import make_settings, start_pds
from tests.s3_standin import BUCKET
from tests.test_accounts import assert_error, bearer, create

POST = "app.bsky.feed.post"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
UPLOAD = "com.atproto.repo.uploadBlob"


# --- sniffing and references -------------------------------------------------


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (PNG[:16], "image/png"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00", "video/quicktime"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "image/avif"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
        (b"hello world", None),
        (b"", None),
    ],
)
def test_sniff(head, expected):
    assert sniff.sniff(head) == expected


def test_mime_type_trusts_the_client_only_for_well_formed_types():
    assert sniff.mime_type(PNG, "text/html") == "image/png"  # the bytes win
    assert sniff.mime_type(b"hi", "Text/Plain; charset=utf-8") == "text/plain"
    assert sniff.mime_type(b"hi", "*/*") == "application/octet-stream"
    assert sniff.mime_type(b"hi", "text/html\r\nx-evil: 1") == "application/octet-stream"
    assert sniff.mime_type(b"hi", None) == "application/octet-stream"


def test_find_blob_refs():
    cid = cid_for_raw(b"x")
    record = {
        "$type": POST,
        "embed": {"images": [
            {"image": {"$type": "blob", "ref": cid, "mimeType": "image/png", "size": 1}},
            {"image": {"cid": cid.encode(), "mimeType": "image/jpeg"}},  # legacy
        ]},
        "not": {"$type": "blob", "ref": "a string", "mimeType": "image/png", "size": 1},
        "nor": {"cid": "garbage", "mimeType": "image/png"},
    }
    assert find_blob_refs(record) == [
        BlobRef(cid, "image/png", 1), BlobRef(cid, "image/jpeg", None)
    ]
    assert find_blob_refs(atjson.loads(b'{"a": [1, "x", null]}')) == []


# --- the stores: one suite for the disk and S3 ---------------------------------------


class DiskOracle:
    """The disk store, seen from outside: the files under <data-dir>/blobs."""

    name = "disk"

    def settings(self):
        return {}

    def store(self, tmp_path):
        return DiskBlobStore(tmp_path / "blobs", reactor)

    def held(self, data_dir):
        """Every blob the store holds: name -> bytes."""
        root = data_dir / "blobs"
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in root.rglob("*") if path.is_file() and path.parent.name != "tmp"
        }

    def name_of(self, did, cid):
        return f"{did}/{cid}"


class S3Oracle:
    """The S3 store, seen through boto3 against the moto server."""

    name = "s3"

    def __init__(self, s3):
        self.s3 = s3

    def settings(self):
        return {
            "blobstore": f"s3://{BUCKET}/pds", "s3_endpoint": self.s3.url,
            "s3_force_path_style": True, "s3_access_key_id": self.s3.access_key_id,
            "s3_secret_access_key": self.s3.secret_access_key,
        }

    def store(self, tmp_path):
        return S3BlobStore(S3Config(
            bucket=BUCKET, prefix="pds/", endpoint=self.s3.url, force_path_style=True,
            access_key_id=self.s3.access_key_id, secret_access_key=self.s3.secret_access_key,
        ), reactor)

    def held(self, data_dir):
        return self.s3.keys()

    def name_of(self, did, cid):
        return f"pds/blocks/{did}/{cid}"


@pytest.fixture(params=["disk", "s3"])
def blobstore(request):
    """The blob store the test runs against, and how to look into it independently."""
    if request.param == "disk":
        return DiskOracle()
    return S3Oracle(request.getfixturevalue("s3"))


@pytest_twisted.async_yield_fixture
async def pds(tmp_path, blobstore):
    """A running leafpds keeping its blobs in ``blobstore``."""
    running = await start_pds(make_settings(tmp_path / "data", **blobstore.settings()))
    yield running
    await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_store_put_open_delete(tmp_path, blobstore):
    store = blobstore.store(tmp_path)
    spool = UploadSpool(tmp_path)
    data = os.urandom(600_000)
    spool.write(data[:100])
    spool.write(data[100:])
    spool.flush()
    did, cid = "did:plc:abc", spool.cid
    assert cid == cid_for_raw(data) and spool.size == len(data) and spool.head == data[:4096]
    assert not await store.exists(did, cid)
    await store.put(did, cid, spool.path)
    assert blobstore.held(tmp_path) == {blobstore.name_of(did, cid.encode()): data}
    assert not spool.path.exists()  # consumed: moved into place, or uploaded and deleted
    spool.close()  # the store took the file: closing deletes nothing

    reader = await store.open(did, cid)
    chunks = []
    while chunk := await reader.read(100_000):
        assert len(chunk) <= 100_000
        chunks.append(chunk)
    await reader.close()
    assert b"".join(chunks) == data and await store.exists(did, cid)
    # A reader closed before the end lets go (of its file, of its connection).
    reader = await store.open(did, cid)
    assert await reader.read(10) == data[:10]
    await reader.close()

    await store.delete(did, cid)
    await store.delete(did, cid)  # twice is fine
    assert blobstore.held(tmp_path) == {} and not await store.exists(did, cid)
    with pytest.raises(MissingBlobFile):
        await store.open(did, cid)
    for bad in ("../etc", ".hidden", "did:plc:a/b"):
        with pytest.raises(ValueError):
            await store.put(bad, cid, spool.path)
    assert store.redirect_url(did, cid, "image/png") is None  # streamed unless configured
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_put_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    store = DiskBlobStore(tmp_path / "blobs", reactor)
    spool = UploadSpool(tmp_path)
    spool.write(b"partial")
    spool.flush()

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        await store.put("did:plc:abc", spool.cid, spool.path)
    assert not store.path("did:plc:abc", spool.cid).exists()
    spool.close()
    assert not spool.path.exists()  # an abandoned spool is deleted on close


# --- end to end -------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def alice(pds):
    created = (await create(pds)).json()
    yield created["did"], bearer(created["accessJwt"])


async def upload(pds, auth, data, content_type="application/octet-stream", **kwargs):
    headers = {**auth, "Content-Type": content_type} if content_type else dict(auth)
    return await pds.request("POST", "/xrpc/" + UPLOAD, data=data, headers=headers, **kwargs)


def image_post(blob, text="look"):
    return {
        "$type": POST, "text": text, "createdAt": "2026-11-28T12:00:00.000Z",
        "embed": {"$type": "app.bsky.embed.images", "images": [{"alt": "", "image": blob}]},
    }


async def create_record(pds, auth, did, record, collection=POST):
    return await pds.post("com.atproto.repo.createRecord",
                          {"repo": did, "collection": collection, "record": record}, headers=auth)


async def delete_record(pds, auth, did, uri):
    collection, rkey = uri.split("/")[-2:]
    answer = await pds.post("com.atproto.repo.deleteRecord",
                            {"repo": did, "collection": collection, "rkey": rkey}, headers=auth)
    assert answer.code == 200, answer.body


def blob_rows(pds):
    def rows(conn):
        return conn.execute("SELECT did, cid, mime_type, size, temp_key IS NOT NULL FROM blobs").fetchall()

    return pds.service.app.db.read(rows)


def held(pds, blobstore):
    """What the store holds, seen independently: {name: bytes}."""
    return blobstore.held(pds.service.app.settings.data_dir)


def stored(pds, blobstore, did, cid):
    """The bytes the store holds as ``did``'s blob ``cid``; None if none."""
    return held(pds, blobstore).get(blobstore.name_of(did, cid))


def spool_files(pds):
    return list(pds.service.app.blobs.spool_dir.iterdir())


@pytest_twisted.ensureDeferred
async def test_upload_reference_serve_list(pds, alice, blobstore):
    did, auth = alice
    answer = await upload(pds, auth, PNG)
    assert answer.code == 200, answer.body
    blob = answer.json()["blob"]
    cid = cid_for_raw(PNG).encode()
    assert blob == {"$type": "blob", "ref": {"$link": cid}, "mimeType": "image/png", "size": len(PNG)}
    assert await blob_rows(pds) == [(did, parse_cid(cid).cid_bytes, "image/png", len(PNG), 1)]
    assert held(pds, blobstore) == {blobstore.name_of(did, cid): PNG} and spool_files(pds) == []
    if blobstore.name == "s3":
        # Once S3 has it, the disk holds the database, not the blob.
        data_dir = pds.service.app.settings.data_dir
        assert not [path for path in data_dir.rglob("*") if path.is_file() and PNG in path.read_bytes()]
    # A temporary blob is not served (as the reference).
    assert_error(await pds.get("com.atproto.sync.getBlob", {"did": did, "cid": cid}), 400, "InvalidRequest")

    before = (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json()["rev"]
    made = await create_record(pds, auth, did, image_post(blob))
    assert made.code == 200, made.body
    assert (await blob_rows(pds))[0][4] == 0  # permanent

    got = await pds.get("com.atproto.sync.getBlob", {"did": did, "cid": cid})
    assert got.code == 200 and got.body == PNG
    assert got.header("content-type") == "image/png"
    # Twisted's client keeps Content-Length out of the headers: it is the length.
    raw = await treq.get(pds.url + "/xrpc/com.atproto.sync.getBlob", params={"did": did, "cid": cid})
    assert raw.length == len(PNG) and raw.headers.getRawHeaders("transfer-encoding") is None
    assert await raw.content() == PNG
    assert got.header("x-content-type-options") == "nosniff"
    assert got.header("content-security-policy") == "default-src 'none'; sandbox"

    listed = await pds.get("com.atproto.sync.listBlobs", {"did": did})
    assert listed.json() == {"cids": [cid], "cursor": cid}
    assert (await pds.get("com.atproto.sync.listBlobs", {"did": did, "cursor": cid})).json() == {"cids": []}
    assert (await pds.get("com.atproto.sync.listBlobs", {"did": did, "since": before})).json()["cids"] == [cid]
    after = made.json()["commit"]["rev"]
    assert (await pds.get("com.atproto.sync.listBlobs", {"did": did, "since": after})).json() == {"cids": []}

    missing = await pds.get("com.atproto.repo.listMissingBlobs", headers=auth)
    assert missing.code == 200 and missing.json() == {"blobs": []}
    assert_error(await pds.get("com.atproto.repo.listMissingBlobs"), 401, "AuthMissing")

    # Uploading the same bytes again: the same reference, still permanent.
    again = await upload(pds, auth, PNG, "image/jpeg")
    assert again.json()["blob"] == blob and (await blob_rows(pds))[0][4] == 0


@pytest_twisted.ensureDeferred
async def test_declared_and_fallback_types(pds, alice):
    _, auth = alice
    text = await upload(pds, auth, b"just words", "text/plain; charset=utf-8")
    assert text.json()["blob"]["mimeType"] == "text/plain"
    other = await upload(pds, auth, b"other words", None)
    assert other.json()["blob"]["mimeType"] == "application/octet-stream"
    empty = await upload(pds, auth, b"")
    assert empty.code == 200 and empty.json()["blob"]["size"] == 0


@pytest_twisted.ensureDeferred
async def test_missing_blobs_are_listed(pds, alice):
    did, auth = alice
    blob = (await upload(pds, auth, PNG)).json()["blob"]
    made = (await create_record(pds, auth, did, image_post(blob))).json()
    cid = blob["ref"]["$link"]

    # As after moving an account: the records came, the blob did not.
    def forget(conn):
        conn.execute("DELETE FROM blobs")

    await pds.service.app.db.write(forget)
    missing = await pds.get("com.atproto.repo.listMissingBlobs", {"limit": 10}, headers=auth)
    assert missing.json() == {"blobs": [{"cid": cid, "recordUri": made["uri"]}], "cursor": cid}
    assert_error(await pds.get("com.atproto.sync.getBlob", {"did": did, "cid": cid}), 400, "InvalidRequest")

    # Uploading it now makes it permanent straight away: a record references it.
    assert (await upload(pds, auth, PNG)).code == 200
    assert (await blob_rows(pds))[0][4] == 0
    assert (await pds.get("com.atproto.repo.listMissingBlobs", headers=auth)).json() == {"blobs": []}
    assert (await pds.get("com.atproto.sync.getBlob", {"did": did, "cid": cid})).body == PNG


@pytest_twisted.ensureDeferred
async def test_a_blob_goes_when_no_record_references_it(pds, alice, blobstore):
    did, auth = alice
    blob = (await upload(pds, auth, PNG)).json()["blob"]
    cid = blob["ref"]["$link"]
    first = (await create_record(pds, auth, did, image_post(blob, "one"))).json()
    second = (await create_record(pds, auth, did, image_post(blob, "two"))).json()

    await delete_record(pds, auth, did, first["uri"])
    assert stored(pds, blobstore, did, cid) == PNG and len(await blob_rows(pds)) == 1
    assert (await pds.get("com.atproto.sync.getBlob", {"did": did, "cid": cid})).code == 200

    await delete_record(pds, auth, did, second["uri"])
    assert await blob_rows(pds) == [] and held(pds, blobstore) == {}
    assert_error(await pds.get("com.atproto.sync.getBlob", {"did": did, "cid": cid}), 400, "InvalidRequest")
    assert (await pds.get("com.atproto.sync.listBlobs", {"did": did})).json() == {"cids": []}

    # An update that drops the reference drops the blob too.
    blob = (await upload(pds, auth, PNG)).json()["blob"]
    made = (await create_record(pds, auth, did, image_post(blob))).json()
    rkey = made["uri"].rsplit("/", 1)[1]
    put = await pds.post("com.atproto.repo.putRecord", {
        "repo": did, "collection": POST, "rkey": rkey,
        "record": {"$type": POST, "text": "no picture", "createdAt": "2026-11-28T12:00:00.000Z"},
    }, headers=auth)
    assert put.code == 200, put.body
    assert await blob_rows(pds) == [] and held(pds, blobstore) == {}


@pytest_twisted.ensureDeferred
async def test_a_record_referencing_a_blob_not_uploaded_is_refused(pds, alice):
    did, auth = alice
    head = (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json()
    ghost = {"$type": "blob", "ref": {"$link": cid_for_raw(b"never").encode()}, "mimeType": "image/png", "size": 5}
    assert_error(await create_record(pds, auth, did, image_post(ghost)), 400, "BlobNotFound")

    blob = (await upload(pds, auth, PNG)).json()["blob"]
    wrong_type = {**blob, "mimeType": "image/jpeg"}
    assert_error(await create_record(pds, auth, did, image_post(wrong_type)), 400, "InvalidMimeType")
    wrong_size = {**blob, "size": blob["size"] + 1}
    assert_error(await create_record(pds, auth, did, image_post(wrong_size)), 400, "InvalidSize")
    # One bad reference refuses the whole batch.
    writes = [{"$type": "com.atproto.repo.applyWrites#create", "collection": POST, "value": image_post(b)}
              for b in (blob, ghost)]
    batch = await pds.post("com.atproto.repo.applyWrites", {"repo": did, "writes": writes}, headers=auth)
    assert_error(batch, 400, "BlobNotFound")

    assert (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json() == head
    listed = await pds.get("com.atproto.repo.listRecords", {"repo": did, "collection": POST})
    assert listed.json()["records"] == []
    assert (await blob_rows(pds))[0][4] == 1  # still temporary


@pytest_twisted.ensureDeferred
async def test_temporary_blobs_are_collected_after_the_grace_period(pds, alice, blobstore):
    did, auth = alice
    blobs = pds.service.app.blobs
    kept = (await upload(pds, auth, PNG)).json()["blob"]
    await create_record(pds, auth, did, image_post(kept))
    temporary = (await upload(pds, auth, b"unreferenced")).json()["blob"]
    leftover = blobs.spool_dir / "crashed.upload"  # a spool file a crash left
    leftover.write_bytes(b"half an upload")

    assert await blobs.collect_garbage() == 0  # within the grace period
    assert len(await blob_rows(pds)) == 2 and leftover.exists()

    clock = task.Clock()
    clock.advance(reactor.seconds() + blobs.grace + 1)
    blobs.now = clock.seconds
    assert await blobs.collect_garbage() == 1
    rows = await blob_rows(pds)
    assert [row[1] for row in rows] == [parse_cid(kept["ref"]["$link"]).cid_bytes]
    assert held(pds, blobstore) == {blobstore.name_of(did, kept["ref"]["$link"]): PNG}
    assert not leftover.exists()
    # Too late to reference it now.
    late = await create_record(pds, auth, did, {"file": temporary}, "com.example.thing")
    assert_error(late, 400, "BlobNotFound")


@pytest_twisted.ensureDeferred
async def test_the_collector_runs_as_a_background_job(pds):
    blobs = pds.service.app.blobs
    jobs = [child for child in pds.service if isinstance(child, TimerService)]
    assert [job.call[0] for job in jobs] == [blobs._collect_logged]
    assert jobs[0].running and jobs[0].step == 60  # every minute with the default hour of grace


def capture_spools(pds):
    """The spools the site makes for uploads from now on."""
    spools = []
    site = pds.service.site
    make = site.spool
    site.spool = lambda: spools.append(make()) or spools[-1]
    return spools


@implementer(IBodyProducer)
class SlowBody:
    """A request body sent in two halves; the second waits for ``release``."""

    length = UNKNOWN_LENGTH

    def __init__(self, data):
        self.data = data
        self.release = defer.Deferred()

    def startProducing(self, consumer):
        half = len(self.data) // 2
        consumer.write(self.data[:half])
        return self.release.addCallback(lambda _: consumer.write(self.data[half:]))

    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


@pytest_twisted.ensureDeferred
async def test_an_upload_in_flight_is_never_under_its_final_name(pds, alice, blobstore):
    did, auth = alice
    data = os.urandom(300_000)
    spools = capture_spools(pds)
    body = SlowBody(data)
    answer = treq.post(pds.url + "/xrpc/" + UPLOAD, data=body, headers=auth)
    for _ in range(500):
        if spools and spools[0].size >= len(data) // 2:
            break
        await task.deferLater(reactor, 0.01)
    assert spools[0].size == len(data) // 2 and spools[0].path.exists()
    assert held(pds, blobstore) == {}
    body.release.callback(None)
    response = await answer
    assert response.code == 200 and (await response.json())["blob"]["size"] == len(data)
    assert held(pds, blobstore) == {blobstore.name_of(did, cid_for_raw(data).encode()): data}
    assert spool_files(pds) == []


@pytest_twisted.ensureDeferred
async def test_a_large_upload_streams(pds, alice):
    did, auth = alice
    data = os.urandom(3 * 1024 * 1024)
    spools = capture_spools(pds)
    tracemalloc.start()
    try:
        answer = await upload(pds, auth, FileBodyProducer(io.BytesIO(data)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.code == 200, answer.body
    # The body went straight to the spool in chunks, never whole in memory.
    assert len(spools) == 1 and spools[0].size == len(data)
    assert peak < len(data) // 2
    blob = answer.json()["blob"]
    assert blob["ref"]["$link"] == cid_for_raw(data).encode()
    made = await create_record(pds, auth, did, {"file": blob}, "com.example.file")
    assert made.code == 200, made.body
    got = await pds.get("com.atproto.sync.getBlob", {"did": did, "cid": blob["ref"]["$link"]})
    assert got.body == data and got.header("content-type") == "application/octet-stream"


@pytest_twisted.ensureDeferred
async def test_oversize_uploads_are_refused_and_store_nothing(tmp_path, blobstore):
    settings = make_settings(tmp_path / "data", max_blob_size=100_000, **blobstore.settings())
    running = await start_pds(settings)
    try:
        created = (await create(running)).json()
        auth = bearer(created["accessJwt"])
        too_big = await upload(running, auth, os.urandom(100_001))
        assert_error(too_big, 413, "PayloadTooLarge")
        # Without a length up front: cut off once it crosses the limit.
        chunked = await upload(running, auth, FileBodyProducer(io.BytesIO(os.urandom(300_000))))
        assert_error(chunked, 413, "PayloadTooLarge")
        assert await blob_rows(running) == [] and spool_files(running) == []
        assert held(running, blobstore) == {}
        assert (await running.get("_health")).code == 200
        fits = await upload(running, auth, os.urandom(100_000))
        assert fits.code == 200
        # JSON bodies keep their own, smaller limit.
        big_json = await running.post("com.atproto.repo.createRecord", {"x": "y" * 2_000_000}, headers=auth)
        assert_error(big_json, 413, "PayloadTooLarge")
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_upload_and_get_errors(pds, alice):
    did, auth = alice
    assert_error(await upload(pds, {}, PNG), 401, "AuthMissing")
    assert spool_files(pds) == [] and await blob_rows(pds) == []
    unknown = await pds.get("com.atproto.sync.getBlob", {"did": did, "cid": cid_for_raw(b"?").encode()})
    assert_error(unknown, 400, "InvalidRequest")
    assert unknown.json()["message"] == "Blob not found"
    nobody = await pds.get("com.atproto.sync.getBlob", {"did": "did:plc:nobody", "cid": cid_for_raw(b"?").encode()})
    assert_error(nobody, 400, "RepoNotFound")
    assert_error(await pds.get("com.atproto.sync.listBlobs", {"did": "did:plc:nobody"}), 400, "RepoNotFound")
    bad = await pds.get("com.atproto.sync.getBlob", {"did": did, "cid": "nope"})
    assert_error(bad, 400, "InvalidRequest")


@pytest_twisted.ensureDeferred
async def test_an_upload_whose_row_cannot_be_written_leaves_no_file(pds, alice, monkeypatch, blobstore):
    did, auth = alice
    from leafpds.blobs import index

    def broken(conn, *args):
        raise RuntimeError("database trouble")

    monkeypatch.setattr(index, "track_upload", broken)
    answer = await upload(pds, auth, PNG)
    assert_error(answer, 500, "InternalServerError")
    assert held(pds, blobstore) == {} and spool_files(pds) == []


@pytest_twisted.ensureDeferred
async def test_get_blob_serves_byte_ranges(pds, alice):
    # One range, as video players and resumed downloads ask: the disk store
    # reads only that span, the S3 store asks S3 for only that span.
    did, auth = alice
    blob = (await upload(pds, auth, PNG)).json()["blob"]
    await create_record(pds, auth, did, image_post(blob))
    params = {"did": did, "cid": blob["ref"]["$link"]}
    size = len(PNG)

    async def get(range_header, **more):
        return await pds.get("com.atproto.sync.getBlob", params, headers={"Range": range_header, **more})

    for header, start, end in [
        ("bytes=0-9", 0, 9), ("bytes=100-", 100, size - 1), ("bytes=-10", size - 10, size - 1),
        (f"bytes=2000-{size + 50}", 2000, size - 1), (f"bytes=-{size + 5}", 0, size - 1),
        (f"bytes={size - 1}-{size - 1}", size - 1, size - 1),
    ]:
        got = await get(header)
        assert got.code == 206, (header, got.body)
        assert got.body == PNG[start:end + 1], header
        assert got.header("content-range") == f"bytes {start}-{end}/{size}"
        assert got.header("content-type") == "image/png" and got.header("x-content-type-options") == "nosniff"

    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        refused = await get(header)
        assert_error(refused, 416, "RangeNotSatisfiable")
        assert refused.header("content-range") == f"bytes */{size}"

    # Several ranges, another unit, nonsense, or an If-Range: the whole blob (RFC 9110 allows it).
    for header, more in [("bytes=0-1,5-6", {}), ("items=0-1", {}), ("bytes=9-2", {}), ("bytes=x", {}),
                         ("bytes=0-9", {"If-Range": '"etag"'})]:
        got = await get(header, **more)
        assert got.code == 200 and got.body == PNG and got.header("content-range") is None, header
    whole = await pds.get("com.atproto.sync.getBlob", params)
    assert whole.code == 200 and whole.header("accept-ranges") == "bytes"


@pytest_twisted.ensureDeferred
async def test_stores_read_a_span(tmp_path, blobstore):
    store = blobstore.store(tmp_path)
    spool = UploadSpool(tmp_path)
    data = os.urandom(300_000)
    spool.write(data)
    spool.flush()
    await store.put("did:plc:abc", spool.cid, spool.path)
    spool.close()
    for offset, length in [(0, 1), (1000, 250_000), (299_999, 1), (5, None)]:
        reader = await store.open("did:plc:abc", spool.cid, offset, length)
        chunks = []
        while chunk := await reader.read(64 * 1024):
            chunks.append(chunk)
        await reader.close()
        assert b"".join(chunks) == data[offset:None if length is None else offset + length]
    await store.close()
