"""
Blob benchmark: uploadBlob then getBlob of 1 MB and 50 MB blobs against a
real leafpds process with the disk store, and with the S3 store on moto (in
server mode, checking signatures, in its own process, on loopback).

For each store and size: upload and download throughput (MB/s, one client,
the body streamed from/to a file-like source in 256 KiB pieces), and the
server's peak RSS while it did so against its RSS before (sampled every 10
ms): streamed, the growth stays flat whatever the blob's size.  moto keeps
objects in its own memory and is slower than S3 or MinIO, so the S3 figures
are a floor, and its CPU competes with the server's on a small machine.

    .venv/bin/python bench/blobs.py [--rounds 3]
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from endtoend import start_server  # noqa: E402
from proxy import rss_mb  # noqa: E402

from tests.s3_standin import BUCKET, MotoServer  # noqa: E402

MB = 1_000_000
PIECE = 256 * 1024


def upload(port: int, token: str, size: int) -> tuple[dict, float]:
    """Stream ``size`` random-ish bytes as an uploadBlob body; (blob ref, seconds)."""
    piece = os.urandom(PIECE)
    sock = socket.create_connection(("127.0.0.1", port))
    began = time.perf_counter()
    sock.sendall((
        f"POST /xrpc/com.atproto.repo.uploadBlob HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
    ).encode())
    left = size
    while left:
        chunk = piece[:min(PIECE, left)]
        sock.sendall(chunk)
        left -= len(chunk)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    seconds = time.perf_counter() - began
    sock.close()
    head, body = answer.split(b"\r\n\r\n", 1)
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"uploadBlob: {answer[:300]!r}")
    return json.loads(body)["blob"], seconds


def download(port: int, did: str, cid: str, size: int) -> float:
    sock = socket.create_connection(("127.0.0.1", port))
    began = time.perf_counter()
    sock.sendall((
        f"GET /xrpc/com.atproto.sync.getBlob?did={did}&cid={cid} HTTP/1.1\r\n"
        f"Host: localhost\r\nConnection: close\r\n\r\n"
    ).encode())
    got = 0
    while chunk := sock.recv(1 << 20):
        got += len(chunk)
    seconds = time.perf_counter() - began
    sock.close()
    if got < size:
        raise RuntimeError(f"getBlob: {got} bytes of {size}")
    return seconds


class PeakRSS:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_mb(pid)
        self.peak = self.before
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)

    def stop(self) -> "PeakRSS":
        self.running = False
        self.thread.join()
        return self


def run(label: str, options: list[str], rounds: int) -> None:
    server, port, setup = start_server(*options)
    try:
        made = json.loads(setup.call("com.atproto.server.createAccount", {
            "handle": "blobs.test", "email": "b@example.com", "password": "benchmark-password"}))
        did, token = made["did"], made["accessJwt"]
        for size in (1 * MB, 50 * MB):
            count = rounds * (10 if size == MB else 1)
            up = down = 0.0
            rss = PeakRSS(server.pid)
            for _ in range(count):
                blob, seconds = upload(port, token, size)
                up += seconds
                setup.call("com.atproto.repo.createRecord", {
                    "repo": did, "collection": "com.example.file", "record": {"file": blob}}, token)
                down += download(port, did, blob["ref"]["$link"], size)
            rss.stop()
            print(f"{label:<5} {size // MB:>3} MB x{count:<3}  uploadBlob {count * size / MB / up:7.1f} MB/s"
                  f"   getBlob {count * size / MB / down:7.1f} MB/s"
                  f"   server RSS {rss.before:5.0f} MB before, peak {rss.peak:5.0f} MB"
                  f" (+{rss.peak - rss.before:.0f} MB)", flush=True)
    finally:
        server.terminate()
        server.wait()


def main(rounds: int) -> None:
    run("disk", [], rounds)
    moto = MotoServer(Path(tempfile.mkdtemp(prefix="leafpds-bench-moto-")) / "moto.log")
    try:
        moto.fresh()
        run("s3", ["--blobstore", f"s3://{BUCKET}/bench", "--s3-endpoint", moto.url,
                   "--s3-force-path-style", "--s3-access-key-id", moto.access_key_id,
                   "--s3-secret-access-key", moto.secret_access_key], rounds)
    finally:
        moto.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    main(parser.parse_args().rounds)
