"""
The subscribeRepos firehose end to end: a running leafpds, real WebSocket
clients (the atproto SDK's, and ``websockets`` in threads), events produced
by creating accounts over HTTP and writing records through the transactor.
"""

import json
import socket

import pytest
import pytest_twisted
import treq
from atproto import CAR, FirehoseSubscribeReposClient, parse_subscribe_repos_message
from cbrrr import decode_multi_dag_cbor_in_violation_of_the_spec as decode_multi
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from leafpds.ipld.car import read_car
from leafpds.ipld.cid import CID, cid_for_cbor
from leafpds.repo import events
from leafpds.repo.commit import verify_commit
from leafpds.repo.transactor import Write
from leafpds.sequencer.fanout import Sequencer
from leafpds.sequencer.outbox import CLOSE_POLICY
from leafpds.timestamps import iso_from_epoch
from tests.harness import make_settings, start_pds

POST = "app.bsky.feed.post"
LONG_AGO = iso_from_epoch(0)


# Helpers.


async def create_account(pds, name):
    body = {"handle": f"{name}.test", "email": f"{name}@example.com", "password": "hunter2 hunter2"}
    answer = await pds.post("com.atproto.server.createAccount", body)
    assert answer.code == 200, answer.body
    return answer.json()["did"]


def post(text):
    return {"$type": POST, "text": text, "createdAt": "2024-01-01T00:00:00.000Z"}


async def write_posts(pds, did, count, prefix="p", size=0):
    transactor = pds.service.app.transactor
    for i in range(count):
        text = f"{prefix}{i} " + "x" * size
        await transactor.apply_writes(did, [Write("create", POST, f"{prefix}{i}", post(text))])


async def stored_frames(pds, after=0):
    def rows(conn):
        return conn.execute("SELECT seq, event FROM repo_seq WHERE seq > ? ORDER BY seq", (after,)).fetchall()

    return [(seq, bytes(event)) for seq, event in await pds.service.app.db.read(rows)]


async def last_seq(pds):
    return (await stored_frames(pds))[-1][0]


def decode(frame):
    """A frame's header and body (exactly two DAG-CBOR objects)."""
    header, body = decode_multi(frame)
    return header, body


def ws_url(pds, query=""):
    return pds.url.replace("http://", "ws://") + "/xrpc/com.atproto.sync.subscribeRepos" + query


def dial(pds, query="", rcvbuf=None, max_queue=16):
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", pds.service.port.getHost().port))
    return connect(
        ws_url(pds, query), sock=sock, proxy=None, max_size=None, max_queue=max_queue, compression=None
    )


class Reader:
    """
    A subscriber reading in a thread until it has seq ``target`` (set later
    if need be) or the server closes; ``frames`` are raw bytes.
    """

    def __init__(self, pds, query=""):
        self.frames = []
        self.target = None
        self.close_code = None
        self.done = deferToThread(self._run, pds, query)

    def _run(self, pds, query):
        with dial(pds, query) as ws:
            try:
                while self.target is None or not self.frames or self.last() < self.target:
                    try:
                        self.frames.append(ws.recv(timeout=0.05))
                    except TimeoutError:
                        continue
            except ConnectionClosed as e:
                self.close_code = e.rcvd.code if e.rcvd else None

    def last(self):
        header, body = decode(self.frames[-1])
        return body.get("seq", 0)

    def seqs(self):
        return [decode(f)[1].get("seq") for f in self.frames]


def read_to_close(ws):
    """Everything the server sends until it closes: (frames, close code)."""
    frames = []
    with ws:
        try:
            while True:
                frames.append(ws.recv(timeout=10))
        except ConnectionClosed as e:
            return frames, e.rcvd.code if e.rcvd else None


async def until(predicate, timeout=15.0):
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "timed out waiting"
        await deferLater(reactor, 0.01)


def subscribers(pds):
    return len(pds.service.app.sequencer.outboxes)


