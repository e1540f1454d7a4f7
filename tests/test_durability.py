"""
Durability: a real leafpds process is SIGKILLed in the middle of bursts of
writes from 16 concurrent clients, then restarted on the same data folder.
Every acknowledged write must be there, no batch half-applied, and the
firehose replayed from cursor=0 must hold exactly each repo's history.
"""

import random
from pathlib import Path

import pytest_twisted
from cbrrr import decode_multi_dag_cbor_in_violation_of_the_spec as frames
from twisted.internet import defer, reactor, task, threads

from tests.harness import ServerProcess
from tests.test_accounts import PASSWORD

COLLECTION = "com.example.durable"


async def client(server: ServerProcess, did: str, token: str, prefix: str, rng: random.Random, ledger: list) -> None:
    """Writes to its own keys only; records every acknowledged (and attempted) write."""
    live: dict[str, str] = {}
    n = 0
    while True:
        n += 1
        choice = rng.random()
        if choice < 0.45 or not live:
            rkey = f"{prefix}{n:05d}"
            body = {"repo": did, "collection": COLLECTION, "rkey": rkey, "record": {"n": n, "c": prefix}}
            entry = {"did": did, "kind": "create", "keys": [rkey], "values": [n]}
            ledger.append(entry)
            code, answer = await server.call("com.atproto.repo.createRecord", body, token)
            assert code == 200, answer
            live[rkey] = answer["cid"]
        elif choice < 0.65:
            rkey = rng.choice(sorted(live))
            body = {"repo": did, "collection": COLLECTION, "rkey": rkey, "record": {"n": n, "c": prefix}}
            entry = {"did": did, "kind": "update", "keys": [rkey], "values": [n]}
            ledger.append(entry)
            code, answer = await server.call("com.atproto.repo.putRecord", body, token)
            assert code == 200, answer
        elif choice < 0.8:
            rkey = rng.choice(sorted(live))
            entry = {"did": did, "kind": "delete", "keys": [rkey], "values": [None]}
            ledger.append(entry)
            code, answer = await server.call(
                "com.atproto.repo.deleteRecord", {"repo": did, "collection": COLLECTION, "rkey": rkey}, token
            )
            assert code == 200, answer
            del live[rkey]
        else:
            # Now and then a commit of the protocol's 200 writes, ~100 KB: a
            # firehose frame over the 64 KiB WebSocket messages often default to.
            size, pad = (200, "x" * 400) if rng.random() < 0.2 else (5, "")
            keys = [f"{prefix}{n:05d}b{i}" for i in range(size)]
            writes = [
                {"$type": "com.atproto.repo.applyWrites#create", "collection": COLLECTION, "rkey": k, "value": {"n": n, "c": prefix, "pad": pad}}
                for k in keys
            ]
            entry = {"did": did, "kind": "batch", "keys": keys, "values": [n] * size}
            ledger.append(entry)
            code, answer = await server.call("com.atproto.repo.applyWrites", {"repo": did, "writes": writes}, token)
            assert code == 200, answer
            for k in keys:
                live[k] = "x"
        entry["acked"] = True


async def records_of(server: ServerProcess, did: str) -> dict[str, tuple[int, str]]:
    found, cursor = {}, None
    while True:
        params = {"repo": did, "collection": COLLECTION, "limit": "100"}
        if cursor:
            params["cursor"] = cursor
        code, page = await server.call("com.atproto.repo.listRecords", params=params)
        assert code == 200, page
        for record in page["records"]:
            found[record["uri"].rsplit("/", 1)[1]] = (record["value"]["n"], record["cid"])
        cursor = page.get("cursor")
        if not cursor:
            return found


