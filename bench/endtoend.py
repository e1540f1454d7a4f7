"""
End-to-end HTTP benchmark: a real leafpds process (`python -m twisted
leafpds`), driven from this process by a minimal keep-alive HTTP/1.1 client
(raw sockets, one thread per simulated client) so the client costs little
next to the server.  Prints, with the server's CPU time per request:

- createRecord with 1 client, and with 8 concurrent clients over 8 accounts (records/s)
- getRecord with 1 and 8 concurrent clients (reads/s), over 100 records read
  again and again (served from the record cache), then with 8 clients reading
  each of 2,000 records once (every read goes to the database)
- applyWrites in batches of 200 (records/s)
- getRepo of a 2,000-record repo (ms)

    .venv/bin/python bench/endtoend.py [--seconds 5]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = "app.bsky.feed.post"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the server process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post(n: int) -> dict:
    return {"$type": COLLECTION, "text": f"benchmark post {n}", "createdAt": "2026-11-28T00:00:00.000Z"}


class Connection:
    """One keep-alive HTTP/1.1 connection; answers must carry Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def call(self, nsid: str, body=None, token=None, params=None) -> bytes:
        path = f"/xrpc/{nsid}" + (f"?{urlencode(params, doseq=True)}" if params else "")
        headers = ["Host: localhost"]
        if token:
            headers.append(f"Authorization: Bearer {token}")
        if body is None:
            request = f"GET {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
            self.sock.sendall(request.encode())
        else:
            data = json.dumps(body).encode()
            headers += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
            request = f"POST {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
            self.sock.sendall(request.encode() + data)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        lengths = [int(l.split(b":")[1]) for l in lines[1:] if l.lower().startswith(b"content-length:")]
        content = self._read(lengths[0]) if lengths else self._read_chunked()
        if status != 200:
            raise RuntimeError(f"{nsid}: {status} {content[:200]!r}")
        return content

    def _read(self, length: int) -> bytes:
        while len(self.buffer) < length:
            self.buffer += self._recv()
        content, self.buffer = self.buffer[:length], self.buffer[length:]
        return content

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            while b"\r\n" not in self.buffer:
                self.buffer += self._recv()
            size_line, self.buffer = self.buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            parts.append(self._read(size + 2)[:size])
            if size == 0:
                return b"".join(parts)

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk


def run_clients(port: int, count: int, seconds: float, work) -> int:
    """``count`` threads, each with its own connection, calling work(conn, i, n) until time is up."""
    done = [0] * count

    def loop(i: int) -> None:
        conn = Connection(port)
        deadline = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < deadline:
            work(conn, i, n)
            n += 1
        done[i] = n

    in_threads(count, loop)
    return sum(done)