async def age_events(pds, up_to_seq):
    def update(conn):
        conn.execute("UPDATE repo_seq SET sequenced_at = ? WHERE seq <= ?", (LONG_AGO, up_to_seq))

    await pds.service.app.db.write(update)


# The SDK's client: commits, their CARs and signatures.


@pytest_twisted.ensureDeferred
async def test_sdk_client_receives_signed_commits_in_order(pds):
    did = await create_account(pds, "alice")
    messages = []
    base_uri = pds.url.replace("http://", "ws://") + "/xrpc"
    client = FirehoseSubscribeReposClient(params={"cursor": 0}, base_uri=base_uri)

    def received(frame):
        messages.append((frame.type, parse_subscribe_repos_message(frame)))

    running = deferToThread(client.start, received)
    try:
        transactor = pds.service.app.transactor
        await write_posts(pds, did, 2)
        await transactor.apply_writes(did, [
            Write("update", POST, "p0", post("edited")),
            Write("delete", POST, "p1", None),
            Write("create", POST, "p2", post("third")),
        ])
        final = await last_seq(pds)
        await until(lambda: messages and messages[-1][1].seq >= final)
    finally:
        client.stop()
        await running

    # cursor=0: everything, in order, from the first event.
    assert [m.seq for _, m in messages] == list(range(1, final + 1))
    assert [t for t, _ in messages][:4] == ["#identity", "#account", "#commit", "#sync"]

    response = await treq.get(f"{pds.service.app.plc.base_url}/{did}")
    (method,) = json.loads(await response.content())["verificationMethod"]
    did_key = "did:key:" + method["publicKeyMultibase"]

    commits = [m for t, m in messages if t == "#commit"]
    assert [[(op.action, op.path) for op in c.ops] for c in commits] == [
        [],
        [("create", f"{POST}/p0")],
        [("create", f"{POST}/p1")],
        [("update", f"{POST}/p0"), ("delete", f"{POST}/p1"), ("create", f"{POST}/p2")],
    ]
    texts = {"p0": "p0 ", "p1": "p1 ", "p2": "third"}
    previous_rev = None
    for commit in commits:
        assert commit.repo == did and commit.since == previous_rev
        previous_rev = commit.rev
        car = CAR.from_bytes(commit.blocks)
        assert car.root == commit.commit
        root, blocks = read_car(commit.blocks)
        signed = verify_commit(dict(blocks)[root], did_key, did)
        assert signed.rev == commit.rev
        for op in commit.ops:
            rkey = op.path.rsplit("/", 1)[1]
            if op.action == "delete":
                assert op.cid is None and op.prev is not None
                continue
            record = car.blocks[op.cid]
            assert record["text"] == ("edited" if op.action == "update" else texts[rkey])
            assert (op.prev is not None) == (op.action == "update")


# Replay, cutover and cursors.


@pytest_twisted.ensureDeferred
async def test_cursor_replay_then_live_without_gap_or_duplicate(pds):
    app = pds.service.app
    # Small pages: the replay takes many reads while the writes go on.
    app.sequencer.page_frames = 7
    announced = []
    app.transactor.listeners.append(lambda appended: announced.append(appended[-1][0]))
    alice = await create_account(pds, "alice")
    bob = await create_account(pds, "bob")
    await write_posts(pds, alice, 60, "a")
    cursor = (await last_seq(pds)) // 2

    # Two writers keep going until the subscriber is live, and a while after.
    more_after_live = None

    async def keep_writing(did, prefix):
        nonlocal more_after_live
        i = 0
        while more_after_live is None or more_after_live > 0:
            await write_posts(pds, did, 1, f"{prefix}{i}-")
            i += 1
            if more_after_live is not None:
                more_after_live -= 1

    writers = gatherResults([
        ensureDeferred(keep_writing(alice, "b")),
        ensureDeferred(keep_writing(bob, "c")),
    ])
    await deferLater(reactor, 0.02)
    reader = Reader(pds, f"?cursor={cursor}")
    await until(lambda: subscribers(pds) == 1)
    (outbox,) = app.sequencer.outboxes
    subscribed_at = announced[-1]
    await until(lambda: outbox.live)
    live_at = announced[-1]
    more_after_live = 60
    await writers
    reader.target = await last_seq(pds)
    await reader.done

    assert live_at > subscribed_at  # events were written during the replay
    stored = await stored_frames(pds, cursor)
    assert reader.seqs() == list(range(cursor + 1, reader.target + 1))
    # Each frame is exactly the stored bytes.
    assert reader.frames == [frame for _, frame in stored]


