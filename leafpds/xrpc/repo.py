"""com.atproto.repo.*: writing and reading records."""

from pathlib import Path
from typing import IO, Any

from leafpds import syntax
from leafpds.blobs.spool import UploadSpool
from leafpds.db.space import refusal
from leafpds.errors import AuthenticationRequired, InvalidRequest, RecordNotFound
from leafpds.ipld import atjson, codec
from leafpds.ipld.cid import CID, InvalidCID, parse_cid
from leafpds.identity.plc import PLCError
from leafpds.lexicon import ValidationError, validate_record
from leafpds.repo import archive, reads
from leafpds.repo.transactor import UNSET, CommitResult, Write
from leafpds.tid import TIDClock
from leafpds.web import incoming
from leafpds.xrpc.auth import access, access_full
from leafpds.xrpc.ratelimit import WRITE_POINTS
from leafpds.xrpc.registry import XRPCContext, XRPCResponse, xrpc

MAX_APPLY_WRITES = 200

JSON = "application/json; charset=utf-8"

_rkeys = TIDClock()


def _cid_param(value: Any, name: str) -> CID | None:
    if value is None:
        return None
    try:
        return parse_cid(value)
    except InvalidCID:
        raise InvalidRequest(f"Invalid {name}: {value!r}") from None


async def _own_repo(ctx: XRPCContext, identifier: str) -> str:
    """Writes go only to the caller's own repo, named by DID or handle."""
    did = ctx.auth.did
    if identifier != did and (
        identifier.startswith("did:") or await ctx.app.accounts.did_for_handle(identifier) != did
    ):
        raise AuthenticationRequired("Invalid repo: you can only write to your own repo")
    return did


def _charge(ctx: XRPCContext, did: str, writes: list[Write]) -> None:
    points = sum(WRITE_POINTS[w.action] for w in writes)
    ctx.app.write_limits.consume(did, points, ctx.request)


def _prepare(
    ctx: XRPCContext, collection: str, rkey: str, record: Any, validate: bool | None
) -> tuple[dict, str | None]:
    """Check a record for writing; returns it (with ``$type``) and its validationStatus."""
    if not isinstance(record, dict):
        raise InvalidRequest("Record must be an object")
    record_type = record.get("$type", collection)
    if record_type != collection:
        raise InvalidRequest(f"Invalid $type: expected {collection}, got {record_type}")
    record = {**record, "$type": collection}
    status: str | None = None
    if validate is not False:
        lexicons = ctx.app.lexicons
        if lexicons.has_record(collection):
            try:
                validate_record(lexicons, collection, record, rkey)
            except ValidationError as e:
                raise InvalidRequest(f"Invalid {collection} record: {e}") from None
            status = "valid"
        elif validate:
            raise InvalidRequest(f"Lexicon not found: lex:{collection}")
        else:
            status = "unknown"
    return record, status


def _check_path(collection: str, rkey: str) -> None:
    try:
        syntax.validate_nsid(collection)
        syntax.validate_record_key(rkey)
    except syntax.InvalidSyntax as e:
        raise InvalidRequest(str(e)) from None


def _uri(did: str, collection: str, rkey: str) -> str:
    return f"at://{did}/{collection}/{rkey}"


def _commit_meta(result: CommitResult) -> dict[str, str]:
    return {"cid": result.cid.encode(), "rev": result.rev}


async def _write_one(ctx: XRPCContext, action: str, rkey: str, swap_record: Any = UNSET) -> dict[str, Any]:
    """createRecord and putRecord: one record, checked, charged, committed."""
    body = ctx.input
    did = await _own_repo(ctx, body["repo"])
    collection = body["collection"]
    _check_path(collection, rkey)
    record, status = _prepare(ctx, collection, rkey, body["record"], body.get("validate"))
    writes = [Write(action, collection, rkey, record, swap_record=swap_record)]
    _charge(ctx, did, writes)
    result = await ctx.app.transactor.apply_writes(did, writes, _cid_param(body.get("swapCommit"), "swapCommit"))
    answer = {"uri": _uri(did, collection, rkey), "cid": result.ops[0].cid.encode(), "commit": _commit_meta(result)}
    if status:
        answer["validationStatus"] = status
    return answer


