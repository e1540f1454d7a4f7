"""
A PLC directory speaking the public directory's HTTP API, for development
and tests.

``POST /:did`` takes a signed operation; ``GET /:did`` answers the DID
document, ``/:did/data`` the state, ``/:did/log`` the operations in force,
``/:did/log/audit`` every operation with its CID, time and whether it was
nullified, ``/:did/log/last`` the latest one.  Each operation is checked as
the public directory checks it before anything is stored: its shape and
formats, the genesis operation hashing to the DID, ``prev`` naming an
operation in force, and the signature of a rotation key of that operation.

A ``prev`` that names an earlier operation than the latest forks the log.
The public directory's recovery rule applies: the fork is accepted if its
signer comes before the signer of the first operation it cuts off in the
rotation keys of the operation it forks from, within 72 hours of that first
operation; the operations cut off are then marked nullified.

The logs live in their own SQLite file, written by one writer thread, so
the submissions for a DID are checked and stored one after the other.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException

import leafpds
from leafpds.db.pool import Database
from leafpds.identity.plc import (
    LEGACY_CREATE,
    TOMBSTONE,
    PLCOperationError,
    check_structure,
    data_for,
    did_for_genesis,
    document_for,
    operation_cid,
    rotation_keys_of,
    validate_operation_shape,
    validate_plc_did,
    verify_operation,
)
from leafpds.ipld.cid import parse_cid
from leafpds.timestamps import iso_from_epoch

log = Logger()

RECOVERY_WINDOW_MS = 72 * 60 * 60 * 1000
# An operation is at most 4000 bytes of DAG-CBOR; its JSON is not much more.
MAX_BODY_BYTES = 64 * 1024

SCHEMA: list[str] = [
    # 1: the operation logs.  `seq` orders each DID's log (and all of them,
    # for an export); times are milliseconds since the epoch.
    """
    CREATE TABLE operations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        did TEXT NOT NULL,
        cid TEXT NOT NULL,
        operation TEXT NOT NULL,
        nullified INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        UNIQUE (did, cid)
    ) STRICT;
    CREATE INDEX operations_by_did ON operations (did, seq);
    """,
]


@dataclass(frozen=True)
class LogEntry:
    did: str
    operation: dict[str, Any]
    cid: str
    nullified: bool
    created_at: int  # milliseconds since the epoch

    def as_json(self) -> dict[str, Any]:
        """The entry as ``/:did/log/audit`` shows it."""
        return {
            "did": self.did,
            "operation": self.operation,
            "cid": self.cid,
            "nullified": self.nullified,
            "createdAt": _iso(self.created_at),
        }


def _iso(ms: int) -> str:
    # From whole milliseconds: a float of seconds could round 57 ms to 56.
    return iso_from_epoch(ms // 1000).removesuffix("000Z") + f"{ms % 1000:03d}Z"


def check_next_operation(did: str, log: list[LogEntry], op: dict[str, Any], at: int) -> list[str]:
    """
    Check that ``op`` may follow ``log`` (the operations in force, oldest
    first) at time ``at``; return the CIDs of the operations it nullifies.

    :raises PLCOperationError: saying why not.
    """
    if not log:
        if op["type"] == TOMBSTONE:
            raise PLCOperationError("a DID cannot start with a tombstone")
        if op["prev"] is not None:
            raise PLCOperationError("a genesis operation has prev null")
        verify_operation(op, rotation_keys_of(op))
        if did_for_genesis(op) != did:
            raise PLCOperationError(f"genesis operation hashes to {did_for_genesis(op)}, not {did}")
        return []

    if op["prev"] is None:
        raise PLCOperationError(f"{did} already exists: this operation needs a prev")
    prev = parse_cid(op["prev"]).encode()
    index = next((i for i, entry in enumerate(log) if entry.cid == prev), None)
    if index is None:
        raise PLCOperationError(f"prev {prev} is not an operation in force in the log of {did}")
    base, cut_off = log[index], log[index + 1:]
    if base.operation["type"] == TOMBSTONE:
        raise PLCOperationError(f"{did} is tombstoned")
    keys = rotation_keys_of(base.operation)
    if not cut_off:
        verify_operation(op, keys)
        return []

    # A fork: only a key of higher priority than the one that signed the
    # first operation cut off may make it, and only for 72 hours.
    disputed = verify_operation(cut_off[0].operation, keys)
    stronger = keys[:keys.index(disputed)]
    try:
        verify_operation(op, stronger)
    except PLCOperationError:
        raise PLCOperationError(
            f"prev {prev} is not the latest operation of {did}, and this operation is not "
            "signed by a rotation key of higher priority than the one it would override"
        ) from None
    if at <= log[-1].created_at:
        raise PLCOperationError("operations not correctly ordered (timestamp before the latest)")
    if at - cut_off[0].created_at > RECOVERY_WINDOW_MS:
        raise PLCOperationError("recovery operation outside of the 72-hour recovery window")
    return [entry.cid for entry in cut_off]


class PLCDirectory:
    """The operation logs, in their own SQLite file."""

    def __init__(self, path: Path, reactor: Any) -> None:
        self.reactor = reactor
        self.db = Database(path, readers=2, reactor=reactor)

    def open(self) -> None:
        """Create or migrate the schema and start the database threads."""
        self.db.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.db.migrate(SCHEMA)
        self.db.start()

    def close(self) -> None:
        self.db.close()

    async def submit(self, did: str, op: Any) -> LogEntry:
        """Check a new operation, as the public directory does, and add it to ``did``'s log."""
        validate_plc_did(did)
        validate_operation_shape(op)
        if op["type"] == LEGACY_CREATE:
            raise PLCOperationError("legacy create operations are no longer accepted")
        return await self.append(did, op)

    async def append(self, did: str, op: Any, at: float | None = None) -> LogEntry:
        """
        Add ``op`` to ``did``'s log if it may follow it, at ``at`` (seconds
        since the epoch; now by default).  This is the log's own rule only,
        without the formats :meth:`submit` enforces on new operations: it
        replays existing logs, legacy ``create`` operations included.
        """
        validate_plc_did(did)
        check_structure(op)
        when = self.reactor.seconds() if at is None else at
        return await self.db.write(_append, did, op, round(when * 1000))

    async def log(self, did: str, include_nullified: bool = False) -> list[LogEntry]:
        """``did``'s log, oldest first (empty for an unknown DID)."""
        return await self.db.read(_entries, did, include_nullified)

    async def last(self, did: str) -> LogEntry | None:
        """The latest operation in force, or None for an unknown DID."""
        return await self.db.read(_last, did)

    async def check(self) -> None:
        """Raise if the database cannot answer."""
        await self.db.read(lambda conn: conn.execute("SELECT 1").fetchone())