def in_threads(count: int, target) -> None:
    """Run target(i) for i in range(count), each in its own thread; return when all are done."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def start_server(*options: str, plc_port: int | None = None) -> tuple[subprocess.Popen, int, Connection]:
    """A leafpds process (with ``options``) in a fresh data folder; returns it, its port and a connection to it."""
    port, plc_port = free_port(), plc_port or free_port()
    data = Path(tempfile.mkdtemp(prefix="leafpds-bench-"))
    server = subprocess.Popen(
        [sys.executable, "-m", "twisted", "--log-file", str(data / "server.log"), "leafpds",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--plc-listen", f"tcp:{plc_port}:interface=127.0.0.1",
         "--data-dir", str(data / "data"), "--no-rate-limits", *options],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    for _ in range(200):
        try:
            setup = Connection(port)
            setup.call("_health")
            return server, port, setup
        except OSError:
            time.sleep(0.05)
    server.terminate()
    raise RuntimeError(f"leafpds did not start; see {data / 'server.log'}")


def main(seconds: float) -> None:
    server, port, setup = start_server()
    try:
        accounts = []
        for i in range(8):
            made = json.loads(setup.call("com.atproto.server.createAccount", {
                "handle": f"bench{i}.test", "email": f"b{i}@example.com", "password": "benchmark-password"}))
            accounts.append((made["did"], made["accessJwt"]))

        def report(label: str, n: int, unit: str, cpu_before: float) -> None:
            used = cpu_seconds(server.pid) - cpu_before
            print(f"{label:<38}{n / seconds:8.0f} {unit}  (server CPU {used / max(n, 1) * 1e6:5.0f} µs each)")

        def create(conn, i, n):
            did, token = accounts[i]
            conn.call("com.atproto.repo.createRecord", {"repo": did, "collection": COLLECTION, "record": post(n)}, token)

        cpu = cpu_seconds(server.pid)
        report("createRecord, 1 client:", run_clients(port, 1, seconds, create), "records/s", cpu)
        cpu = cpu_seconds(server.pid)
        report("createRecord, 8 clients / 8 accounts:", run_clients(port, 8, seconds, create), "records/s", cpu)

        did = accounts[0][0]
        listed = json.loads(setup.call("com.atproto.repo.listRecords", params={"repo": did, "collection": COLLECTION, "limit": "100"}))
        rkeys = [r["uri"].rsplit("/", 1)[1] for r in listed["records"]]

        def read(conn, i, n):
            conn.call("com.atproto.repo.getRecord", params={"repo": did, "collection": COLLECTION, "rkey": rkeys[n % len(rkeys)]})

        cpu = cpu_seconds(server.pid)
        report("getRecord, 1 client:", run_clients(port, 1, seconds, read), "reads/s", cpu)
        cpu = cpu_seconds(server.pid)
        report("getRecord, 8 clients:", run_clients(port, 8, seconds, read), "reads/s", cpu)

        # A fresh account, so the repo below holds exactly 2,000 records.
        made = json.loads(setup.call("com.atproto.server.createAccount", {
            "handle": "bigrepo.test", "email": "big@example.com", "password": "benchmark-password"}))
        big_did, big_token = made["did"], made["accessJwt"]
        start = time.perf_counter()
        for b in range(10):
            writes = [{"$type": "com.atproto.repo.applyWrites#create", "collection": COLLECTION, "value": post(b * 200 + i)}
                      for i in range(200)]
            setup.call("com.atproto.repo.applyWrites", {"repo": big_did, "writes": writes}, big_token)
        elapsed = time.perf_counter() - start
        print(f"{'applyWrites, batches of 200:':<38}{2000 / elapsed:8.0f} records/s")

        listed = json.loads(setup.call("com.atproto.repo.listRecords", params={"repo": big_did, "collection": COLLECTION, "limit": "100"}))
        big_rkeys = [r["uri"].rsplit("/", 1)[1] for r in listed["records"]]
        while cursor := listed.get("cursor"):
            listed = json.loads(setup.call("com.atproto.repo.listRecords", params={
                "repo": big_did, "collection": COLLECTION, "limit": "100", "cursor": cursor}))
            big_rkeys += [r["uri"].rsplit("/", 1)[1] for r in listed["records"]]

        def read_each_once(i: int) -> None:
            conn = Connection(port)
            for rkey in big_rkeys[i::8]:
                conn.call("com.atproto.repo.getRecord", params={"repo": big_did, "collection": COLLECTION, "rkey": rkey})

        cpu = cpu_seconds(server.pid)
        start = time.perf_counter()
        in_threads(8, read_each_once)
        elapsed = time.perf_counter() - start
        used = cpu_seconds(server.pid) - cpu
        print(f"{'getRecord, 8 clients, uncached:':<38}{len(big_rkeys) / elapsed:8.0f} reads/s  "
              f"(server CPU {used / len(big_rkeys) * 1e6:5.0f} µs each)")

        timings = []
        for _ in range(20):
            start = time.perf_counter()
            car = setup.call("com.atproto.sync.getRepo", params={"did": big_did})
            timings.append(time.perf_counter() - start)
        timings.sort()
        print(f"{'getRepo, 2,000-record repo:':<38}{timings[len(timings) // 2] * 1000:8.1f} ms "
              f"(median of 20, {len(car) / 1e6:.2f} MB)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    main(parser.parse_args().seconds)
