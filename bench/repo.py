"""
Repository engine benchmark, through the real transactor and SQLite:

- sequential single-record creates on one DID (commits/s)
- the same with 8 DIDs writing in parallel (commits/s)
  (each run ``--rounds`` times, one after another on the growing repos: the
  median is printed, and every round, since this VM's speed drifts)
- export of a 10,000-record repo (s, peak memory of the export)
- import of that CAR into a fresh database (s)
- single-record deletes spread over that 10,000-record repo (commits/s)

    .venv/bin/python bench/repo.py [--records 10000] [--commits 3000] [--rounds 3] [--no-cpu-pairing] [--metrics]

``--metrics`` attaches the commit and write-batch histograms as the service
does (leafpds.metrics), to measure what they cost.

As the service does, the reactor and the writer share a CPU (leafpds.db.affinity)
unless ``--no-cpu-pairing``.
"""

import argparse
import gc
import io
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram
from twisted.internet import defer, task

from leafpds import crypto
from leafpds.db.pool import Database
from leafpds.repo import archive
from leafpds.repo.transactor import RepoTransactor, Write
from leafpds.tid import TIDClock


class Keys:
    def __init__(self) -> None:
        self.keys: dict[str, crypto.Keypair] = {}

    async def signing_key(self, did: str) -> crypto.Keypair:
        return self.keys[did]


def post(n: int) -> dict:
    return {
        "$type": "app.bsky.feed.post",
        "text": f"benchmark post number {n}, of an ordinary length for a post",
        "createdAt": "2026-11-28T00:00:00.000Z",
    }


async def new_repo(db: Database, transactor: RepoTransactor, keys: Keys, did: str) -> None:
    keys.keys[did] = crypto.K256Keypair.generate()

    def add(conn):
        conn.execute(
            "INSERT INTO accounts (did, handle, created_at) VALUES (?, ?, 'now')",
            (did, did.rsplit(":", 1)[1] + ".test"),
        )

    await db.write(add)
    await transactor.create_repo(did, keys.keys[did])


async def writer(transactor: RepoTransactor, did: str, count: int, rkeys: TIDClock) -> None:
    for n in range(count):
        await transactor.apply_writes(did, [Write("create", "app.bsky.feed.post", rkeys.next(), post(n))])


def report(rates: list[float]) -> str:
    """The median round, and every round (this VM's speed drifts between them)."""
    rounds = ", ".join(f"{rate:,.0f}" for rate in rates)
    return f"{statistics.median(rates):8,.0f} commits/s (median; rounds {rounds})"


async def main(reactor, args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="leafpds-bench-"))
    db = Database(folder / "bench.sqlite")
    db.migrate()
    db.start()
    if not args.no_cpu_pairing:
        db.share_cpu_with_caller()
    keys = Keys()
    transactor = RepoTransactor(db, keys)
    if args.metrics:
        registry = CollectorRegistry()
        transactor.observe_commit = Histogram("commit", "", registry=registry).observe
        db.observe_write_batches(Histogram("batch", "", registry=registry).observe)
    rkeys = TIDClock()
    gc.freeze()  # as the service does after start-up (leafpds.tap)

    await new_repo(db, transactor, keys, "did:plc:solo")
    rates = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        await writer(transactor, "did:plc:solo", args.commits, rkeys)
        rates.append(args.commits / (time.perf_counter() - start))
    print(f"one DID, sequential creates:   {report(rates)}")

    dids = [f"did:plc:par{i}" for i in range(8)]
    for did in dids:
        await new_repo(db, transactor, keys, did)
    per = args.commits // 8
    rates = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        await defer.gatherResults(
            [defer.Deferred.fromCoroutine(writer(transactor, did, per, rkeys)) for did in dids]
        )
        rates.append(per * 8 / (time.perf_counter() - start))
    print(f"8 DIDs in parallel:            {report(rates)}")

    big = "did:plc:big"
    await new_repo(db, transactor, keys, big)
    big_rkeys = [rkeys.next() for _ in range(args.records)]
    for start_n in range(0, args.records, 200):
        await transactor.apply_writes(big, [
            Write("create", "app.bsky.feed.post", big_rkeys[n], post(n))
            for n in range(start_n, min(start_n + 200, args.records))
        ])
    out = io.BytesIO()
    tracemalloc.start()
    start = time.perf_counter()
    await archive.export_repo(db, reactor, big, out.write)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    car = out.getvalue()
    print(
        f"export {args.records:,} records:        {elapsed:8.3f} s "
        f"({len(car) / 1e6:.1f} MB CAR, peak traced memory {peak / 1e6:.1f} MB excluding the output)"
    )

    fresh = Database(folder / "import.sqlite")
    fresh.migrate()
    fresh.start()

    def add(conn):
        conn.execute("INSERT INTO accounts (did, handle, created_at) VALUES (?, 'big.test', 'now')", (big,))

    await fresh.write(add)
    start = time.perf_counter()
    await archive.import_repo(fresh, big, car, keys.keys[big].did())
    elapsed = time.perf_counter() - start
    print(f"import {args.records:,} records:        {elapsed:8.3f} s")

    doomed = big_rkeys[::20]
    start = time.perf_counter()
    for rkey in doomed:
        await transactor.apply_writes(big, [Write("delete", "app.bsky.feed.post", rkey)])
    rate = len(doomed) / (time.perf_counter() - start)
    print(f"delete from {args.records:,} records:   {rate:8,.0f} commits/s (single-record deletes, spread)")
    db.close()
    fresh.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--commits", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3, help="repeat each throughput run")
    parser.add_argument("--no-cpu-pairing", action="store_true")
    parser.add_argument("--metrics", action="store_true", help="with the service's commit metrics")
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
