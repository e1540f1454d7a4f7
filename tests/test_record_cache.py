"""getRecord's cache of answers and its batched database look-ups."""

import json
import sqlite3

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred, gatherResults

from leafpds.ipld import atjson, codec
from leafpds.ipld.cid import cid_for_raw
from leafpds.repo import reads
from leafpds.repo.batch import BatchedReads
from leafpds.repo.cache import ENTRY_OVERHEAD, RecordCache
from leafpds.repo.transactor import AppliedOp
from tests.harness import make_settings, start_pds
from tests.test_accounts import assert_error, bearer, create
from tests.test_records import POST, alice, post, tid, write  # noqa: F401 (alice is a fixture)

CID_A = cid_for_raw(b"a")
CID_B = cid_for_raw(b"b")
KEY = ("did:plc:alice", POST, "3kaaaaaaaaaaa")


def entry(cid, size: int) -> tuple:
    return cid, b"x" * size


# RecordCache on its own.


def test_a_fill_is_kept_and_read_back():
    cache = RecordCache(10_000)
    assert cache.get(KEY) is None
    cache.fill(KEY, cache.loading(KEY), entry(CID_A, 10))
    assert cache.get(KEY) == entry(CID_A, 10)
    assert cache.size == 10 + ENTRY_OVERHEAD


def test_a_fill_voided_by_a_commit_is_not_kept():
    cache = RecordCache(10_000)
    ticket = cache.loading(KEY)
    # A commit changes the record while the database read is under way:
    # what the read found may be the old record.
    cache.forget([KEY])
    cache.fill(KEY, ticket, entry(CID_A, 10))
    assert cache.get(KEY) is None and cache.size == 0
    # The next read's fill counts.
    cache.fill(KEY, cache.loading(KEY), entry(CID_B, 10))
    assert cache.get(KEY) == entry(CID_B, 10)


def test_only_the_latest_fill_of_a_key_counts():
    cache = RecordCache(10_000)
    first = cache.loading(KEY)
    second = cache.loading(KEY)
    cache.fill(KEY, first, entry(CID_A, 10))
    assert cache.get(KEY) is None
    cache.fill(KEY, second, entry(CID_B, 10))
    assert cache.get(KEY) == entry(CID_B, 10)


def test_tickets_do_not_outlive_their_reads():
    cache = RecordCache(10_000)
    keys = [("did:plc:alice", POST, str(i)) for i in range(100)]
    for key in keys:
        cache.fill(key, cache.loading(key), None)  # absent records, failed reads
    assert cache._loading == {} and len(cache) == 0


def test_memory_is_bounded_and_the_least_recently_read_go_first():
    per_entry = 100 + ENTRY_OVERHEAD
    cache = RecordCache(per_entry * 10)
    keys = [("did:plc:alice", POST, str(i)) for i in range(30)]
    for i, key in enumerate(keys):
        cache.fill(key, cache.loading(key), entry(CID_A, 100))
        assert cache.size <= cache.max_bytes
        cache.get(keys[0])  # read often: stays
    assert len(cache) == 10 and cache.size == per_entry * 10
    assert cache.get(keys[0]) is not None
    assert cache.get(keys[1]) is None and cache.get(keys[29]) is not None
    # Too big for the cache at all: not kept, nothing evicted for it.
    big = ("did:plc:alice", POST, "big")
    cache.fill(big, cache.loading(big), entry(CID_A, per_entry * 10))
    assert cache.get(big) is None and len(cache) == 10


def test_a_size_of_zero_keeps_nothing():
    cache = RecordCache(0)
    cache.fill(KEY, cache.loading(KEY), entry(CID_A, 1))
    assert cache.get(KEY) is None and cache.size == 0


def test_the_commit_hook_forgets_every_record_the_commit_changes():
    cache = RecordCache(10_000)
    other = ("did:plc:bob", POST, "3kaaaaaaaaaaa")
    for key in (KEY, other):
        cache.fill(key, cache.loading(key), entry(CID_A, 10))
    ops = [AppliedOp("update", POST, KEY[2], CID_B, CID_A), AppliedOp("delete", POST, "3kzzz", None, CID_A)]
    forget = cache.commit_hook(None, "did:plc:alice", "rev", ops, [])
    # Nothing changes until the commit is durable and the action runs.
    assert cache.get(KEY) is not None
    forget()
    assert cache.get(KEY) is None and cache.get(other) is not None
    assert cache.size == 10 + ENTRY_OVERHEAD


# BatchedReads, against a database whose trips the test ends by hand.


