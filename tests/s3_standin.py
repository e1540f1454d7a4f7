"""
A real S3-protocol server on loopback for the tests: moto in server mode,
as a process of its own, that checks every request's SigV4 signature
(``reset-auth``: only the set-up below goes unsigned); and a fault-injecting
TCP proxy to put in front of it.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from twisted.internet import protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol

from tests.harness import free_port

BUCKET = "leafpds-test"
REGION = "us-east-1"
ACCOUNT_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
})


class MotoServer:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "AWS_DEFAULT_REGION": REGION},
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"moto did not start; see {log_path}")
                time.sleep(0.1)
        self.access_key_id = self.secret_access_key = ""

    def _post(self, path: str, data: bytes = b"") -> None:
        request = urllib.request.Request(
            self.url + path, data=data, method="POST", headers={"content-type": "text/plain"}
        )
        urllib.request.urlopen(request, timeout=10).read()

    def client(self, access_key_id: str = "setup", secret: str = "setup") -> Any:
        return boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=access_key_id, aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          signature_version="s3v4",
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )

    def fresh(self) -> None:
        """
        Forget everything; make a user with S3 rights and the empty test
        bucket; from then on moto refuses any request not signed with the
        user's key (SignatureDoesNotMatch, InvalidAccessKeyId).
        """
        self._post("/moto-api/reset")
        self._post("/moto-api/reset-auth", b"4")  # the next four actions go unchecked
        iam = boto3.client("iam", endpoint_url=self.url, region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="leafpds")
        key = iam.create_access_key(UserName="leafpds")["AccessKey"]
        iam.put_user_policy(UserName="leafpds", PolicyName="s3", PolicyDocument=ACCOUNT_POLICY)
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.s3 = self.client(self.access_key_id, self.secret_access_key)
        self.s3.create_bucket(Bucket=BUCKET)

    def stop_checking_signatures(self) -> None:
        """Until the next ``fresh()``: moto cannot check presigned URLs' signatures."""
        self._post("/moto-api/reset-auth", b"inf")

    def keys(self) -> dict[str, bytes]:
        """Every object in the test bucket: key -> bytes (the oracle)."""
        listed = self.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        return {
            item["Key"]: self.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            for item in listed
        }

    def multipart_uploads(self) -> list[str]:
        return [u["Key"] for u in self.s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._log.close()


# --- the fault proxy -------------------------------------------------------------

SLOW_DOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    """
    A TCP proxy on loopback in front of ``target_port``.  ``fault(mode,
    count, skip)``: after ``skip`` connections that pass, the next ``count``
    connections (None: all) get the fault:

    - ``close``: closed as soon as the request starts (nothing answered);
    - ``503``: answered 503 SlowDown, as S3 does when it sheds load (or
      the ``answer`` status line and ``body`` given);
    - ``stall``: the request is read and never answered;
    - ``cut-request``: the first ``after`` bytes of the request go through,
      then the connection is cut (a partial upload);
    - ``cut-response``: the answer is cut after ``after`` bytes;
    - ``stall-response``: the answer stops after ``after`` bytes, the
      connection stays open;
    - ``slow-response``: the answer trickles, ``after`` bytes every 0.1 s.

    Connections open when a fault is set are cut, so none left in a client's
    pool slips past it.  The store under test should not reuse connections
    (``pool.persistent = False``) so that a connection is a request.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.answer = b""
        self.count: int | None = 0
        self.skip = 0
        self.after = 0
        self.connections = 0  # seen since the last fault()
        self.faulted = 0
        self.live: set[Any] = set()
        self.port: Any = None

    async def start(self) -> "FaultProxy":
        factory = protocol.Factory.forProtocol(_Incoming)
        factory.proxy = self
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def fault(
        self, mode: str, count: int | None = None, skip: int = 0, after: int = 0,
        answer: bytes = b"503 Slow Down", body: bytes = SLOW_DOWN,
    ) -> None:
        self.mode, self.count, self.skip, self.after = mode, count, skip, after
        self.answer = b"HTTP/1.1 %s\r\ncontent-type: application/xml\r\n" \
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (answer, len(body), body)
        self.connections = self.faulted = 0
        for connection in list(self.live):
            connection.transport.abortConnection()

    def heal(self) -> None:
        self.fault("pass", 0)

    def _mode_for_new_connection(self) -> str:
        self.connections += 1
        if self.connections <= self.skip or self.mode == "pass":
            return "pass"
        if self.count is not None and self.faulted >= self.count:
            return "pass"
        self.faulted += 1
        return self.mode

    async def stop(self) -> None:
        for connection in list(self.live):
            connection.transport.abortConnection()
        await self.port.stopListening()


class _Outgoing(protocol.Protocol):
    def __init__(self, incoming: "_Incoming") -> None:
        self.incoming = incoming
        self.sent = 0
        self.queue = b""
        self.drip: task.LoopingCall | None = None
        self.ended = False

    def _drip(self) -> None:
        piece, self.queue = self.queue[:self.incoming.proxy.after], self.queue[self.incoming.proxy.after:]
        self.incoming.transport.write(piece)
        if not self.queue and self.ended:
            self.drip.stop()
            self.incoming.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        incoming = self.incoming
        if incoming.mode == "slow-response":
            self.queue += data
            if self.drip is None:
                self.drip = task.LoopingCall(self._drip)
                self.drip.start(0.1)
            return
        if incoming.mode == "stall-response":
            room = max(incoming.proxy.after - self.sent, 0)
            self.sent += len(data)
            incoming.transport.write(data[:room])
            return
        if incoming.mode == "cut-response":
            room = incoming.proxy.after - self.sent
            if room <= len(data):
                incoming.transport.write(data[:max(room, 0)])
                incoming.cut()
                return
        self.sent += len(data)
        incoming.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self.ended = True
        if not self.queue:
            if self.drip is not None and self.drip.running:
                self.drip.stop()
            self.incoming.transport.loseConnection()


class _Incoming(protocol.Protocol):
    def connectionMade(self) -> None:
        self.proxy: FaultProxy = self.factory.proxy
        self.proxy.live.add(self)
        self.mode = self.proxy._mode_for_new_connection()
        self.received = 0
        self.pending: list[bytes] = []
        self.outgoing: _Outgoing | None = None
        if self.mode in ("pass", "cut-request", "cut-response", "stall-response", "slow-response"):
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.target_port)
            connectProtocol(endpoint, _Outgoing(self)).addCallbacks(self._connected, lambda _: self.cut())

    def _connected(self, outgoing: _Outgoing) -> None:
        self.outgoing = outgoing
        for data in self.pending:
            outgoing.transport.write(data)
        self.pending = []
        if not self.transport.connected:
            outgoing.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.mode == "close":
            self.cut()
        elif self.mode == "503":
            self.transport.write(self.proxy.answer)
            self.transport.loseConnection()
            self.mode = "answered"
        elif self.mode in ("stall", "answered"):
            pass
        else:
            if self.mode == "cut-request":
                room = self.proxy.after - self.received
                if room <= len(data):
                    self._forward(data[:max(room, 0)])
                    self.cut()
                    return
            self.received += len(data)
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        if self.outgoing is None:
            self.pending.append(data)
        else:
            self.outgoing.transport.write(data)

    def cut(self) -> None:
        self.transport.abortConnection()
        if self.outgoing is not None:
            self.outgoing.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        self.proxy.live.discard(self)
        if self.outgoing is not None:
            self.outgoing.transport.loseConnection()
