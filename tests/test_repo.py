"""The repository engine over a real SQLite database: transactor, GC, events, export/import."""

import io

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults

from leafpds import crypto
from leafpds.db.pool import Database
from leafpds.errors import InvalidRequest, InvalidSwap, RecordNotFound, RepoNotFound
from leafpds.ipld import codec
from leafpds.ipld.car import read_car
from leafpds.ipld.cid import CID, cid_for_cbor
from leafpds.repo import archive, storage
from leafpds.repo.commit import parse_commit, verify_commit
from leafpds.repo.events import last_seq
from leafpds.repo.mst import MST, MemoryBlockSource, NodeCache, invert_ops
from leafpds.repo.transactor import UNSET, DIDLocks, RepoTransactor, Write
from leafpds.tid import TIDClock


class StaticKeys:
    def __init__(self) -> None:
        self.keys: dict[str, crypto.Keypair] = {}

    async def signing_key(self, did: str) -> crypto.Keypair:
        return self.keys[did]


def _add_account(conn, did):
    conn.execute(
        "INSERT INTO accounts (did, handle, created_at) VALUES (?, ?, 'now')",
        (did, did.rsplit(":", 1)[-1] + ".test"),
    )


class Repos:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.keys = StaticKeys()
        # Settling often, so that every test here also runs with blocks in
        # both tables and settlings between its writes.
        self.transactor = RepoTransactor(db, self.keys, settle_every=3)
        self.heard: list[tuple[int, bytes]] = []
        self.transactor.listeners.append(self.heard.extend)

    async def new(self, did: str):
        key = crypto.K256Keypair.generate()
        self.keys.keys[did] = key
        await self.db.write(_add_account, did)
        return await self.transactor.create_repo(did, key)

    async def fill(self, did: str, batches: int):
        """``batches`` commits of 200 creates each."""
        for batch in range(batches):
            await self.transactor.apply_writes(did, [
                Write("create", "app.bsky.feed.post", f"3k{batch:04d}{i:07d}", post(f"{batch}-{i}"))
                for i in range(200)
            ])

    async def state(self, did: str):
        def read(conn):
            root = storage.read_root(conn, did)
            records = {
                f"{c}/{r}": CID(cid)
                for c, r, cid in conn.execute(
                    "SELECT collection, rkey, cid FROM records WHERE did = ?", (did,)
                )
            }
            blocks = {cid: data for cid, data in storage.iter_blocks(conn, did)}
            seq = last_seq(conn)
            return root, records, blocks, seq

        return await self.db.read(read)


def _repos_on(path):
    db = Database(path)
    db.migrate()
    db.start()
    yield Repos(db)
    db.close()


@pytest.fixture
def repos(tmp_path):
    yield from _repos_on(tmp_path / "db.sqlite")


@pytest.fixture
def other_repos(tmp_path):
    """A second database, for imports."""
    yield from _repos_on(tmp_path / "other.sqlite")


def post(text: str) -> dict:
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-11-28T00:00:00.000Z"}


def frame(data: bytes):
    from cbrrr import decode_multi_dag_cbor_in_violation_of_the_spec as multi

    header, body = list(multi(data))
    return header, body


def reachable(blocks: dict, commit_cid) -> set:
    """Every block reachable from the commit: itself, MST nodes, records."""
    source = MemoryBlockSource({k: v for k, v in blocks.items()})
    commit = parse_commit(blocks[commit_cid])
    tree = MST.load(source, commit.data, cache=NodeCache())
    found = {commit_cid, *tree.node_cids()}
    found.update(cid for _, cid in tree.walk())
    return found