def check_ledger(ledger: list, did: str, stored: dict[str, tuple[int, str]]) -> None:
    """Each key holds its last acknowledged value, or the value of the one write after it that
    may have committed without its answer arriving; batches are whole or absent."""
    per_key: dict[str, list] = {}
    for entry in ledger:
        if entry["did"] != did:
            continue
        for key, value in zip(entry["keys"], entry["values"]):
            per_key.setdefault(key, []).append((value, entry.get("acked", False), entry))
    for key, history in per_key.items():
        acked = [i for i, (_, ok, _) in enumerate(history) if ok]
        last = acked[-1] if acked else -1
        allowed = set()
        allowed.add(history[last][0] if last >= 0 else None)
        if last + 1 < len(history):
            allowed.add(history[last + 1][0])
        value = stored[key][0] if key in stored else None
        assert value in allowed, (key, value, history)
    # A batch in flight at the kill (keys untouched since): all of it or none.
    # (Acknowledged batches are covered key by key above; later writes may
    # have deleted some of their keys.)
    for entry in ledger:
        if entry["did"] == did and entry["kind"] == "batch" and not entry.get("acked"):
            present = [k in stored for k in entry["keys"]]
            assert all(present) or not any(present), entry


def firehose_history(port: int, last_seq: int) -> list[dict]:
    """Every event, replayed from cursor=0 over the WebSocket (run in a thread)."""
    from websockets.sync.client import connect

    bodies = []
    url = f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor=0"
    with connect(url, max_size=None, open_timeout=10) as socket_:
        while not bodies or bodies[-1]["seq"] < last_seq:
            header, body = list(frames(socket_.recv(timeout=10)))
            assert header["op"] == 1, body
            bodies.append({"t": header["t"], **body})
    return bodies


def last_seq(db_path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT max(seq) FROM repo_seq").fetchone()[0]
    finally:
        conn.close()


def check_log(history: list[dict], did: str, stored: dict[str, tuple[int, str]], head: dict) -> None:
    """Replaying the repo's #commit events gives exactly its records, chained by since, ending at head."""
    seqs = [event["seq"] for event in history]
    assert seqs == sorted(set(seqs))  # in order, no duplicates
    replayed: dict[str, str] = {}
    previous_rev = None
    for body in history:
        if body["t"] != "#commit" or body["repo"] != did:
            continue
        assert body["since"] == previous_rev
        previous_rev = body["rev"]
        for op in body["ops"]:
            collection, rkey = op["path"].split("/")
            if op["action"] == "delete":
                replayed.pop(rkey, None)
            else:
                replayed[rkey] = op["cid"].encode()
    assert previous_rev == head["rev"]
    assert replayed == {rkey: cid for rkey, (_n, cid) in stored.items()}


@pytest_twisted.ensureDeferred
async def test_sigkill_mid_burst_loses_no_acknowledged_write(tmp_path):
    server = ServerProcess(tmp_path / "data")
    await server.start()
    accounts = []
    try:
        for i in range(4):
            code, made = await server.call(
                "com.atproto.server.createAccount",
                {"handle": f"durable{i}.test", "email": f"d{i}@example.com", "password": PASSWORD},
            )
            assert code == 200, made
            accounts.append((made["did"], made["accessJwt"]))
    except BaseException:
        server.kill()
        raise
    ledger: list = []
    rng = random.Random(1234)
    for round_ in range(2):
        burst = [
            defer.Deferred.fromCoroutine(
                client(server, *accounts[i % 4], f"r{round_}c{i:02d}k", random.Random(rng.random()), ledger)
            )
            for i in range(16)
        ]
        await task.deferLater(reactor, 1.5 + rng.random(), lambda: None)
        server.kill()
        await defer.DeferredList(burst, consumeErrors=True)
        await server.start()
        history = await threads.deferToThread(
            firehose_history, server.port, last_seq(tmp_path / "data" / "leafpds.sqlite")
        )
        for did, _token in accounts:
            stored = await records_of(server, did)
            check_ledger(ledger, did, stored)
            code, head = await server.call("com.atproto.sync.getLatestCommit", params={"did": did})
            assert code == 200
            check_log(history, did, stored, head)
        assert sum(1 for e in ledger if e.get("acked")) > 50  # the burst really wrote
    server.kill()
