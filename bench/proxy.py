"""
Service proxying benchmark: a real leafpds process forwarding to an upstream
AppView stand-in (a minimal Twisted server in its own process, answering
canned JSON without checking tokens, so that what is measured is the proxy).

1. Latency of a proxied ``getTimeline`` (a 12 KB answer) against calling the
   upstream directly, one client at a time: p50 and p99 of each, and the
   overhead (token minting, forwarding, relaying).
2. Memory: 50 clients each stream a 5 MB proxied answer at once, reading
   slowly; the server's peak RSS is printed against its RSS before (a proxy
   that buffered whole answers would grow by ~250 MB).

    .venv/bin/python bench/proxy.py [--calls 2000]
"""

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from endtoend import Connection, free_port, start_server  # noqa: E402

TIMELINE = "app.bsky.feed.getTimeline"
BIG = "app.bsky.feed.getFeedSkeleton"
BIG_SIZE = 5 * 1024 * 1024

UPSTREAM = r'''
import json, sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site, NOT_DONE_YET

TIMELINE = json.dumps({"feed": [{"post": {"uri": "at://did:plc:x/app.bsky.feed.post/%d" % i,
    "text": "x" * 100}} for i in range(80)]}).encode()
CHUNK = b"y" * 65536

class Root(Resource):
    isLeaf = True
    def render_GET(self, request):
        request.setHeader("content-type", "application/json")
        if request.path.endswith(b"getFeedSkeleton"):
            request.setHeader("content-length", str(80 * len(CHUNK)))
            left = [80]
            def more():
                # Written as the client drains it, like a real server.
                while left[0] and not producer.paused:
                    left[0] -= 1
                    request.write(CHUNK)
                if not left[0]:
                    request.unregisterProducer()
                    request.finish()
            class P:
                paused = False
                def pauseProducing(self): P.paused = True
                def resumeProducing(self): P.paused = False; more()
                def stopProducing(self): left[0] = 0
            producer = P()
            request.registerProducer(producer, True)
            more()
            return NOT_DONE_YET
        request.setHeader("atproto-repo-rev", "3zzzzzzzzzzzz")
        request.setHeader("content-length", str(len(TIMELINE)))
        return TIMELINE

reactor.listenTCP(int(sys.argv[1]), Site(Root()), interface="127.0.0.1")
reactor.run()
'''


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def latencies(port: int, nsid: str, token: str | None, calls: int) -> list[float]:
    conn = Connection(port)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        conn.call(nsid, token=token, params={"limit": "50"})
        times.append(time.perf_counter() - start)
    return sorted(times)


def slow_stream(port: int, token: str, sizes: list[int], i: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(f"GET /xrpc/{BIG} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    received = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += len(chunk)
        time.sleep(0.002)  # a slow reader: ~30 MB/s at most
        if received >= BIG_SIZE:  # the head's bytes make it a little more
            break
    sizes[i] = received
    sock.close()


def main(calls: int) -> None:
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream_port)])
    server, port, setup = start_server(
        "--appview-url", f"http://127.0.0.1:{upstream_port}", "--appview-did", "did:web:upstream.test",
    )
    try:
        made = json.loads(setup.call("com.atproto.server.createAccount", {
            "handle": "proxy-bench.test", "email": "p@example.com", "password": "benchmark-password"}))
        token = made["accessJwt"]
        p = lambda values, q: values[min(len(values) - 1, int(q * len(values)))] * 1000  # noqa: E731
        latencies(upstream_port, TIMELINE, None, 200)  # warm both up
        latencies(port, TIMELINE, token, 200)
        direct = latencies(upstream_port, TIMELINE, None, calls)
        proxied = latencies(port, TIMELINE, token, calls)
        print(f"getTimeline direct:  p50 {p(direct, .5):.2f} ms, p99 {p(direct, .99):.2f} ms ({calls} calls)")
        print(f"getTimeline proxied: p50 {p(proxied, .5):.2f} ms, p99 {p(proxied, .99):.2f} ms")
        print(f"overhead: p50 {p(proxied, .5) - p(direct, .5):.2f} ms, p99 {p(proxied, .99) - p(direct, .99):.2f} ms")

        before = rss_mb(server.pid)
        peak = [before]
        sizes = [0] * 50
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(server.pid))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        start = time.perf_counter()
        threads = [threading.Thread(target=slow_stream, args=(port, token, sizes, i)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        stop.set()
        watcher.join()
        total = sum(sizes)
        print(f"50 clients x 5 MB proxied in {elapsed:.1f} s ({total / elapsed / 1e6:.0f} MB/s); "
              f"server RSS {before:.0f} MB before, peak {peak[0]:.0f} MB (+{peak[0] - before:.0f} MB)")
    finally:
        server.terminate()
        server.wait()
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    main(parser.parse_args().calls)