@pytest_twisted.ensureDeferred
async def test_no_cursor_is_live_only(pds):
    alice = await create_account(pds, "alice")
    before = await last_seq(pds)
    reader = Reader(pds)
    await until(lambda: subscribers(pds) == 1)
    await write_posts(pds, alice, 3)
    reader.target = await last_seq(pds)
    await reader.done
    assert reader.seqs() == list(range(before + 1, reader.target + 1))


class FakeConnection:
    """A consumer whose outbox the test pauses and resumes by hand."""

    def __init__(self):
        self.frames = []
        self.closed_with = None

    def send(self, frame):
        self.frames.append(frame)

    def close(self, code, reason):
        self.closed_with = code

    def drop(self):
        self.closed_with = "dropped"


@pytest_twisted.ensureDeferred
async def test_live_events_dropped_during_a_slow_replay_are_read_from_the_log(pds):
    app = pds.service.app
    # A buffer of two or three commits: the events announced while the
    # replay is paused overflow it.
    sequencer = Sequencer(app.db, reactor, 3600, max_buffer=3000, page_frames=3)
    app.transactor.listeners.append(sequencer.committed)
    alice = await create_account(pds, "alice")
    await write_posts(pds, alice, 10, "a")
    before = await last_seq(pds)
    connection = FakeConnection()
    outbox = sequencer.subscribe(connection, 0)
    outbox.pauseProducing()
    await write_posts(pds, alice, 10, "b")
    assert not outbox.live
    assert sum(len(frame) for _, frame in await stored_frames(pds, before)) > 3000
    outbox.resumeProducing()
    await until(lambda: outbox.live)
    await write_posts(pds, alice, 3, "c")
    stored = await stored_frames(pds)
    assert connection.frames == [frame for _, frame in stored]
    assert connection.closed_with is None

    # Live, the same buffer overflowing is a consumer too slow.
    outbox.pauseProducing()
    await write_posts(pds, alice, 10, "d")
    assert outbox.closed and outbox not in sequencer.outboxes
    header, body = decode(connection.frames[-1])
    assert header == {"op": -1} and body["error"] == "ConsumerTooSlow"
    assert connection.closed_with == CLOSE_POLICY
    assert connection.frames[:-1] == [frame for _, frame in stored]


class WritesDuringReads:
    """
    The database, except that each read answers only after a post has been
    written and announced: an event committed after the read's snapshot,
    that the subscriber hears of while it replays.
    """

    def __init__(self, pds, did, writes):
        self.pds = pds
        self.did = did
        self.writes = writes

    def read(self, fn, *args):
        d = self.pds.service.app.db.read(fn, *args)
        return d.addCallback(lambda result: ensureDeferred(self._write_then(result)))

    async def _write_then(self, result):
        if self.writes:
            self.writes -= 1
            await write_posts(self.pds, self.did, 1, f"during{self.writes}-")
        return result


@pytest.mark.parametrize("max_buffer", [1 << 20, 1])
@pytest_twisted.ensureDeferred
async def test_events_committed_during_the_last_replay_read_are_not_lost(pds, max_buffer):
    # With a large buffer, the last events come from those held during the
    # replay; with a tiny one, those are dropped and read from the log.
    app = pds.service.app
    alice = await create_account(pds, "alice")
    await write_posts(pds, alice, 8, "a")
    db = WritesDuringReads(pds, alice, writes=8)
    sequencer = Sequencer(db, reactor, 3600, max_buffer=max_buffer, page_frames=3)
    app.transactor.listeners.append(sequencer.committed)
    connection = FakeConnection()
    outbox = sequencer.subscribe(connection, 2)
    await until(lambda: outbox.live)
    assert connection.frames == [frame for _, frame in await stored_frames(pds, 2)]


