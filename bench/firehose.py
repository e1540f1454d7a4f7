"""
Firehose fan-out benchmark: a real leafpds process, 100 WebSocket
subscribers (Autobahn, in this process) and a writer committing at a steady
pace from a thread: single createRecords, and a share of ``applyWrites``
batches of 200 records of ~400 bytes (frames of ~125 KB).  Prints events/s
and frame bytes/s delivered, and the latency from commit (the event's
``time``) to receipt, p50 and p99, for small and batch frames.

    .venv/bin/python bench/firehose.py [--subscribers 100] [--seconds 10] [--rate 200] [--batch-share 0.1]
"""

import argparse
import json
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from cbrrr import decode_multi_dag_cbor_in_violation_of_the_spec as frames
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from endtoend import COLLECTION, Connection, post, start_server  # noqa: E402

BATCH = 200
BULK = "com.example.bulk"

# Commit -> receipt latency, for small frames and for batch frames.
latencies: dict[str, list[float]] = {"small": [], "batch": []}
received = [0]
received_bytes = [0]


class Subscriber(WebSocketClientProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        now = time.time()
        header, body = list(frames(payload))
        if header.get("t") == "#commit":
            sent = datetime.fromisoformat(body["time"].replace("Z", "+00:00")).timestamp()
            latencies["batch" if len(body["ops"]) == BATCH else "small"].append(now - sent)
            received[0] += 1
            received_bytes[0] += len(payload)


def writer(
    port: int, did: str, token: str, seconds: float, rate: float, batch_share: float, stop: threading.Event
) -> tuple[int, int]:
    """Commits at ``rate`` per second, every 1/``batch_share``-th a batch; (commits, batches)."""
    conn = Connection(port)
    n, batches, start = 0, 0, time.perf_counter()
    every = round(1 / batch_share) if batch_share else 0
    while time.perf_counter() - start < seconds and not stop.is_set():
        if every and n % every == every - 1:
            writes = [
                {"$type": "com.atproto.repo.applyWrites#create", "collection": BULK,
                 "rkey": f"c{n}r{i}", "value": {"n": i, "pad": "x" * 380}}
                for i in range(BATCH)
            ]
            conn.call("com.atproto.repo.applyWrites", {"repo": did, "writes": writes}, token)
            batches += 1
        else:
            conn.call("com.atproto.repo.createRecord", {"repo": did, "collection": COLLECTION, "record": post(n)}, token)
        n += 1
        pause = start + n / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    return n, batches


async def main(reactor, args) -> None:
    server, port, setup = start_server()
    try:
        made = json.loads(setup.call("com.atproto.server.createAccount", {
            "handle": "fanout-bench.test", "email": "f@example.com", "password": "benchmark-password"}))
        url = f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"
        factory = WebSocketClientFactory(url)
        factory.protocol = Subscriber
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        for _ in range(args.subscribers):
            await endpoint.connect(factory)
        await task.deferLater(reactor, 1.0, lambda: None)  # let the handshakes finish
        stop = threading.Event()
        start = time.perf_counter()
        written, batches = await deferToThread(
            writer, port, made["did"], made["accessJwt"], args.seconds, args.rate, args.batch_share, stop)
        await task.deferLater(reactor, 1.0, lambda: None)  # the last frames
        elapsed = time.perf_counter() - start
        print(f"{args.subscribers} subscribers, {written} commits written at ~{written / args.seconds:.0f}/s "
              f"({batches} of them batches of {BATCH} records)")
        print(f"delivered {received[0]} events ({received[0] / elapsed:,.0f} events/s across subscribers; "
              f"expected {written * args.subscribers}), "
              f"{received_bytes[0] / elapsed / 1e6:,.1f} MB/s of frames")
        for kind, values in latencies.items():
            if not values:
                continue
            values.sort()
            p = lambda q: values[min(len(values) - 1, int(q * len(values)))] * 1000  # noqa: E731
            print(f"commit -> receipt latency, {kind} frames: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms "
                  "(ms resolution of `time`)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--batch-share", type=float, default=0.1, help="share of commits that are 200-record batches")
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