@pytest_twisted.ensureDeferred
async def test_genesis_commit_and_events(repos):
    did = "did:plc:genesis"
    result = await repos.new(did)
    root, records, blocks, seq = await repos.state(did)
    assert root == (result.cid, result.rev)
    assert records == {}
    commit = verify_commit(blocks[result.cid], repos.keys.keys[did].did(), did)
    assert commit.data == MST.empty(MemoryBlockSource()).root_cid()
    assert set(blocks) == {result.cid, commit.data}
    # #commit then #sync, both heard by listeners only after the commit.
    assert [s for s, _ in repos.heard] == [1, 2] and seq == 2
    header, body = frame(repos.heard[0][1])
    assert header == {"op": 1, "t": "#commit"}
    assert body["since"] is None and body["ops"] == [] and body["seq"] == 1
    assert body["rebase"] is False and body["tooBig"] is False and body["blobs"] == []
    header, body = frame(repos.heard[1][1])
    assert header == {"op": 1, "t": "#sync"}
    car_root, car_blocks = read_car(body["blocks"])
    assert car_root == result.cid and dict(car_blocks) == {result.cid: blocks[result.cid]}
    with pytest.raises(InvalidRequest):
        await repos.transactor.create_repo(did, repos.keys.keys[did])


@pytest_twisted.ensureDeferred
async def test_create_update_delete_and_gc(repos):
    did = "did:plc:alice"
    await repos.new(did)
    created = await repos.transactor.apply_writes(
        did, [Write("create", "app.bsky.feed.post", f"3k{i:011d}", post(f"post {i}")) for i in range(20)]
    )
    assert [op.action for op in created.ops] == ["create"] * 20
    root, records, blocks, _ = await repos.state(did)
    assert len(records) == 20
    assert set(blocks) == reachable(blocks, root[0])

    updated = await repos.transactor.apply_writes(
        did, [Write("update", "app.bsky.feed.post", "3k00000000003", post("edited"))]
    )
    op = updated.ops[0]
    assert op.prev == created.ops[3].cid and op.cid == cid_for_cbor(codec.encode(post("edited")))
    root, records, blocks, _ = await repos.state(did)
    assert set(blocks) == reachable(blocks, root[0])  # old record block and old path: gone
    assert created.ops[3].cid not in blocks

    await repos.transactor.apply_writes(
        did, [Write("delete", "app.bsky.feed.post", f"3k{i:011d}") for i in range(20)]
    )
    root, records, blocks, _ = await repos.state(did)
    assert records == {}
    assert len(blocks) == 2  # the commit and the empty root node: no garbage left


@pytest_twisted.ensureDeferred
async def test_same_content_under_two_keys_keeps_the_block(repos):
    did = "did:plc:twins"
    await repos.new(did)
    same = post("same")
    await repos.transactor.apply_writes(
        did, [Write("create", "app.bsky.feed.post", "a", same), Write("create", "app.bsky.feed.post", "b", same)]
    )
    await repos.transactor.apply_writes(did, [Write("delete", "app.bsky.feed.post", "a")])
    _root, records, blocks, _ = await repos.state(did)
    assert records["app.bsky.feed.post/b"] in blocks


def _where_blocks_are(conn, did):
    return {
        table: {CID(cid) for cid, in conn.execute(f"SELECT cid FROM {table} WHERE did = ?", (did,))}
        for table in ("fresh_blocks", "blocks")
    }


def _record_data(conn, did):
    return {
        f"{c}/{r}": (CID(cid), data)
        for c, r, cid, data in conn.execute(
            "SELECT collection, rkey, cid, data FROM records WHERE did = ?", (did,)
        )
    }


@pytest_twisted.ensureDeferred
async def test_records_with_the_same_bytes_each_keep_theirs(repos):
    did = "did:plc:sharers"
    await repos.new(did)
    write = repos.transactor.apply_writes
    x, y = post("x"), post("y")
    bx, by = codec.encode(x), codec.encode(y)
    cx, cy = cid_for_cbor(bx), cid_for_cbor(by)

    async def check(expected):
        assert await repos.db.read(_record_data, did) == {
            f"app.bsky.feed.post/{rkey}": block for rkey, block in expected.items()
        }
        root, _records, blocks, _ = await repos.state(did)
        assert set(blocks) == reachable(blocks, root[0])
        # Records' blocks are theirs alone: none in the blockstore.
        where = await repos.db.read(_where_blocks_are, did)
        assert not {cx, cy} & (where["blocks"] | where["fresh_blocks"])

    await write(did, [Write("create", "app.bsky.feed.post", n, x) for n in ("a", "b")])
    await check({"a": (cx, bx), "b": (cx, bx)})
    await write(did, [Write("update", "app.bsky.feed.post", "a", x)])  # same bytes again
    await check({"a": (cx, bx), "b": (cx, bx)})
    await write(did, [Write("delete", "app.bsky.feed.post", "a")])
    await check({"b": (cx, bx)})
    await write(did, [Write("update", "app.bsky.feed.post", "b", y)])
    await check({"b": (cy, by)})
    # In one commit: a record goes as another with its bytes comes.
    await write(did, [
        Write("delete", "app.bsky.feed.post", "b"), Write("create", "app.bsky.feed.post", "d", y),
    ])
    await check({"d": (cy, by)})
    await write(did, [Write("delete", "app.bsky.feed.post", "d")])
    await check({})