@pytest_twisted.ensureDeferred
async def test_future_cursor(pds):
    await create_account(pds, "alice")
    future = await last_seq(pds) + 1
    ws = await deferToThread(dial, pds, f"?cursor={future}")
    frames, code = await deferToThread(read_to_close, ws)
    assert [decode(f) for f in frames] == [
        ({"op": -1}, {"error": "FutureCursor", "message": "Cursor in the future."})
    ]
    assert code == 1008
    assert subscribers(pds) == 0


@pytest_twisted.ensureDeferred
async def test_invalid_cursor_and_requests_that_are_not_upgrades(pds):
    ws = await deferToThread(dial, pds, "?cursor=soon")
    frames, code = await deferToThread(read_to_close, ws)
    ((header, body),) = [decode(f) for f in frames]
    assert header == {"op": -1} and body["error"] == "InvalidRequest" and code == 1008

    plain = await pds.get("com.atproto.sync.subscribeRepos")
    assert plain.code == 426 and plain.json()["error"] == "InvalidRequest"
    posted = await pds.post("com.atproto.sync.subscribeRepos")
    assert posted.code == 405 and posted.json()["error"] == "InvalidRequest"


@pytest_twisted.ensureDeferred
async def test_outdated_cursor_gets_info_then_the_oldest_kept(pds):
    alice = await create_account(pds, "alice")
    await write_posts(pds, alice, 5)
    old = await last_seq(pds)
    await write_posts(pds, alice, 3, "new")
    final = await last_seq(pds)
    await age_events(pds, old)

    for cursor in (0, 2):
        reader = Reader(pds, f"?cursor={cursor}")
        reader.target = final
        await reader.done
        header, body = decode(reader.frames[0])
        assert header == {"op": 1, "t": "#info"} and body["name"] == "OutdatedCursor" and body["message"]
        assert reader.seqs()[1:] == list(range(old + 1, final + 1))
    # A cursor inside the window is not outdated.
    reader = Reader(pds, f"?cursor={old}")
    reader.target = final
    await reader.done
    assert reader.seqs() == list(range(old + 1, final + 1))


@pytest_twisted.ensureDeferred
async def test_pruning_deletes_only_old_events(pds):
    alice = await create_account(pds, "alice")
    await write_posts(pds, alice, 5)
    old = await last_seq(pds)
    await write_posts(pds, alice, 2, "new")
    final = await last_seq(pds)
    sequencer = pds.service.app.sequencer

    await age_events(pds, old)
    assert await sequencer.prune() == old
    assert [seq for seq, _ in await stored_frames(pds)] == list(range(old + 1, final + 1))
    # A cursor before the pruned events is outdated, even though what
    # follows is recent.
    reader = Reader(pds, "?cursor=3")
    reader.target = final
    await reader.done
    assert decode(reader.frames[0])[1]["name"] == "OutdatedCursor"
    assert reader.seqs()[1:] == list(range(old + 1, final + 1))

    # Even when every event is old, the newest stays, and numbering goes on.
    await age_events(pds, final)
    assert await sequencer.prune() == final - old - 1
    assert [seq for seq, _ in await stored_frames(pds)] == [final]
    await write_posts(pds, alice, 1, "later")
    assert await last_seq(pds) == final + 1


@pytest_twisted.ensureDeferred
async def test_pruning_runs_in_the_background(tmp_path):
    # A window of 0.36 s: the job runs every second.
    pds = await start_pds(make_settings(tmp_path / "data", firehose_window="0.0001"))
    try:
        alice = await create_account(pds, "alice")
        await write_posts(pds, alice, 3)
        final = await last_seq(pds)
        deadline = reactor.seconds() + 15
        while [seq for seq, _ in await stored_frames(pds)] != [final]:
            assert reactor.seconds() < deadline, "the log was not pruned"
            await deferLater(reactor, 0.1)
    finally:
        await pds.service.stopService()


