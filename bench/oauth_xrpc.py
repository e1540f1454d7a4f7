"""
XRPC over HTTP with an OAuth grant (``Authorization: DPoP`` and a fresh
proof per call, as the official client sends them) against the same calls
with a session JWT (``Bearer``), on a real leafpds process: createRecord
and an authenticated read (getPreferences: getRecord takes no credentials),
with 1 and 8 clients.  Prints calls/s and the server's CPU time per call;
the difference is what DPoP costs the server per call.  Proofs are signed
by the clients as they go (the client's cost, not the server's).

The grant is made as the authorization page makes it: the consent written
to the server's database (``issue_code_unit``), then the code exchanged at
the real ``/oauth/token``.

    .venv/bin/python bench/oauth_xrpc.py [--seconds 5]
"""

import argparse
import base64
import hashlib
import json
import secrets
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from endtoend import COLLECTION, Connection, cpu_seconds, post, run_clients, start_server  # noqa: E402

from leafpds.oauth.tokens import Consent, issue_code_unit  # noqa: E402
from tests.oauth_keys import ClientKey  # noqa: E402

SCOPE = "atproto transition:generic"
REDIRECT = "http://127.0.0.1/callback"
CLIENT_ID = f"http://localhost?redirect_uri={quote(REDIRECT, safe='')}&scope={quote(SCOPE, safe='')}"


class DpopConnection(Connection):
    """A keep-alive connection that sends DPoP proofs and keeps the server's latest nonce."""

    def __init__(self, port: int, origin: str, key: ClientKey, token: str | None = None) -> None:
        super().__init__(port)
        self.origin = origin
        self.key = key
        self.token = token
        self.nonce: str | None = None

    def send(self, method: str, path: str, body: bytes = b"", content_type: str | None = None) -> tuple[int, bytes]:
        """One request (retried once with the nonce the server asks for); status and body."""
        for _ in range(2):
            proof = self.key.proof(method, self.origin + path.split("?")[0], nonce=self.nonce, access_token=self.token)
            headers = ["Host: localhost", f"DPoP: {proof}"]
            if self.token:
                headers.append(f"Authorization: DPoP {self.token}")
            if content_type:
                headers += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
            self.sock.sendall(f"{method} {path} HTTP/1.1\r\n".encode() + "\r\n".join(headers).encode() + b"\r\n\r\n" + body)
            status, answer = self._answer()
            if not (status in (400, 401) and b"use_dpop_nonce" in answer):
                return status, answer
        return status, answer

    def _answer(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if b"dpop-nonce" in fields:
            self.nonce = fields[b"dpop-nonce"].decode()
        length = int(fields.get(b"content-length", b"0"))
        return int(lines[0].split()[1]), self._read(length)

    def xrpc(self, nsid: str, body=None, params=None) -> bytes:
        path = f"/xrpc/{nsid}" + (f"?{urlencode(params)}" if params else "")
        if body is None:
            status, answer = self.send("GET", path)
        else:
            status, answer = self.send("POST", path, json.dumps(body).encode(), "application/json")
        if status != 200:
            raise RuntimeError(f"{nsid}: {status} {answer[:200]!r}")
        return answer


def oauth_grant(port: int, data_dir: Path, did: str) -> tuple[ClientKey, str]:
    """A DPoP key and an access token for ``did``: consent in the database, the code exchanged over HTTP."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    conn = sqlite3.connect(data_dir / "leafpds.sqlite", timeout=30)
    with conn:
        code = issue_code_unit(conn, Consent(did, CLIENT_ID, SCOPE, REDIRECT, challenge), time.time())
    conn.close()
    key = ClientKey()
    client = DpopConnection(port, f"http://localhost:{port}", key)
    form = urlencode({"client_id": CLIENT_ID, "grant_type": "authorization_code", "code": code,
                      "redirect_uri": REDIRECT, "code_verifier": verifier}).encode()
    status, answer = client.send("POST", "/oauth/token", form, "application/x-www-form-urlencoded")
    if status != 200:
        raise RuntimeError(f"/oauth/token: {status} {answer[:300]!r}")
    return key, json.loads(answer)["access_token"]


def main(seconds: float) -> None:
    server, port, setup = start_server()
    data_dir = Path(server.args[server.args.index("--data-dir") + 1])
    origin = f"http://localhost:{port}"
    try:
        accounts = []
        for i in range(8):
            made = json.loads(setup.call("com.atproto.server.createAccount", {
                "handle": f"bench{i}.test", "email": f"b{i}@example.com", "password": "benchmark-password"}))
            key, token = oauth_grant(port, data_dir, made["did"])
            accounts.append((made["did"], made["accessJwt"], key, token))
        results: dict[str, tuple[float, float]] = {}

        def measure(label: str, clients: int, work) -> None:
            cpu = cpu_seconds(server.pid)
            n = run_clients(port, clients, seconds, work)
            used = cpu_seconds(server.pid) - cpu
            results[label] = (n / seconds, used / max(n, 1) * 1e6)
            print(f"{label:<44}{n / seconds:8.0f} calls/s  (server CPU {used / max(n, 1) * 1e6:5.0f} µs each)")

        # run_clients hands each thread a plain Connection; DPoP threads keep their own.
        dpop_connections: dict[int, DpopConnection] = {}

        def dpop(i: int) -> DpopConnection:
            if i not in dpop_connections:
                _did, _jwt, key, token = accounts[i]
                dpop_connections[i] = DpopConnection(port, origin, key, token)
            return dpop_connections[i]

        def create_bearer(conn, i, n):
            did, jwt, _key, _token = accounts[i]
            conn.call("com.atproto.repo.createRecord", {"repo": did, "collection": COLLECTION, "record": post(n)}, jwt)

        def create_dpop(_conn, i, n):
            did = accounts[i][0]
            dpop(i).xrpc("com.atproto.repo.createRecord", {"repo": did, "collection": COLLECTION, "record": post(n)})

        def read_bearer(conn, i, n):
            conn.call("app.bsky.actor.getPreferences", token=accounts[i][1])

        def read_dpop(_conn, i, n):
            dpop(i).xrpc("app.bsky.actor.getPreferences")

        for clients in (1, 8):
            for name, bearer, with_dpop in [("createRecord", create_bearer, create_dpop),
                                            ("getPreferences", read_bearer, read_dpop)]:
                dpop_connections.clear()
                measure(f"{name}, {clients} client(s), session JWT:", clients, bearer)
                dpop_connections.clear()
                measure(f"{name}, {clients} client(s), OAuth DPoP:", clients, with_dpop)
                base = results[f"{name}, {clients} client(s), session JWT:"][1]
                extra = results[f"{name}, {clients} client(s), OAuth DPoP:"][1] - base
                print(f"{'  DPoP verification, server CPU per call:':<44}{extra:8.0f} µs")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    main(parser.parse_args().seconds)