@pytest_twisted.ensureDeferred
async def test_an_import_puts_the_tree_in_blocks_and_records_in_their_rows(repos, other_repos):
    did = "did:plc:copied"
    await repos.new(did)
    same = post("same")
    await repos.transactor.apply_writes(
        did, [Write("create", "app.bsky.feed.post", n, same) for n in ("a", "b", "c")]
    )
    out = io.BytesIO()
    await archive.export_repo(repos.db, reactor, did, out.write)
    other = other_repos.db
    other_repos.keys.keys[did] = repos.keys.keys[did]
    await other.write(_add_account, did)
    await archive.import_repo(other, did, out.getvalue(), repos.keys.keys[did].did())
    cid = cid_for_cbor(codec.encode(same))
    assert await other.read(_record_data, did) == {
        f"app.bsky.feed.post/{n}": (cid, codec.encode(same)) for n in ("a", "b", "c")
    }
    # An import's blocks all live on: they skip the fresh table.
    where = await other.read(_where_blocks_are, did)
    root, _, blocks, _ = await other_repos.state(did)
    assert not where["fresh_blocks"] and where["blocks"] == set(blocks) - {cid}
    for n in ("a", "b", "c"):
        await other_repos.transactor.apply_writes(did, [Write("delete", "app.bsky.feed.post", n)])
    root, records, blocks, _ = await other_repos.state(did)
    assert records == {} and cid not in blocks
    assert set(blocks) == reachable(blocks, root[0])


@pytest_twisted.ensureDeferred
async def test_blocks_settle_once_they_outlive_a_settling(repos):
    did = "did:plc:settler"
    await repos.new(did)
    repos.transactor.settle_every = 10**9  # settled by hand here
    write = repos.transactor.apply_writes
    first = await write(did, [Write("create", "app.bsky.feed.post", "3k0000000000a", post("x"))])
    mark = await repos.db.write(storage.settle_blocks, 0)
    where = await repos.db.read(_where_blocks_are, did)
    # The first settling only marks: what is there now moves next time.
    assert {first.cid, first.data} <= where["fresh_blocks"]
    assert not {first.cid, first.data} & where["blocks"]
    mark = await repos.db.write(storage.settle_blocks, mark)
    where = await repos.db.read(_where_blocks_are, did)
    assert {first.cid, first.data} <= where["blocks"]
    assert not {first.cid, first.data} & where["fresh_blocks"]

    # The next commit replaces both: deleted from where they settled.
    second = await write(did, [Write("create", "app.bsky.feed.post", "3k0000000000b", post("y"))])
    where = await repos.db.read(_where_blocks_are, did)
    assert not {first.cid, first.data} & (where["blocks"] | where["fresh_blocks"])
    assert {second.cid, second.data} <= where["fresh_blocks"]
    root, _, blocks, _ = await repos.state(did)
    assert set(blocks) == reachable(blocks, root[0])


