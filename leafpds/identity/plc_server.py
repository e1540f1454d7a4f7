"""
A PLC directory speaking the public directory's HTTP API, for development
and tests: ``POST /:did`` takes a signed operation, ``GET /:did`` answers the
DID document, ``/:did/data``, ``/:did/log``, ``/:did/log/audit`` and
``/:did/log/last`` the rest.  Every operation is validated as the public
directory does before it is stored: shape and formats, the genesis hash
matching the DID, ``prev`` naming the latest operation, and a signature by a
current rotation key.  (The public directory also lets a higher-priority
rotation key fork the log within 72 hours; this one refuses forks.)
"""

import json
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.application.service import MultiService
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from leafpds import syntax
from leafpds.identity.plc import (
    LEGACY_CREATE,
    TOMBSTONE,
    PLCOperationError,
    did_for_genesis,
    document_for,
    operation_cid,
    rotation_keys_of,
    validate_operation_shape,
    verify_operation,
)
from leafpds.timestamps import now_iso

log = Logger()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    did TEXT NOT NULL,
    seq INTEGER NOT NULL,
    cid TEXT NOT NULL,
    operation TEXT NOT NULL,
    nullified INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    PRIMARY KEY (did, seq)
) STRICT
"""


class UnknownDID(LookupError):
    pass


def _submit(conn: Any, did: str, op: Any) -> None:
    """Validate and append ``op`` to ``did``'s log (runs in the pool's one connection)."""
    validate_operation_shape(op)
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            "SELECT seq, cid, operation FROM operations WHERE did = ? AND nullified = 0 ORDER BY seq DESC LIMIT 1",
            (did,),
        ).fetchall()
        if not rows:
            if op.get("prev") is not None:
                raise PLCOperationError("genesis operation must have prev null")
            if op["type"] == TOMBSTONE:
                raise PLCOperationError("a DID cannot start with a tombstone")
            if did_for_genesis(op) != did:
                raise PLCOperationError("genesis operation does not hash to this DID")
            verify_operation(op, rotation_keys_of(op))
            seq = 1
        else:
            last_seq, last_cid, last_json = rows[0]
            last = json.loads(last_json)
            if last["type"] == TOMBSTONE:
                raise PLCOperationError("DID is tombstoned")
            if op["type"] == LEGACY_CREATE:
                raise PLCOperationError("a legacy create operation can only start a log")
            if op.get("prev") != last_cid:
                raise PLCOperationError("prev does not name the latest operation (forks are refused)")
            verify_operation(op, rotation_keys_of(last))
            seq = last_seq + 1
        conn.execute(
            "INSERT INTO operations (did, seq, cid, operation, created_at) VALUES (?, ?, ?, ?, ?)",
            (did, seq, operation_cid(op).encode(), json.dumps(op), now_iso()),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _log(conn: Any, did: str) -> list[tuple]:
    rows = conn.execute(
        "SELECT cid, operation, nullified, created_at FROM operations WHERE did = ? ORDER BY seq", (did,)
    ).fetchall()
    if not rows:
        raise UnknownDID(did)
    return rows


class PLCDirectory:
    """The operation logs, in their own SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection: submissions are serialized, which also serializes
        # each DID's log.
        self.pool = adbapi.ConnectionPool(
            "sqlite3", database=str(path), isolation_level=None, check_same_thread=False,
            cp_min=1, cp_max=1, cp_noisy=False, cp_openfun=_open,
        )

    async def submit(self, did: str, op: Any) -> None:
        await self.pool.runWithConnection(_submit, did, op)

    async def log(self, did: str) -> list[tuple]:
        return await self.pool.runWithConnection(_log, did)

    def close(self) -> None:
        self.pool.close()


def _open(conn: Any) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(_SCHEMA)