@xrpc.procedure("com.atproto.repo.createRecord", auth=access)
async def create_record(ctx: XRPCContext) -> dict[str, Any]:
    return await _write_one(ctx, "create", ctx.input.get("rkey") or _rkeys.next())


@xrpc.procedure("com.atproto.repo.putRecord", auth=access)
async def put_record(ctx: XRPCContext) -> dict[str, Any]:
    body = ctx.input
    swap_record = _cid_param(body["swapRecord"], "swapRecord") if "swapRecord" in body else UNSET
    return await _write_one(ctx, "put", body["rkey"], swap_record)


@xrpc.procedure("com.atproto.repo.deleteRecord", auth=access)
async def delete_record(ctx: XRPCContext) -> dict[str, Any]:
    body = ctx.input
    did = await _own_repo(ctx, body["repo"])
    collection, rkey = body["collection"], body["rkey"]
    _check_path(collection, rkey)
    swap_record = _cid_param(body["swapRecord"], "swapRecord") if body.get("swapRecord") else UNSET
    writes = [Write("delete", collection, rkey, swap_record=swap_record)]
    _charge(ctx, did, writes)
    try:
        result = await ctx.app.transactor.apply_writes(
            did, writes, _cid_param(body.get("swapCommit"), "swapCommit")
        )
    except RecordNotFound:
        return {}  # as the reference: deleting what is not there changes nothing
    return {"commit": _commit_meta(result)}


_WRITE_TYPES = {
    "com.atproto.repo.applyWrites#create": "create",
    "com.atproto.repo.applyWrites#update": "update",
    "com.atproto.repo.applyWrites#delete": "delete",
}


@xrpc.procedure("com.atproto.repo.applyWrites", auth=access)
async def apply_writes(ctx: XRPCContext) -> dict[str, Any]:
    body = ctx.input
    did = await _own_repo(ctx, body["repo"])
    if len(body["writes"]) > MAX_APPLY_WRITES:
        raise InvalidRequest(f"Too many writes. Max: {MAX_APPLY_WRITES}")
    writes, statuses = [], []
    for item in body["writes"]:
        action = _WRITE_TYPES.get(item.get("$type"))
        if action is None:
            raise InvalidRequest(f"Invalid write type: {item.get('$type')!r}")
        collection = item["collection"]
        rkey = item.get("rkey") or _rkeys.next()
        _check_path(collection, rkey)
        if action == "delete":
            writes.append(Write("delete", collection, rkey))
            statuses.append(None)
            continue
        record, status = _prepare(ctx, collection, rkey, item.get("value"), body.get("validate"))
        writes.append(Write(action, collection, rkey, record))
        statuses.append(status)
    _charge(ctx, did, writes)
    result = await ctx.app.transactor.apply_writes(did, writes, _cid_param(body.get("swapCommit"), "swapCommit"))
    results = []
    for op, status in zip(result.ops, statuses):
        if op.action == "delete":
            results.append({"$type": "com.atproto.repo.applyWrites#deleteResult"})
            continue
        entry = {
            "$type": f"com.atproto.repo.applyWrites#{op.action}Result",
            "uri": _uri(did, op.collection, op.rkey),
            "cid": op.cid.encode(),
        }
        if status:
            entry["validationStatus"] = status
        results.append(entry)
    return {"commit": _commit_meta(result), "results": results}