@pytest_twisted.ensureDeferred
async def test_a_block_in_both_tables_is_read_exported_and_settled_once(repos):
    # Nothing the transactor does stores a block twice, but storage must not
    # trip over one that is: reads take either, exports send it once, and
    # settling keeps the older row and its rev (an earlier export has it).
    did = "did:plc:twice"
    await repos.new(did)
    made = await repos.transactor.apply_writes(
        did, [Write("create", "app.bsky.feed.post", "a", post("a"))]
    )
    root, _, blocks, _ = await repos.state(did)
    node = made.data

    def store_again(conn):
        storage.put_blocks(conn, did, "older", [(node, blocks[node])], settled=True)

    await repos.db.write(store_again)
    where = await repos.db.read(_where_blocks_are, did)
    assert node in where["blocks"] and node in where["fresh_blocks"]
    assert await repos.db.read(lambda conn: storage.SQLBlocks(conn, did).get_block(node)) == blocks[node]
    out = io.BytesIO()
    await archive.export_repo(repos.db, reactor, did, out.write)
    _root, exported = read_car(out.getvalue())
    assert sorted(cid.encode() for cid, _ in exported) == sorted(cid.encode() for cid in blocks)

    mark = await repos.db.write(storage.settle_blocks, 0)
    await repos.db.write(storage.settle_blocks, mark)
    rows = await repos.db.read(lambda conn: conn.execute(
        "SELECT rev FROM blocks WHERE did = ? AND cid = ?", (did, node.cid_bytes)
    ).fetchall())
    assert rows == [("older",)]
    assert node not in (await repos.db.read(_where_blocks_are, did))["fresh_blocks"]
    # Replaced, it goes from both.
    await repos.db.write(store_again)
    await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "b", post("b"))])
    where = await repos.db.read(_where_blocks_are, did)
    assert node not in where["blocks"] | where["fresh_blocks"]


@pytest_twisted.ensureDeferred
async def test_the_transactor_settles_every_so_many_writes(repos, monkeypatch):
    did = "did:plc:busy"
    await repos.new(did)  # settle_every=3: a settling after every third write
    heads = []  # the repo's rev at each settling
    real_settle = storage.settle_blocks

    def settle(conn, mark):
        heads.append(storage.read_root(conn, did)[1])
        return real_settle(conn, mark)

    monkeypatch.setattr(storage, "settle_blocks", settle)

    async def create(*rkeys):
        return await repos.transactor.apply_writes(
            did, [Write("create", "app.bsky.feed.post", rkey, post(rkey)) for rkey in rkeys]
        )

    # The genesis commit counts one write: settlings follow the second
    # single, the four-write commit and the third single after it.
    first = [await create(f"3k{i:011d}") for i in range(2)]
    big = await create(*(f"3m{i:011d}" for i in range(4)))
    then = [await create(f"3n{i:011d}") for i in range(5)]
    await repos.db.write(lambda conn: None)  # after the last settling it asked for
    assert heads == [first[1].rev, big.rev, then[2].rev]
    root, _records, blocks, _ = await repos.state(did)
    assert set(blocks) == reachable(blocks, root[0])


