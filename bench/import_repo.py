"""
Migration-in benchmark: a 100,000-record repo moved between two real leafpds
processes on loopback (B resolving DIDs through A's embedded PLC directory).

The records are written on A with applyWrites (batches of 200), exported
with getRepo, and imported over HTTP into a fresh, deactivated account on B
(createAccount with the DID and A's service token).  Prints the import's
time and B's peak RSS while importing (VmHWM, reset just before, against
its RSS before): the body is spooled to disk and the repo staged and swapped
in row by row, so the growth stays far below the repo's size.  Then the
admin deleteAccount of it on B, and its time.

    .venv/bin/python bench/import_repo.py [--records 100000]
"""

import argparse
import base64
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from endtoend import COLLECTION, free_port, post, start_server  # noqa: E402

PASSWORD = "benchmark-password"
ADMIN_PASSWORD = "benchmark-admin"


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def raw_post(port: int, nsid: str, body: bytes, content_type: str, headers: dict[str, str]) -> bytes:
    """One POST on its own connection, the body sent in 256 KiB pieces; the answer's body."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall((
        f"POST /xrpc/{nsid} HTTP/1.1\r\nHost: localhost\r\n{head}Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode())
    view = memoryview(body)
    for start in range(0, len(body), 256 * 1024):
        sock.sendall(view[start:start + 256 * 1024])
    answer = b""
    while chunk := sock.recv(1 << 16):
        answer += chunk
    sock.close()
    head_part, content = answer.split(b"\r\n\r\n", 1)
    if b" 200 " not in head_part.split(b"\r\n")[0]:
        raise RuntimeError(f"{nsid}: {answer[:300]!r}")
    return content


def main(records: int) -> None:
    plc_port = free_port()
    a, a_port, a_conn = start_server(plc_port=plc_port)
    b, b_port, b_conn = start_server("--plc-url", f"http://127.0.0.1:{plc_port}", "--admin-password", ADMIN_PASSWORD)
    try:
        made = json.loads(a_conn.call("com.atproto.server.createAccount", {
            "handle": "mover.test", "email": "mover@example.com", "password": PASSWORD}))
        did, token = made["did"], made["accessJwt"]
        start = time.perf_counter()
        for first in range(0, records, 200):
            writes = [{"$type": "com.atproto.repo.applyWrites#create", "collection": COLLECTION, "value": post(n)}
                      for n in range(first, min(first + 200, records))]
            a_conn.call("com.atproto.repo.applyWrites", {"repo": did, "writes": writes}, token)
        print(f"{'write the repo on A (applyWrites):':<40}{time.perf_counter() - start:8.1f} s")

        start = time.perf_counter()
        car = a_conn.call("com.atproto.sync.getRepo", params={"did": did})
        print(f"{'export from A (getRepo):':<40}{time.perf_counter() - start:8.1f} s  ({len(car) / 1e6:.1f} MB CAR)")

        b_did = json.loads(b_conn.call("com.atproto.server.describeServer"))["did"]
        service_token = json.loads(a_conn.call(
            "com.atproto.server.getServiceAuth", token=token,
            params={"aud": b_did, "lxm": "com.atproto.server.createAccount"}))["token"]
        arrived = json.loads(b_conn.call(
            "com.atproto.server.createAccount",
            {"did": did, "handle": "mover.test", "email": "mover@example.com", "password": PASSWORD},
            service_token))
        b_token = arrived["accessJwt"]

        before = status_kb(b.pid, "VmRSS")
        Path(f"/proc/{b.pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
        start = time.perf_counter()
        raw_post(b_port, "com.atproto.repo.importRepo", car, "application/vnd.ipld.car",
                 {"Authorization": f"Bearer {b_token}"})
        elapsed = time.perf_counter() - start
        peak = status_kb(b.pid, "VmHWM")
        print(f"{f'importRepo, {records:,} records:':<40}{elapsed:8.1f} s  "
              f"(B's RSS {before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB during: "
              f"+{(peak - before) / 1024:.0f} MB for a {len(car) / 1e6:.0f} MB repo)")
        status = json.loads(b_conn.call("com.atproto.server.checkAccountStatus", token=b_token))
        assert status["indexedRecords"] == records, status

        admin = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        start = time.perf_counter()
        raw_post(b_port, "com.atproto.admin.deleteAccount", json.dumps({"did": did}).encode(),
                 "application/json", {"Authorization": admin})
        print(f"{'deleteAccount of it on B:':<40}{time.perf_counter() - start:8.1f} s")
    finally:
        for server in (b, a):
            server.terminate()
            server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    main(parser.parse_args().records)