_COLUMNS = "did, operation, cid, nullified, created_at"


def _entry(row: tuple) -> LogEntry:
    did, operation, cid, nullified, created_at = row
    return LogEntry(did, json.loads(operation), cid, bool(nullified), created_at)


def _entries(conn: Any, did: str, include_nullified: bool) -> list[LogEntry]:
    where = "" if include_nullified else " AND nullified = 0"
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM operations WHERE did = ?{where} ORDER BY seq", (did,)
    ).fetchall()
    return [_entry(row) for row in rows]


def _last(conn: Any, did: str) -> LogEntry | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM operations WHERE did = ? AND nullified = 0 ORDER BY seq DESC LIMIT 1",
        (did,),
    ).fetchone()
    return _entry(row) if row is not None else None


def _append(conn: Any, did: str, op: dict[str, Any], at: int) -> LogEntry:
    """The unit of work that checks and stores one operation (in the writer thread)."""
    nullified = check_next_operation(did, _entries(conn, did, False), op, at)
    cid = operation_cid(op).encode()
    conn.execute(
        "INSERT INTO operations (did, cid, operation, created_at) VALUES (?, ?, ?, ?)",
        (did, cid, json.dumps(op), at),
    )
    conn.executemany(
        "UPDATE operations SET nullified = 1 WHERE did = ? AND cid = ?",
        [(did, nullified_cid) for nullified_cid in nullified],
    )
    return LogEntry(did, op, cid, False, at)


# -- HTTP ------------------------------------------------------------------------


def _json(request: IRequest, value: Any, code: int = 200, content_type: str = "application/json") -> bytes:
    request.setResponseCode(code)
    request.setHeader("content-type", content_type)
    request.setHeader("access-control-allow-origin", "*")
    return json.dumps(value).encode("utf-8")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class _NotFound(Exception):
    def __init__(self, did: str, tombstoned: bool = False) -> None:
        super().__init__(did)
        self.did = did
        self.tombstoned = tombstoned