@pytest_twisted.ensureDeferred
async def test_commit_event_carries_a_sufficient_proof(repos):
    did = "did:plc:proof"
    await repos.new(did)
    await repos.transactor.apply_writes(
        did, [Write("create", "app.bsky.feed.like", f"3k{i:011d}", post(str(i))) for i in range(300 // 2)]
    )
    before_root, *_ = await repos.state(did)
    before = parse_commit((await repos.state(did))[2][before_root[0]]).data
    repos.heard.clear()
    result = await repos.transactor.apply_writes(did, [
        Write("create", "app.bsky.feed.like", "3k99999999999", post("new")),
        Write("update", "app.bsky.feed.like", "3k00000000007", post("changed")),
        Write("delete", "app.bsky.feed.like", "3k00000000042"),
    ])
    (seq, data), = repos.heard
    header, body = frame(data)
    assert header["t"] == "#commit" and body["seq"] == seq
    assert body["repo"] == did and body["commit"] == result.cid and body["rev"] == result.rev
    assert body["prevData"] == before
    assert [(o["action"], o["path"]) for o in body["ops"]] == [
        ("create", "app.bsky.feed.like/3k99999999999"),
        ("update", "app.bsky.feed.like/3k00000000007"),
        ("delete", "app.bsky.feed.like/3k00000000042"),
    ]
    assert "prev" not in body["ops"][0] and body["ops"][2]["cid"] is None
    root, car_blocks = read_car(body["blocks"])
    car = dict(car_blocks)
    commit = verify_commit(car[root], repos.keys.keys[did].did(), did)
    # The records written are in the CAR, and with only the CAR's blocks the
    # ops can be inverted back to prevData.
    assert body["ops"][0]["cid"] in car and body["ops"][1]["cid"] in car
    ops = [(o["action"], o["path"], o["cid"], o.get("prev")) for o in body["ops"]]
    assert invert_ops(MemoryBlockSource(car), commit.data, ops) == before


@pytest_twisted.ensureDeferred
async def test_bad_writes_change_nothing(repos):
    did = "did:plc:careful"
    first = await repos.new(did)
    await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "one", post("1"))])
    state = await repos.state(did)
    cases = [
        ([Write("create", "app.bsky.feed.post", "one", post("again"))], None, InvalidRequest),
        ([Write("update", "app.bsky.feed.post", "missing", post("x"))], None, RecordNotFound),
        ([Write("delete", "app.bsky.feed.post", "missing")], None, RecordNotFound),
        ([Write("create", "app.bsky.feed.post", "two", post("2"))], first.cid, InvalidSwap),
        ([Write("put", "app.bsky.feed.post", "one", post("x"), swap_record=None)], None, InvalidSwap),
        ([Write("create", "app.bsky.feed.post", "two", post("2")),
          Write("delete", "app.bsky.feed.post", "missing")], None, RecordNotFound),
        ([Write("create", "app.bsky.feed.post", "x", post("1")),
          Write("delete", "app.bsky.feed.post", "x")], None, InvalidRequest),
        ([Write("create", "bad key", "x", post("1"))], None, InvalidRequest),
        ([Write("create", "app.bsky.feed.post", "..", post("1"))], None, InvalidRequest),
        ([], None, InvalidRequest),
    ]
    for writes, swap, error in cases:
        with pytest.raises(error):
            await repos.transactor.apply_writes(did, writes, swap_commit=swap)
        assert await repos.state(did) == state, writes
    with pytest.raises(RepoNotFound):
        repos.keys.keys["did:plc:nobody"] = repos.keys.keys[did]
        await repos.transactor.apply_writes(
            "did:plc:nobody", [Write("create", "app.bsky.feed.post", "a", post("a"))]
        )


@pytest_twisted.ensureDeferred
async def test_swaps_that_match_succeed(repos):
    did = "did:plc:swapper"
    await repos.new(did)
    made = await repos.transactor.apply_writes(
        did, [Write("put", "app.bsky.actor.profile", "self", {"displayName": "A"}, swap_record=None)]
    )
    again = await repos.transactor.apply_writes(
        did,
        [Write("put", "app.bsky.actor.profile", "self", {"displayName": "B"}, swap_record=made.ops[0].cid)],
        swap_commit=made.cid,
    )
    assert again.ops[0].action == "update" and again.ops[0].prev == made.ops[0].cid
    assert UNSET is not None


@pytest_twisted.ensureDeferred
async def test_100_concurrent_writers_on_one_did_make_a_linear_history(repos):
    did = "did:plc:busy"
    await repos.new(did)
    repos.heard.clear()
    writes = [
        Deferred.fromCoroutine(
            repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", f"r{i:03d}", post(str(i)))])
        )
        for i in range(100)
    ]
    results = await gatherResults(writes)
    assert len({r.rev for r in results}) == 100
    frames = [frame(data)[1] for _, data in repos.heard]
    assert len(frames) == 100
    for earlier, later in zip(frames, frames[1:]):
        assert later["since"] == earlier["rev"] and later["rev"] > earlier["rev"]
        assert later["seq"] == earlier["seq"] + 1
    _root, records, _blocks, _ = await repos.state(did)
    assert set(records) == {f"app.bsky.feed.post/r{i:03d}" for i in range(100)}
    assert len(repos.transactor.locks) == 0  # idle locks are dropped


