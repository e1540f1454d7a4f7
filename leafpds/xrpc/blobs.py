"""Blobs over XRPC: uploading, serving, listing."""

import re
from collections.abc import Callable
from typing import Any

from leafpds.blobs import index, sniff
from leafpds.blobs.spool import UploadSpool
from leafpds.blobs.store import MissingBlobFile
from leafpds.errors import InternalServerError, InvalidRequest, RangeNotSatisfiable
from leafpds.ipld.cid import CID, InvalidCID, parse_cid
from leafpds.oauth.requirements import check_blob
from leafpds.repo import reads
from leafpds.web import incoming
from leafpds.xrpc.auth import access, access_or_admin_optional, is_self_or_admin, oauth_permissions
from leafpds.xrpc.registry import ANSWERED, Answered, XRPCContext, XRPCStream, xrpc

#: Bytes read from the store per write to the client.
CHUNK = 256 * 1024


def _cid(value: str, name: str) -> CID:
    try:
        return parse_cid(value)
    except InvalidCID:
        raise InvalidRequest(f"Invalid {name}: {value!r}") from None


def _cursor(ctx: XRPCContext) -> CID | None:
    cursor = ctx.params.get("cursor")
    return _cid(cursor, "cursor") if cursor is not None else None


@xrpc.procedure("com.atproto.repo.uploadBlob", auth=access, raw_input=True)
async def upload_blob(ctx: XRPCContext) -> dict[str, Any]:
    spool = ctx.request.content
    if not isinstance(spool, UploadSpool):
        # XRPCSite streams uploadBlob bodies into a spool; nothing else does.
        raise InternalServerError("Uploads are not configured on this server")
    content_type = incoming.header(ctx.request, "content-type")
    permissions = oauth_permissions(ctx.auth)
    if permissions is not None:
        # The type the blob will be stored as, as the grant names types.
        check_blob(permissions, sniff.mime_type(spool.head, content_type))
    blob = await ctx.app.blobs.upload(ctx.auth.did, spool, content_type)
    return {"blob": blob}


def _find_blob(conn: Any, did: str, cid: CID, self_or_admin: bool) -> tuple[str, int]:
    reads.find_available_repo(conn, did, self_or_admin)
    found = index.served_blob(conn, did, cid)
    if found is None:
        raise InvalidRequest("Blob not found")
    return found


@xrpc.query("com.atproto.sync.getBlob", auth=access_or_admin_optional)
async def get_blob(ctx: XRPCContext) -> XRPCStream | Answered:
    did, cid = ctx.params["did"], _cid(ctx.params["cid"], "cid")
    mime_type, size = await ctx.app.db.read(_find_blob, did, cid, is_self_or_admin(ctx.auth, did))
    store = ctx.app.blobs.store
    url = store.redirect_url(did, cid, mime_type)
    if url is not None:
        # --s3-presigned-get: the client fetches the bytes from S3 itself.
        request = ctx.request
        request.setResponseCode(302)
        request.setHeader("location", url.encode("ascii"))
        request.setHeader("content-length", "0")
        # The URL expires; the blob does not.
        request.setHeader("cache-control", "private, no-store")
        return ANSWERED
    request = ctx.request
    try:
        span = byte_range(incoming.header(request, "range"), incoming.header(request, "if-range"), size)
    except RangeNotSatisfiable:
        request.setHeader("content-range", f"bytes */{size}")
        raise
    offset, length = span if span is not None else (0, size)
    try:
        # The store reads only the span: from S3, a GET with the same Range.
        reader = await store.open(did, cid, offset, length if span is not None else None)
    except MissingBlobFile:
        raise InvalidRequest("Blob not found") from None
    if span is not None:
        request.setResponseCode(206)
        request.setHeader("content-range", f"bytes {offset}-{offset + length - 1}/{size}")
    request.setHeader("accept-ranges", "bytes")
    request.setHeader("content-length", str(length))
    request.setHeader("x-content-type-options", "nosniff")
    request.setHeader("content-security-policy", "default-src 'none'; sandbox")

    async def produce(write: Callable[[bytes], Any]) -> None:
        try:
            while chunk := await reader.read(CHUNK):
                paused = write(chunk)
                if paused is not None:
                    await paused
        finally:
            await reader.close()

    return XRPCStream(mime_type, produce)


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(value: str | None, if_range: str | None, size: int) -> tuple[int, int] | None:
    """
    The (offset, length) a ``Range`` header asks for, or None for the whole
    blob: no header, one that is not a single byte range (several ranges,
    another unit, malformed: ignoring it is allowed, RFC 9110 14.2), an
    ``If-Range`` (leafpds sends no validators for it to match), an empty
    blob.  Raises 416 ``RangeNotSatisfiable`` for a range past the end.
    """
    if value is None or if_range is not None or size == 0:
        return None
    match = _RANGE.fullmatch(value.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        wanted = int(last)
        if wanted == 0:
            raise _unsatisfiable(size)
        return max(0, size - wanted), min(wanted, size)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise _unsatisfiable(size)
    end = min(int(last), size - 1) if last else size - 1
    return start, end - start + 1


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"Range not satisfiable: the blob has {size} bytes")


def _list_blobs(
    conn: Any, did: str, self_or_admin: bool, since: str | None, limit: int, cursor: CID | None
) -> list[CID]:
    reads.find_available_repo(conn, did, self_or_admin)
    return index.list_blobs(conn, did, since, limit, cursor)


@xrpc.query("com.atproto.sync.listBlobs", auth=access_or_admin_optional)
async def list_blobs(ctx: XRPCContext) -> dict[str, Any]:
    params = ctx.params
    cids = await ctx.app.db.read(
        _list_blobs, params["did"], is_self_or_admin(ctx.auth, params["did"]),
        params.get("since"), params["limit"], _cursor(ctx),
    )
    answer: dict[str, Any] = {"cids": [cid.encode() for cid in cids]}
    if cids:
        # As the reference: the last CID, even on a short page.
        answer["cursor"] = cids[-1].encode()
    return answer


@xrpc.query("com.atproto.repo.listMissingBlobs", auth=access)
async def list_missing_blobs(ctx: XRPCContext) -> dict[str, Any]:
    did = ctx.auth.did
    rows = await ctx.app.db.read(index.list_missing, did, ctx.params["limit"], _cursor(ctx))
    answer: dict[str, Any] = {
        "blobs": [
            {"cid": cid.encode(), "recordUri": f"at://{did}/{collection}/{rkey}"}
            for cid, collection, rkey in rows
        ]
    }
    if rows:
        answer["cursor"] = rows[-1][0].encode()
    return answer