class PLCServer:
    """The directory's HTTP API as a Klein app."""

    app = Klein()

    def __init__(self, directory: PLCDirectory) -> None:
        self.directory = directory

    async def _last(self, did: str, *, tombstone_ok: bool = False) -> dict[str, Any]:
        last = await self.directory.last(did)
        if last is None:
            raise _NotFound(did)
        if last.operation["type"] == TOMBSTONE and not tombstone_ok:
            raise _NotFound(did, tombstoned=True)
        return last.operation

    async def _log(self, did: str, include_nullified: bool) -> list[LogEntry]:
        entries = await self.directory.log(did, include_nullified)
        if not entries:
            raise _NotFound(did)
        return entries

    @app.route("/_health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        version = f"leafpds-plc {leafpds.__version__}"
        try:
            await self.directory.check()
        except Exception:
            log.failure("PLC directory health check failed")
            return _json(request, {"version": version, "error": "Service Unavailable"}, 503)
        return _json(request, {"version": version})

    @app.route("/<did>", methods=["POST"])
    async def submit(self, request: IRequest, did: str) -> bytes:
        body = request.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise PLCOperationError("request body too large")
        try:
            op = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise PLCOperationError("request body is not JSON") from None
        await self.directory.submit(did, op)
        return _json(request, {})

    @app.route("/<did>", methods=["GET"])
    async def document(self, request: IRequest, did: str) -> bytes:
        op = await self._last(did)
        return _json(request, document_for(did, op), content_type="application/did+ld+json")

    @app.route("/<did>/data", methods=["GET"])
    async def data(self, request: IRequest, did: str) -> bytes:
        return _json(request, data_for(did, await self._last(did)))

    @app.route("/<did>/log", methods=["GET"])
    async def log(self, request: IRequest, did: str) -> bytes:
        return _json(request, [entry.operation for entry in await self._log(did, False)])

    @app.route("/<did>/log/audit", methods=["GET"])
    async def audit(self, request: IRequest, did: str) -> bytes:
        return _json(request, [entry.as_json() for entry in await self._log(did, True)])

    @app.route("/<did>/log/last", methods=["GET"])
    async def last(self, request: IRequest, did: str) -> bytes:
        return _json(request, await self._last(did, tombstone_ok=True))

    # Handlers are tried in this order.
    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, {"message": failure.value.name}, failure.value.code)

    @app.handle_errors(_NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        # The public directory answers 404 for both; 410 tells a resolver
        # that a tombstoned DID is gone for good.
        if failure.value.tombstoned:
            return _json(request, {"message": f"DID not available: {failure.value.did}"}, 410)
        return _json(request, {"message": f"DID not registered: {failure.value.did}"}, 404)

    @app.handle_errors(PLCOperationError)
    def invalid(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, {"message": str(failure.value)}, 400)

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("PLC directory request failed", failure)
        return _json(request, {"message": "Internal Server Error"}, 500)


class PLCService(MultiService):
    """
    The directory listening on an endpoint.  ``listening`` fires with the
    port (also kept in ``port``) once it listens, or fails if it cannot.
    """

    port: IListeningPort | None = None

    def __init__(self, listen: str, data_dir: Path, reactor: Any) -> None:
        super().__init__()
        self.listen = listen
        self.reactor = reactor
        self.directory = PLCDirectory(data_dir / "plc.sqlite", reactor)
        self.site = Site(PLCServer(self.directory).app.resource())
        self.site.noisy = False
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        self.directory.open()
        super().startService()
        d = serverFromString(self.reactor, self.listen).listen(self.site)
        d.addCallbacks(self._listening, self.listening.errback)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info(
            "PLC directory listening on {listen}, data in {path}",
            listen=self.listen,
            path=str(self.directory.db.path.resolve()),
        )
        self.listening.callback(port)

    def stopService(self) -> Deferred:
        d = maybeDeferred(super().stopService)
        port, self.port = self.port, None
        if port is not None:
            d.addCallback(lambda _: port.stopListening())
        d.addBoth(self._close)
        return d

    def _close(self, result: Any) -> Any:
        self.directory.close()
        return result


def make_plc_service(listen: str, data_dir: Path, reactor: Any) -> PLCService:
    """The directory as a Twisted service: its data in ``data_dir/plc.sqlite``."""
    return PLCService(listen, data_dir, reactor)