@pytest_twisted.ensureDeferred
async def test_did_locks_take_turns_skip_cancelled_waiters_and_outlive_failures():
    from twisted.internet.defer import CancelledError

    locks = DIDLocks()
    log: list[str] = []
    gates = {name: Deferred() for name in ["a1", "a2", "a3", "b1"]}

    async def hold(name: str, fail: bool = False) -> str:
        log.append(f"start {name}")
        await gates[name]
        log.append(f"end {name}")
        if fail:
            raise ValueError(name)
        return name

    a1 = Deferred.fromCoroutine(locks.run("did:a", lambda: hold("a1", fail=True)))
    a2 = Deferred.fromCoroutine(locks.run("did:a", lambda: hold("a2")))
    a3 = Deferred.fromCoroutine(locks.run("did:a", lambda: hold("a3")))
    b1 = Deferred.fromCoroutine(locks.run("did:b", lambda: hold("b1")))
    # One holder per DID; another DID is not held up.
    assert log == ["start a1", "start b1"] and len(locks) == 2
    a2.cancel()  # gave up waiting: it never runs
    gates["a1"].callback(None)
    assert log[-2:] == ["end a1", "start a3"]  # a1 failed, yet the turn passed on
    gates["b1"].callback(None)
    gates["a3"].callback(None)
    assert await b1 == "b1" and await a3 == "a3"
    with pytest.raises(ValueError):
        await a1
    with pytest.raises(CancelledError):
        await a2
    assert "start a2" not in log
    assert len(locks) == 0  # idle DIDs are forgotten


@pytest_twisted.ensureDeferred
async def test_different_dids_write_concurrently(repos):
    dids = [f"did:plc:user{i}" for i in range(8)]
    for did in dids:
        await repos.new(did)
    calls = [
        Deferred.fromCoroutine(
            repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", f"p{n}", post(did))])
        )
        for n in range(10)
        for did in dids
    ]
    outcomes = await DeferredList(calls, consumeErrors=True)
    assert all(ok for ok, _ in outcomes)
    for did in dids:
        _root, records, blocks, _ = await repos.state(did)
        assert len(records) == 10
        assert set(blocks) == reachable(blocks, _root[0])


@pytest_twisted.ensureDeferred
async def test_rev_grows_across_restart_even_with_a_slow_clock(repos):
    did = "did:plc:clock"
    await repos.new(did)
    ahead = await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "a", post("a"))])
    # A new transactor (a restart) whose clock is a year behind.
    restarted = RepoTransactor(repos.db, repos.keys)
    restarted.revs = TIDClock(now=lambda: 1_700_000_000.0 - 365 * 86400)
    later = await restarted.apply_writes(did, [Write("create", "app.bsky.feed.post", "b", post("b"))])
    assert later.rev > ahead.rev


@pytest_twisted.ensureDeferred
async def test_rev_grows_when_our_clock_falls_behind_the_head_we_remember(repos):
    did = "did:plc:clockback"
    await repos.new(did)
    ahead = await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "a", post("a"))])
    # The same transactor (its head in memory, so the commit is built
    # inline), its clock now a year behind that head's rev.
    repos.transactor.revs = TIDClock(now=lambda: 1_700_000_000.0 - 365 * 86400)
    later = await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "b", post("b"))])
    assert later.rev > ahead.rev
    root, _, _, _ = await repos.state(did)
    assert root == (later.cid, later.rev)


@pytest_twisted.ensureDeferred
async def test_export_import_round_trip_5000_records(repos, other_repos):
    did = "did:plc:exporter"
    await repos.new(did)
    await repos.fill(did, 25)
    root, records, blocks, _ = await repos.state(did)
    out = io.BytesIO()
    chunks = []

    def write(chunk):
        chunks.append(len(chunk))
        out.write(chunk)

    await archive.export_repo(repos.db, reactor, did, write)
    assert len(chunks) > 1  # streamed in pieces
    car_root, car_blocks = read_car(out.getvalue())
    assert car_root == root[0]
    assert dict(car_blocks) == blocks

    # Import into a fresh account on a fresh database.
    other = other_repos.db
    await other.write(_add_account, did)
    imported = await archive.import_repo(other, did, out.getvalue(), repos.keys.keys[did].did())
    assert imported.commit_cid == root[0]
    new_root, new_records, new_blocks, _ = await other_repos.state(did)
    assert new_root == root and new_records == records and new_blocks == blocks