def _json(request: IRequest, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader("content-type", "application/json; charset=utf-8")
    request.setHeader("access-control-allow-origin", "*")
    return json.dumps(value).encode()


class PLCServer:
    app = Klein()

    def __init__(self, directory: PLCDirectory) -> None:
        self.directory = directory

    async def _ops(self, request: IRequest, did: str) -> list[tuple] | None:
        try:
            syntax.validate_did(did)
            return await self.directory.log(did)
        except (syntax.InvalidSyntax, UnknownDID):
            return None

    @app.route("/_health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        return _json(request, {"version": "leafpds-plc"})

    @app.route("/<did>", methods=["POST"])
    async def submit(self, request: IRequest, did: str) -> bytes:
        try:
            syntax.validate_did(did)
            if not did.startswith("did:plc:"):
                raise PLCOperationError("not a did:plc")
            op = json.loads(request.content.read())
            await self.directory.submit(did, op)
        except (ValueError, syntax.InvalidSyntax) as e:  # PLCOperationError is a ValueError
            return _json(request, {"message": f"Invalid operation: {e}"}, 400)
        return _json(request, {})

    @app.route("/<did>", methods=["GET"])
    async def document(self, request: IRequest, did: str) -> bytes:
        ops = await self._ops(request, did)
        if ops is None:
            return _json(request, {"message": f"DID not registered: {did}"}, 404)
        last = json.loads(ops[-1][1])
        if last["type"] == TOMBSTONE:
            return _json(request, {"message": f"DID not available: {did}"}, 410)
        request.setHeader("content-type", "application/did+ld+json")
        return json.dumps(document_for(did, last)).encode()

    @app.route("/<did>/data", methods=["GET"])
    async def data(self, request: IRequest, did: str) -> bytes:
        ops = await self._ops(request, did)
        if ops is None:
            return _json(request, {"message": f"DID not registered: {did}"}, 404)
        last = json.loads(ops[-1][1])
        if last["type"] == TOMBSTONE:
            return _json(request, {"message": f"DID not available: {did}"}, 410)
        data = {k: v for k, v in last.items() if k not in ("type", "prev", "sig")}
        return _json(request, {"did": did, **data})

    @app.route("/<did>/log", methods=["GET"])
    async def log(self, request: IRequest, did: str) -> bytes:
        ops = await self._ops(request, did)
        if ops is None:
            return _json(request, {"message": f"DID not registered: {did}"}, 404)
        return _json(request, [json.loads(op) for _cid, op, nullified, _at in ops if not nullified])

    @app.route("/<did>/log/audit", methods=["GET"])
    async def audit(self, request: IRequest, did: str) -> bytes:
        ops = await self._ops(request, did)
        if ops is None:
            return _json(request, {"message": f"DID not registered: {did}"}, 404)
        return _json(request, [
            {"did": did, "operation": json.loads(op), "cid": cid, "nullified": bool(nullified), "createdAt": at}
            for cid, op, nullified, at in ops
        ])

    @app.route("/<did>/log/last", methods=["GET"])
    async def last(self, request: IRequest, did: str) -> bytes:
        ops = await self._ops(request, did)
        if ops is None:
            return _json(request, {"message": f"DID not registered: {did}"}, 404)
        return _json(request, json.loads(ops[-1][1]))


class PLCService(MultiService):
    """The directory listening on an endpoint; ``listening`` fires with the port."""

    port: IListeningPort | None = None

    def __init__(self, listen: str, data_dir: Path, reactor: Any) -> None:
        super().__init__()
        self.listen = listen
        self.reactor = reactor
        self.directory = PLCDirectory(data_dir / "plc.sqlite")
        self.site = Site(PLCServer(self.directory).app.resource())
        self.site.noisy = False
        self.listening: Deferred = Deferred()

    def startService(self) -> None:
        super().startService()
        d = serverFromString(self.reactor, self.listen).listen(self.site)

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            log.info("PLC directory listening on {listen}", listen=self.listen)
            self.listening.callback(port)
            return port

        d.addCallbacks(listening, self.listening.errback)

    def stopService(self) -> Any:
        d = super().stopService()
        port, self.port = self.port, None
        if port is not None:
            stopped = port.stopListening()
            stopped.addBoth(lambda _: self.directory.close())
            return stopped
        self.directory.close()
        return d


def make_plc_service(listen: str, data_dir: Path, reactor: Any) -> PLCService:
    return PLCService(listen, data_dir, reactor)