# Back-pressure.


@pytest_twisted.ensureDeferred
async def test_slow_consumer_is_dropped_and_nobody_waits_for_it(tmp_path):
    pds = await start_pds(make_settings(tmp_path / "data", firehose_buffer="65536"))
    running = True
    try:
        alice = await create_account(pds, "alice")
        start = await last_seq(pds)
        # A client that stops reading: a tiny receive window, one message queued.
        slow = await deferToThread(dial, pds, "", 4096, 1)
        fast = Reader(pds)
        await until(lambda: subscribers(pds) == 2)

        # ~12 MB of events, far more than the socket buffers and the outbox hold.
        writes = ensureDeferred(write_posts(pds, alice, 200, size=60_000))
        await until(lambda: subscribers(pds) == 1)
        slow_read = deferToThread(read_to_close, slow)
        await writes
        final = await last_seq(pds)

        fast.target = final
        await fast.done
        assert fast.seqs() == list(range(start + 1, final + 1))

        frames, code = await slow_read
        header, body = decode(frames[-1])
        assert header == {"op": -1} and body["error"] == "ConsumerTooSlow"
        assert code == 1008
        seqs = [decode(f)[1]["seq"] for f in frames[:-1]]
        assert seqs == list(range(start + 1, start + 1 + len(seqs))) and len(seqs) < 200

        # Stopping the server closes the remaining subscribers ("going away").
        stay = Reader(pds)
        await until(lambda: subscribers(pds) == 1)
        running = False
        await pds.service.stopService()
        await stay.done
        assert stay.close_code == 1001
    finally:
        if running:
            await pds.service.stopService()


# Large commits, and subscribers that fail or come and go.


async def account(pds, name):
    """A new account's DID and access token."""
    body = {"handle": f"{name}.test", "email": f"{name}@example.com", "password": "hunter2 hunter2"}
    answer = await pds.post("com.atproto.server.createAccount", body)
    assert answer.code == 200, answer.body
    return answer.json()["did"], answer.json()["accessJwt"]


async def create_record(pds, did, token, collection, record, rkey=None):
    body = {"repo": did, "collection": collection, "record": record}
    if rkey is not None:
        body["rkey"] = rkey
    return await pds.post(
        "com.atproto.repo.createRecord", body, headers={"Authorization": f"Bearer {token}"}
    )


async def repo_records(pds, did):
    """Every record the repo holds: path -> CID."""
    def rows(conn):
        return conn.execute(
            "SELECT collection, rkey, cid FROM records WHERE did = ?", (did,)
        ).fetchall()

    return {f"{c}/{k}": CID(bytes(cid)).encode() for c, k, cid in await pds.service.app.db.read(rows)}


def announced(frames, did):
    """
    What the #commit frames of ``did`` announce, checked as they go: each
    create or update op's record block is in the frame's ``blocks``, with
    those bytes.  Returns path -> CID after the last frame.
    """
    records = {}
    for frame in frames:
        header, body = decode(frame)
        if header.get("t") != "#commit" or body["repo"] != did:
            continue
        root, blocks = read_car(body["blocks"])
        blocks = dict(blocks)
        assert root in blocks
        for op in body["ops"]:
            if op["action"] == "delete":
                records.pop(op["path"], None)
                continue
            cid = op["cid"]
            assert cid in blocks, op["path"]
            assert cid_for_cbor(blocks[cid]) == cid
            records[op["path"]] = cid.encode()
    return records


BIG = "com.example.big"
BULK = "com.example.bulk"