@xrpc.query("com.atproto.repo.getRecord")
async def get_record(ctx: XRPCContext) -> XRPCResponse:
    params = ctx.params
    identifier, collection, rkey = params["repo"], params["collection"], params["rkey"]
    key = (identifier, collection, rkey)
    # The cache knows records by DID; a handle is resolved in the database.
    found = ctx.app.record_cache.get(key) if identifier.startswith("did:") else None
    did = identifier
    if found is None:
        did, found = await _read_record(ctx, key)
    wanted = _cid_param(params.get("cid"), "cid")
    if found is None or (wanted is not None and found[0] != wanted):
        raise RecordNotFound(f"Could not locate record: {_uri(did, collection, rkey)}")
    return XRPCResponse(found[1], JSON)


async def _read_record(
    ctx: XRPCContext, key: tuple[str, str, str]
) -> tuple[str, tuple[CID, bytes] | None]:
    """
    A record from the database, as its DID and its (CID, getRecord answer);
    a record named by DID is kept in the cache for the next read.
    """
    identifier, collection, rkey = key
    cache = ctx.app.record_cache
    ticket = cache.loading(key) if identifier.startswith("did:") else None
    answer = None
    try:
        repo, found = await ctx.app.record_reads.get(identifier, collection, rkey)
        if found is not None:
            cid, block = found
            uri = _uri(repo.did, collection, rkey)
            answer = cid, atjson.dumps({"uri": uri, "cid": cid.encode(), "value": codec.decode(block)})
    finally:
        if ticket is not None:
            cache.fill(key, ticket, answer)
    return repo.did, answer


@xrpc.query("com.atproto.repo.listRecords")
async def list_records(ctx: XRPCContext) -> dict[str, Any]:
    params = ctx.params
    limit = params["limit"]
    repo, rows = await ctx.app.db.read(
        reads.list_records,
        params["repo"],
        params["collection"],
        limit,
        params.get("cursor"),
        params.get("reverse", False),
    )
    answer: dict[str, Any] = {
        "records": [
            {"uri": _uri(repo.did, params["collection"], rkey), "cid": cid.encode(), "value": codec.decode(block)}
            for rkey, cid, block in rows
        ]
    }
    if len(rows) == limit:
        answer["cursor"] = rows[-1][0]
    return answer


@xrpc.query("com.atproto.repo.describeRepo")
async def describe_repo(ctx: XRPCContext) -> dict[str, Any]:
    repo, collections = await ctx.app.db.read(reads.describe, ctx.params["repo"])
    try:
        did_doc = await ctx.app.plc.resolve(repo.did)
    except PLCError:
        did_doc = {}  # the directory is unreachable: say so through handleIsCorrect
    return {
        "handle": repo.handle,
        "did": repo.did,
        "collections": collections,
        "handleIsCorrect": f"at://{repo.handle}" in did_doc.get("alsoKnownAs", []),
        "didDoc": did_doc,
    }


@xrpc.procedure("com.atproto.repo.importRepo", auth=access_full, raw_input=True)
async def import_repo(ctx: XRPCContext) -> None:
    """
    Replace the caller's repo with the CAR in the body (an account migrating
    in: it works while deactivated).  The body is spooled to disk as it
    arrives, held to --max-import-size (see :mod:`leafpds.xrpc.site`), then
    verified and swapped in all or nothing (:func:`leafpds.repo.archive.import_repo`).
    The imported history makes no firehose events, as on the official PDS.
    """
    content_type = (incoming.header(ctx.request, "content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/vnd.ipld.car":
        raise InvalidRequest(f"Wrong request encoding (Content-Type): {content_type or 'none'}")
    did = ctx.auth.did
    body = ctx.request.content
    if isinstance(body, UploadSpool):
        body.flush()
        if body.no_room is not None:
            ctx.app.db.space.filled(body.no_room)
            raise refusal()
        car: Path | IO[bytes] = body.path
    else:  # a site without a spool (embedding): Twisted's own buffer
        body.seek(0)
        car = body
    await archive.import_repo(ctx.app.db, did, car, scratch=ctx.app.blobs.spool_dir)
    ctx.app.record_cache.forget_repo(did)