@pytest_twisted.ensureDeferred
async def test_an_export_is_a_snapshot_while_the_repo_is_written(repos):
    did = "did:plc:moving"
    await repos.new(did)
    await repos.fill(did, 10)
    root, _, blocks, _ = await repos.state(did)
    out = io.BytesIO()
    during = []

    def write(chunk):
        out.write(chunk)
        # Between two chunks (the export waits for this): records go and come.
        during.append(repos.transactor.apply_writes(did, [
            Write("delete", "app.bsky.feed.post", f"3k{len(during):04d}{0:07d}"),
            Write("create", "app.bsky.feed.post", f"3z{len(during):011d}", post("new")),
        ]))
        return during[-1]

    await archive.export_repo(repos.db, reactor, did, write)
    assert len(during) > 1
    car_root, car_blocks = read_car(out.getvalue())
    assert car_root == root[0] and dict(car_blocks) == blocks
    now, records, _, _ = await repos.state(did)
    assert now != root and "app.bsky.feed.post/3z00000000000" in records


@pytest_twisted.ensureDeferred
async def test_export_since_holds_only_newer_blocks(repos):
    did = "did:plc:since"
    await repos.new(did)
    first = await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "a", post("a"))])
    second = await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "b", post("b"))])
    out = io.BytesIO()
    await archive.export_repo(repos.db, reactor, did, out.write, since=first.rev)
    root, blocks = read_car(out.getvalue())
    cids = {cid for cid, _ in blocks}
    assert root == second.cid and second.cid in cids and second.ops[0].cid in cids
    assert first.ops[0].cid not in cids


@pytest_twisted.ensureDeferred
async def test_import_refuses_bad_input_and_changes_nothing(repos):
    did = "did:plc:victim"
    await repos.new(did)
    await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "a", post("a"))])
    out = io.BytesIO()
    await archive.export_repo(repos.db, reactor, did, out.write)
    good = out.getvalue()
    state = await repos.state(did)
    key = repos.keys.keys[did].did()
    root, sections = read_car(good)
    from leafpds.ipld.car import encode_car

    missing_record = encode_car(root, [(c, d) for c, d in sections if not codec.decode(d).get("text")])
    cases = {
        "garbage": b"\x00garbage",
        "truncated": good[:-10],
        "wrong key": None,
        "missing record": missing_record,
    }
    for name, data in cases.items():
        with pytest.raises(InvalidRequest):
            if name == "wrong key":
                await archive.import_repo(repos.db, did, good, crypto.K256Keypair.generate().did())
            else:
                await archive.import_repo(repos.db, did, data, key)
        assert await repos.state(did) == state, name
    with pytest.raises(InvalidRequest):
        await archive.import_repo(repos.db, "did:plc:someoneelse", good, key)


@pytest_twisted.ensureDeferred
async def test_a_commit_built_on_an_old_head_is_rebuilt_on_the_stored_one(repos):
    # The transactor remembers each repo's head and builds small commits from
    # memory; an import behind its back makes that head stale.  The unit must
    # notice and build on what is stored.
    did = "did:plc:rebased"
    await repos.new(did)
    await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "a", post("a"))])
    out = io.BytesIO()
    await archive.export_repo(repos.db, reactor, did, out.write)
    exported_root, _, exported_blocks, _ = await repos.state(did)
    await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "b", post("b"))])
    await archive.import_repo(repos.db, did, out.getvalue(), repos.keys.keys[did].did())

    result = await repos.transactor.apply_writes(
        did, [Write("create", "app.bsky.feed.post", "c", post("c"))]
    )
    _, body = frame(repos.heard[-1][1])
    assert body["since"] == exported_root[1]
    assert body["prevData"] == parse_commit(exported_blocks[exported_root[0]]).data
    root, records, blocks, _ = await repos.state(did)
    assert root == (result.cid, result.rev)
    assert set(records) == {"app.bsky.feed.post/a", "app.bsky.feed.post/c"}
    assert set(blocks) == reachable(blocks, root[0])
    # "b" is gone with the import: creating it again is allowed, and the
    # head the transactor now remembers is the right one.
    again = await repos.transactor.apply_writes(
        did, [Write("create", "app.bsky.feed.post", "b", post("b"))]
    )
    assert again.ops[0].action == "create"
    _, body = frame(repos.heard[-1][1])
    assert body["since"] == result.rev