@pytest_twisted.ensureDeferred
async def test_large_commits_are_acknowledged_and_sent_whole_live_and_in_replay(tmp_path):
    # A JSON body big enough for a record at the network's limit.
    pds = await start_pds(make_settings(tmp_path / "data", max_json_body=str(4 << 20)))
    try:
        did, token = await account(pds, "alice")
        live = Reader(pds)
        await until(lambda: subscribers(pds) == 1)
        start = await last_seq(pds)
        auth = {"Authorization": f"Bearer {token}"}

        # 200 writes of ~400 bytes: a ~100 KB frame.
        writes = [
            {"$type": "com.atproto.repo.applyWrites#create", "collection": BULK, "rkey": f"b{i:03d}",
             "value": {"n": i, "pad": "x" * 380}}
            for i in range(200)
        ]
        answer = await pds.post("com.atproto.repo.applyWrites", {"repo": did, "writes": writes}, headers=auth)
        assert answer.code == 200, answer.body
        # One record of 500 KB, and one just under the record size limit.
        for rkey, size in (("half", 500_000), ("full", events.MAX_RECORD_BYTES - 64)):
            answer = await create_record(pds, did, token, BIG, {"$type": BIG, "data": "y" * (size - 32)}, rkey)
            assert answer.code == 200, answer.body
        # Two records of 900 KB: blocks near the sync spec's 2,000,000 bytes.
        writes = [
            {"$type": "com.atproto.repo.applyWrites#create", "collection": BIG, "rkey": f"pair{i}",
             "value": {"$type": BIG, "data": str(i) * 900_000}}
            for i in range(2)
        ]
        answer = await pds.post("com.atproto.repo.applyWrites", {"repo": did, "writes": writes}, headers=auth)
        assert answer.code == 200, answer.body
        # A small write after them still goes out.
        answer = await create_record(pds, did, token, POST, post("after"))
        assert answer.code == 200, answer.body

        stored = await stored_frames(pds)
        sizes = sorted(len(frame) for _, frame in stored)
        assert sizes[-4] > 90_000 and sizes[-3] > 500_000 and sizes[-2] > 1_000_000 and sizes[-1] > 1_800_000
        live.target = stored[-1][0]
        replay = Reader(pds, "?cursor=0")
        replay.target = stored[-1][0]
        await live.done
        await replay.done

        assert replay.frames == [frame for _, frame in stored]
        assert live.frames == [frame for seq, frame in stored if seq > start]
        holds = await repo_records(pds, did)
        assert len(holds) == 205
        assert announced(replay.frames, did) == holds
        assert live.close_code is None and replay.close_code is None
    finally:
        await pds.service.stopService()


class FailingConnection(FakeConnection):
    """A consumer whose connection breaks at its ``fail_at``-th frame."""

    def __init__(self, fail_at):
        super().__init__()
        self.fail_at = fail_at

    def send(self, frame):
        if len(self.frames) + 1 == self.fail_at:
            raise RuntimeError("the connection broke")
        super().send(frame)


@pytest_twisted.ensureDeferred
async def test_a_subscriber_whose_send_fails_is_dropped_alone(pds):
    app = pds.service.app
    did, token = await account(pds, "alice")
    steady = Reader(pds)
    await until(lambda: subscribers(pds) == 1)
    start = await last_seq(pds)
    live_failing = FailingConnection(fail_at=2)
    live_outbox = app.sequencer.subscribe(live_failing, None)
    # One that fails during its replay from the log.
    replay_failing = FailingConnection(fail_at=3)
    replay_outbox = app.sequencer.subscribe(replay_failing, 0)

    for i in range(4):
        answer = await create_record(pds, did, token, POST, post(f"p{i}"))
        assert answer.code == 200, answer.body
    final = await last_seq(pds)
    steady.target = final
    await steady.done
    assert steady.seqs() == list(range(start + 1, final + 1))

    await until(lambda: replay_outbox.closed)
    for connection, outbox in ((live_failing, live_outbox), (replay_failing, replay_outbox)):
        assert outbox.closed and outbox not in app.sequencer.outboxes
        assert connection.closed_with == "dropped"
        assert len(connection.frames) == connection.fail_at - 1
    assert live_failing.frames == [frame for _, frame in (await stored_frames(pds, start))[:1]]
    # A replay after the failed one reads the whole log.
    again = Reader(pds, "?cursor=0")
    again.target = final
    await again.done
    assert again.seqs() == list(range(1, final + 1))


