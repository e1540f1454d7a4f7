"""
A disk that fills up, for real: the data folder on a small tmpfs (mounted
by the test; it runs as root, as CI does), filled by a file of the
operator's, then freed.  Writes and uploads are answered 507
``InsufficientStorage`` (never a 500, never a cut connection), reads go on,
``_health`` and the metrics say so, the log says it once, and writes resume
by themselves once there is room, with nothing acknowledged lost.
"""

import errno
import subprocess

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from leafpds.db.pool import Database
from leafpds.errors import InsufficientStorage
from leafpds.repo.archive import verify_repo_car
from tests.harness import make_settings, start_pds
from tests.test_accounts import bearer, create

CREATE = "com.atproto.repo.createRecord"
UPLOAD = "/xrpc/com.atproto.repo.uploadBlob"
FILLER = "com.example.filler"


@pytest_twisted.async_yield_fixture
async def small_disk(tmp_path):
    """A 32 MiB tmpfs at tmp_path/disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(path):
    """Write ``path`` until the file system has no byte left."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096, b"\0" * 512):
            try:
                while True:
                    f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC


async def until(condition, seconds=10.0):
    for _ in range(int(seconds / 0.05)):
        if await condition():
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("condition not met in time")


class Said:
    """Log events whose format contains ``words``, as they are published."""

    def __init__(self, words):
        self.words = words
        self.events = []

    def __call__(self, event):
        if self.words in (event.get("log_format") or ""):
            self.events.append(event)


@pytest_twisted.ensureDeferred
async def test_a_full_disk_refuses_writes_by_name_and_recovers_by_itself(small_disk):
    data = small_disk / "data"
    pds = await start_pds(make_settings(data))
    filled, recovered = Said("is full"), Said("has room again")
    globalLogPublisher.addObserver(filled)
    globalLogPublisher.addObserver(recovered)
    try:
        made = (await create(pds, name="alice")).json()
        did, auth = made["did"], bearer(made["accessJwt"])
        metrics = pds.service.metrics.registry

        async def write(n):
            record = {"$type": FILLER, "n": n, "text": "x" * 200_000}
            return await pds.post(CREATE, {"repo": did, "collection": FILLER, "rkey": f"r{n}", "record": record},
                                  headers=auth)

        assert (await write(0)).code == 200
        fill(small_disk / "operator-file")

        # An upload meets the full disk as its body arrives: answered, not cut.
        upload = await pds.request("POST", UPLOAD, data=b"\x89PNG\r\n\x1a\n" + b"\1" * 300_000,
                                   headers={**auth, "Content-Type": "image/png"})
        assert (upload.code, upload.json()["error"]) == (507, "InsufficientStorage"), upload.body
        assert list((data / "blobs" / "tmp").iterdir()) == []

        # Record writes may still fit in the log's old room for a while;
        # then each is refused by name, and none is a 500.
        acknowledged = [0]
        for n in range(1, 200):
            answer = await write(n)
            if answer.code == 507:
                break
            assert answer.code == 200, answer.body
            acknowledged.append(n)
        else:
            raise AssertionError("the disk never filled up")
        assert answer.json()["error"] == "InsufficientStorage"
        assert (await write(1000)).code == 507

        # A second upload is refused before its body is read.
        again = await pds.request("POST", UPLOAD, data=b"tiny", headers={**auth, "Content-Type": "text/plain"})
        assert (again.code, again.json()["error"]) == (507, "InsufficientStorage")

        # Reads go on.
        read = await pds.get("com.atproto.repo.getRecord",
                             {"repo": did, "collection": FILLER, "rkey": f"r{acknowledged[-1]}"})
        assert read.code == 200, read.body
        # Health and metrics say it, with the free bytes.
        health = await pds.get("_health")
        assert health.code == 503
        assert health.json()["error"] == "InsufficientStorage"
        assert health.json()["freeBytes"] < 1 << 20
        assert metrics.get_sample_value("leafpds_disk_full") == 1
        assert metrics.get_sample_value("leafpds_data_dir_free_bytes") < 1 << 20
        # The log said it once, for all those refusals.
        assert len(filled.events) == 1 and recovered.events == []

        # The operator makes room: writes resume, no restart.
        (small_disk / "operator-file").unlink()

        async def healthy():
            return (await pds.get("_health")).code == 200

        await until(healthy)
        assert metrics.get_sample_value("leafpds_disk_full") == 0
        assert (await write(2000)).code == 200
        acknowledged.append(2000)
        upload = await pds.request("POST", UPLOAD, data=b"\x89PNG\r\n\x1a\n" + b"\1" * 1000,
                                   headers={**auth, "Content-Type": "image/png"})
        assert upload.code == 200, upload.body
        assert len(filled.events) == 1 and len(recovered.events) == 1
    finally:
        globalLogPublisher.removeObserver(filled)
        globalLogPublisher.removeObserver(recovered)
        await pds.service.stopService()

    # Every acknowledged record is there after a restart.
    pds = await start_pds(make_settings(data))
    try:
        listed = await pds.get("com.atproto.repo.listRecords", {"repo": did, "collection": FILLER, "limit": 100})
        assert sorted(record["value"]["n"] for record in listed.json()["records"]) == sorted(acknowledged)
        # And the repo verifies: signature, tree, every record's block.
        car = await pds.get("com.atproto.sync.getRepo", {"did": did})
        key = await pds.service.app.keys.signing_key(did)
        verified = verify_repo_car(car.body, did, key.did())
        assert sorted(rkey for collection, rkey, _, _ in verified.records if collection == FILLER) == sorted(
            f"r{n}" for n in acknowledged
        )
    finally:
        await pds.service.stopService()


@pytest_twisted.ensureDeferred
async def test_writes_batched_together_all_fail_by_name_and_the_writer_goes_on(tmp_path):
    # SQLite's page limit makes the database answer SQLITE_FULL as a full
    # disk does, here for units that share one transaction.
    db = Database(tmp_path / "db.sqlite")
    db.migrate()
    db.start()
    try:
        def cap(conn, pages):
            conn.execute("CREATE TABLE IF NOT EXISTS filler (data BLOB)")
            conn.execute(f"PRAGMA max_page_count = {pages}")

        await db.write(cap, 1_000_000)
        pages = await db.read(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
        await db.write(cap, pages + 2)

        def big(conn):
            conn.execute("INSERT INTO filler VALUES (zeroblob(100000))")

        # They wait for the writer, and go together in one transaction.
        writes = [db.write(big) for _ in range(4)]
        assert db.pending_writes >= 2
        for d in writes:
            with pytest.raises(InsufficientStorage):
                await d
        assert db.space.full
        await db.write(cap, 1_000_000)
        await db.write(big)
        assert await db.read(lambda conn: conn.execute("SELECT count(*) FROM filler").fetchone()[0]) == 1
    finally:
        db.close()