@pytest_twisted.ensureDeferred
async def test_commits_are_right_whether_built_in_memory_or_in_the_unit(repos, monkeypatch):
    from leafpds.repo import mst, transactor

    writes = [
        [Write("create", "app.bsky.feed.post", f"p{i}", post(str(i))) for i in range(3)],
        [Write("update", "app.bsky.feed.post", "p1", post("changed"))],
        [Write("put", "app.bsky.feed.post", "p9", post("new"))],
        [Write("delete", "app.bsky.feed.post", "p0")],
    ]
    built_in_unit = []
    real_build = transactor._build

    def spy(source, *args):
        built = real_build(source, *args)  # attempts that raise are not counted
        built_in_unit.append(not isinstance(source, transactor._NoBlocks))
        return built

    monkeypatch.setattr(transactor, "_build", spy)
    results = {}
    for mode in ("memory", "unit"):
        did = f"did:plc:{mode}"
        await repos.new(did)
        if mode == "unit":
            # Nothing in memory: every commit must be built in the unit.
            monkeypatch.setattr(mst, "shared_cache", mst.NodeCache(max_nodes=0))
        built_in_unit.clear()
        for batch in writes:
            await repos.transactor.apply_writes(did, batch)
        root, records, blocks, _ = await repos.state(did)
        assert set(blocks) == reachable(blocks, root[0])
        data = parse_commit(blocks[root[0]]).data
        results[mode] = (records, data)
        if mode == "memory":
            # The first commit of a new repo needs its (uncached) empty root
            # from the database; the rest are built in memory.
            assert built_in_unit[1:] == [False] * (len(writes) - 1)
        else:
            assert all(built_in_unit)
    assert results["memory"] == results["unit"]


@pytest_twisted.ensureDeferred
async def test_a_commit_forgets_the_tree_nodes_it_replaced(repos, monkeypatch):
    from leafpds.repo import mst

    monkeypatch.setattr(mst, "shared_cache", mst.NodeCache())

    async def tree_nodes(did):
        root, _, blocks, _ = await repos.state(did)
        data = parse_commit(blocks[root[0]]).data
        return set(MST.load(MemoryBlockSource(blocks), data, NodeCache()).node_cids())

    did = "did:plc:forgetful"
    await repos.new(did)
    for i in range(40):
        await repos.transactor.apply_writes(
            did, [Write("create", "app.bsky.feed.post", f"p{i:02}", post(str(i)))]
        )
    before = await tree_nodes(did)
    assert all(mst.shared_cache.get(cid) is not None for cid in before)

    result = await repos.transactor.apply_writes(
        did, [Write("update", "app.bsky.feed.post", "p05", post("new"))]
    )
    after = await tree_nodes(did)
    gone = before - after
    assert gone and set(result.removed) >= gone
    assert all(mst.shared_cache.get(cid) is None for cid in gone)
    # The tree as it is now stays in memory: the next commit is built there.
    assert all(mst.shared_cache.get(cid) is not None for cid in after)


@pytest_twisted.ensureDeferred
async def test_errors_found_in_memory_are_confirmed_by_the_unit(repos):
    did = "did:plc:confirmed"
    await repos.new(did)
    made = await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "x", post("x"))])
    state = await repos.state(did)
    with pytest.raises(InvalidRequest, match="already exists"):
        await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "x", post("y"))])
    with pytest.raises(InvalidSwap):
        await repos.transactor.apply_writes(
            did, [Write("create", "app.bsky.feed.post", "y", post("y"))], swap_commit=made.ops[0].cid
        )
    assert await repos.state(did) == state
    # And the repo carries on from where it was.
    after = await repos.transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", "y", post("y"))])
    _, body = frame(repos.heard[-1][1])
    assert body["since"] == made.rev and after.rev > made.rev


@pytest_twisted.ensureDeferred
async def test_a_record_over_the_size_limit_is_refused(repos):
    did = "did:plc:bigrecord"
    await repos.new(did)
    state = await repos.state(did)
    huge = {"$type": "com.example.blob", "data": b"\x00" * (1024 * 1024 + 1)}
    with pytest.raises(InvalidRequest, match="too large"):
        await repos.transactor.apply_writes(did, [Write("create", "com.example.blob", "big", huge)])
    assert await repos.state(did) == state