@pytest_twisted.ensureDeferred
async def test_a_listener_that_raises_does_not_fail_the_write(pds):
    app = pds.service.app
    did, token = await account(pds, "alice")

    def broken(appended):
        raise RuntimeError("a listener bug")

    app.transactor.listeners.insert(0, broken)
    try:
        reader = Reader(pds)
        await until(lambda: subscribers(pds) == 1)
        answer = await create_record(pds, did, token, POST, post("still acknowledged"))
        assert answer.code == 200, answer.body
        reader.target = await last_seq(pds)
        await reader.done  # the listeners after the broken one heard of it
    finally:
        app.transactor.listeners.remove(broken)


def come_and_go(pds, rng, clean):
    """A subscriber that reads a few frames, then closes cleanly or drops the connection."""
    ws = dial(pds)
    try:
        for _ in range(rng.randrange(0, 4)):
            try:
                ws.recv(timeout=rng.random() * 0.2)
            except TimeoutError:
                pass
    finally:
        if clean:
            ws.close()
        else:
            ws.socket.shutdown(socket.SHUT_RDWR)
            ws.socket.close()


@pytest_twisted.ensureDeferred
async def test_subscribers_coming_and_going_never_fail_a_write(pds):
    import gc
    import random

    from leafpds.xrpc.subscribe import FirehoseProtocol

    did, token = await account(pds, "alice")
    steady = Reader(pds)
    await until(lambda: subscribers(pds) == 1)
    start = await last_seq(pds)
    rng = random.Random(19)
    churn = [deferToThread(come_and_go, pds, random.Random(rng.random()), i % 2 == 0) for i in range(50)]
    codes = []
    churning = gatherResults(churn, consumeErrors=True)
    n = 0
    while not churning.called or n < 20:
        n += 1
        if n % 10 == 0:  # now and then a big batch
            writes = [
                {"$type": "com.atproto.repo.applyWrites#create", "collection": BULK,
                 "rkey": f"b{n}x{i:03d}", "value": {"n": i, "pad": "x" * 380}}
                for i in range(200)
            ]
            answer = await pds.post(
                "com.atproto.repo.applyWrites", {"repo": did, "writes": writes},
                headers={"Authorization": f"Bearer {token}"},
            )
        else:
            answer = await create_record(pds, did, token, POST, post(f"p{n}"))
        codes.append(answer.code)
    await churning
    assert codes == [200] * len(codes)

    final = await last_seq(pds)
    steady.target = final
    await steady.done
    assert steady.seqs() == list(range(start + 1, final + 1))
    assert announced(steady.frames, did) == await repo_records(pds, did)

    # Nothing of the departed subscribers is left: no outbox, no protocol.
    await until(lambda: subscribers(pds) == 0)
    await deferLater(reactor, 0.2)
    gc.collect()
    assert [p for p in gc.get_objects() if isinstance(p, FirehoseProtocol) and p.state != p.STATE_CLOSED] == []


@pytest_twisted.ensureDeferred
async def test_what_subscribers_send_is_held_to_a_small_limit(pds):
    from leafpds.xrpc.subscribe import MAX_INCOMING_MESSAGE

    did, token = await account(pds, "alice")
    chatty = await deferToThread(dial, pds)
    flooding = await deferToThread(dial, pds)
    await until(lambda: subscribers(pds) == 2)
    await deferToThread(chatty.send, b"hello")  # small: ignored
    await deferToThread(flooding.send, b"z" * (MAX_INCOMING_MESSAGE + 1))
    await until(lambda: subscribers(pds) == 1)
    answer = await create_record(pds, did, token, POST, post("after"))
    assert answer.code == 200
    frame = await deferToThread(chatty.recv, 10)
    assert decode(frame)[1]["seq"] == await last_seq(pds)
    chatty.close()
    with pytest.raises(ConnectionClosed):
        await deferToThread(flooding.recv, 10)