class HeldReads:
    """A stand-in Database: each read waits until the test runs it."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:")
        self.trips: list[tuple] = []

    def read(self, fn, *args) -> Deferred:
        d = Deferred()
        self.trips.append((d, fn, args))
        return d

    def run_next(self) -> None:
        d, fn, args = self.trips.pop(0)
        d.callback(fn(self.conn, *args))


def square(conn, n):
    if n < 0:
        raise ValueError(f"negative: {n}")
    return conn.execute("SELECT ? * ?", (n, n)).fetchone()[0]


@pytest_twisted.ensureDeferred
async def test_look_ups_that_arrive_during_a_trip_share_the_next():
    db = HeldReads()
    batched = BatchedReads(db, square)
    first = batched.get(2)
    assert len(db.trips) == 1  # an idle reader: no waiting
    rest = [batched.get(n) for n in (3, 4, 5)]
    assert len(db.trips) == 1
    db.run_next()
    assert await first == 4
    assert len(db.trips) == 1 and db.trips[0][2][1] == [(3,), (4,), (5,)]
    db.run_next()
    assert await gatherResults(rest) == [9, 16, 25]
    assert db.trips == []


@pytest_twisted.ensureDeferred
async def test_a_failing_look_up_fails_alone():
    db = HeldReads()
    batched = BatchedReads(db, square)
    blocker = batched.get(1)
    together = [batched.get(n) for n in (2, -1, 3)]
    db.run_next()
    db.run_next()
    await blocker
    outcomes = await DeferredList(together, consumeErrors=True)
    assert [ok for ok, _ in outcomes] == [True, False, True]
    assert outcomes[1][1].check(ValueError) and outcomes[2][1] == 9


@pytest_twisted.ensureDeferred
async def test_a_cancelled_look_up_does_not_disturb_the_others():
    db = HeldReads()
    batched = BatchedReads(db, square)
    blocker = batched.get(1)
    gone, kept = batched.get(2), batched.get(3)
    gone.cancel()
    db.run_next()
    db.run_next()
    await blocker
    assert await kept == 9
    with pytest.raises(CancelledError):
        await gone


@pytest_twisted.ensureDeferred
async def test_a_batch_is_capped():
    db = HeldReads()
    batched = BatchedReads(db, square, max_batch=2)
    waiting = [batched.get(n) for n in range(5)]
    sizes = []
    while db.trips:
        sizes.append(len(db.trips[0][2][1]))
        db.run_next()
    assert sizes == [1, 2, 2]
    assert await gatherResults(waiting) == [0, 1, 4, 9, 16]


# getRecord over HTTP.


def get(pds, did, rkey, **extra) -> Deferred:
    """getRecord, under way at once."""
    return ensureDeferred(
        pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST, "rkey": rkey, **extra})
    )


async def from_database(pds, did, rkey) -> bytes:
    """The answer as getRecord gave it before the cache: rendered from the stored block."""
    repo, (cid, block) = await pds.service.app.db.read(reads.get_record, did, POST, rkey)
    return atjson.dumps({"uri": f"at://{repo.did}/{POST}/{rkey}", "cid": cid.encode(), "value": codec.decode(block)})


@pytest_twisted.ensureDeferred
async def test_answers_from_the_cache_are_the_database_answers(pds, alice):
    did, auth = alice
    record = {**post("héllo ✨"), "embed": {"$type": "app.bsky.embed.external", "external": {
        "uri": "https://example.com", "title": "t", "description": "d"}}}
    made = await write(pds, auth, "com.atproto.repo.createRecord", {"repo": did, "collection": POST, "record": record})
    rkey = made["uri"].rsplit("/", 1)[1]
    cache = pds.service.app.record_cache
    miss = await get(pds, did, rkey)
    assert cache.get((did, POST, rkey)) is not None
    hit = await get(pds, did, rkey)
    expected = await from_database(pds, did, rkey)
    assert miss.body == hit.body == expected
    assert hit.header("content-type") == miss.header("content-type") == "application/json; charset=utf-8"
    assert json.loads(hit.body)["cid"] == made["cid"]
    with_cid = await get(pds, did, rkey, cid=made["cid"])
    assert with_cid.body == expected
    # A handle is resolved in the database every time; same answer.
    by_handle = await pds.get("com.atproto.repo.getRecord", {"repo": "alice.test", "collection": POST, "rkey": rkey})
    assert by_handle.body == expected


@pytest_twisted.ensureDeferred
async def test_errors_are_unchanged(pds, alice):
    did, auth = alice
    made = await write(pds, auth, "com.atproto.repo.createRecord", {"repo": did, "collection": POST, "record": post("x")})
    rkey = made["uri"].rsplit("/", 1)[1]
    other_cid = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
    for _ in ("miss", "hit"):
        wrong = await get(pds, did, rkey, cid=other_cid)
        assert_error(wrong, 400, "RecordNotFound")
        assert wrong.json()["message"] == f"Could not locate record: at://{did}/{POST}/{rkey}"
        assert_error(await get(pds, did, rkey, cid="not-a-cid"), 400, "InvalidRequest")
        assert (await get(pds, did, rkey)).code == 200
    assert_error(await get(pds, did, "3kzzzzzzzzzzz"), 400, "RecordNotFound")
    assert_error(await get(pds, "did:plc:nobodyhereatall0000000", rkey), 400, "RepoNotFound")
    assert_error(await get(pds, "nobody.test", rkey), 400, "RepoNotFound")
    assert_error(await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": POST}), 400, "InvalidRequest")
    assert_error(await get(pds, did, "bad/rkey"), 400, "InvalidRequest")
    assert len(pds.service.app.record_cache._loading) == 0


@pytest_twisted.ensureDeferred
async def test_a_read_after_an_acknowledged_write_sees_it(pds, alice):
    did, auth = alice
    rkey = "3kaaaaaaaaaaa"
    made = await write(pds, auth, "com.atproto.repo.createRecord",
                       {"repo": did, "collection": POST, "rkey": rkey, "record": post("v0")})
    cid = made["cid"]
    for i in range(1, 6):
        await get(pds, did, rkey)  # cached
        # Readers hammering the record while it changes.
        readers = [get(pds, did, rkey) for _ in range(8)]
        put = await write(pds, auth, "com.atproto.repo.putRecord",
                          {"repo": did, "collection": POST, "rkey": rkey, "record": post(f"v{i}"), "swapRecord": cid})
        cid = put["cid"]
        after = await get(pds, did, rkey)
        assert after.json()["cid"] == cid and after.json()["value"]["text"] == f"v{i}"
        for answer in await gatherResults(readers):
            assert answer.json()["value"]["text"] in (f"v{i - 1}", f"v{i}")
    await write(pds, auth, "com.atproto.repo.deleteRecord", {"repo": did, "collection": POST, "rkey": rkey})
    assert_error(await get(pds, did, rkey), 400, "RecordNotFound")
    await write(pds, auth, "com.atproto.repo.applyWrites", {"repo": did, "writes": [
        {"$type": "com.atproto.repo.applyWrites#create", "collection": POST, "rkey": rkey, "value": post("again")}]})
    assert (await get(pds, did, rkey)).json()["value"]["text"] == "again"


@pytest_twisted.ensureDeferred
async def test_a_read_that_began_before_a_commit_does_not_fill_the_cache(pds, alice):
    did, auth = alice
    rkey = "3kaaaaaaaaaaa"
    await write(pds, auth, "com.atproto.repo.createRecord",
                {"repo": did, "collection": POST, "rkey": rkey, "record": post("old")})
    app = pds.service.app
    old = await app.db.read(reads.get_record, did, POST, rkey)
    # The database read of this getRecord saw the old record, and its
    # answer arrives only after an update has been acknowledged.
    held = Deferred()
    real_get, app.record_reads.get = app.record_reads.get, lambda *args: held
    try:
        slow = get(pds, did, rkey)
        await write(pds, auth, "com.atproto.repo.putRecord",
                    {"repo": did, "collection": POST, "rkey": rkey, "record": post("new")})
        held.callback(old)
        assert (await slow).json()["value"]["text"] == "old"
    finally:
        app.record_reads.get = real_get
    assert app.record_cache.get((did, POST, rkey)) is None
    assert (await get(pds, did, rkey)).json()["value"]["text"] == "new"


@pytest_twisted.ensureDeferred
async def test_the_cache_stays_within_its_configured_size(tmp_path):
    limit = 3 * (ENTRY_OVERHEAD + 300)
    running = await start_pds(make_settings(tmp_path / "data", record_cache=str(limit)))
    try:
        created = (await create(running)).json()
        did, auth = created["did"], bearer(created["accessJwt"])
        await write(running, auth, "com.atproto.repo.applyWrites", {"repo": did, "writes": [
            {"$type": "com.atproto.repo.applyWrites#create", "collection": POST, "rkey": tid(i),
             "value": post(str(i))} for i in range(20)]})
        cache = running.service.app.record_cache
        for i in range(20):
            assert (await get(running, did, tid(i))).json()["value"]["text"] == str(i)
            assert cache.size <= limit
        assert 0 < len(cache) < 20
    finally:
        await running.service.stopService()
