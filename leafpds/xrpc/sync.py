"""com.atproto.sync.*: what relays and other services crawl."""

from typing import Any

from leafpds import syntax
from leafpds.errors import InvalidRequest
from leafpds.ipld.car import encode_car
from leafpds.ipld.cid import CID, InvalidCID, parse_cid
from leafpds.repo import reads
from leafpds.repo.archive import export_repo
from leafpds.xrpc.auth import access_or_admin_optional, is_self_or_admin
from leafpds.xrpc.registry import XRPCContext, XRPCResponse, XRPCStream, xrpc


def _list_repos(conn: Any, cursor: str | None, limit: int) -> list[tuple]:
    return conn.execute(
        "SELECT a.did, r.commit_cid, r.rev, a.status FROM repo_roots r"
        " JOIN accounts a ON a.did = r.did"
        " WHERE a.did > ? ORDER BY a.did LIMIT ?",
        (cursor or "", limit),
    ).fetchall()


@xrpc.query("com.atproto.sync.listRepos")
async def list_repos(ctx: XRPCContext) -> dict[str, Any]:
    limit = ctx.params["limit"]
    rows = await ctx.app.db.read(_list_repos, ctx.params.get("cursor"), limit)
    repos = []
    for did, commit_cid, rev, status in rows:
        repo = {"did": did, "head": CID(commit_cid).encode(), "rev": rev, "active": status == "active"}
        if status != "active":
            repo["status"] = status
        repos.append(repo)
    answer: dict[str, Any] = {"repos": repos}
    if len(rows) == limit:
        answer["cursor"] = rows[-1][0]
    return answer


CAR = "application/vnd.ipld.car"


def _did_param(value: str) -> str:
    try:
        syntax.validate_did(value)
    except syntax.InvalidSyntax as e:
        raise InvalidRequest(str(e)) from None
    return value


async def _available(ctx: XRPCContext, did: str) -> reads.RepoInfo:
    """The repo ``did`` if this caller may read it (see :func:`reads.find_available_repo`)."""
    return await ctx.app.db.read(reads.find_available_repo, did, is_self_or_admin(ctx.auth, did))


async def _export(ctx: XRPCContext, did: str, since: str | None) -> XRPCStream:
    await _available(ctx, did)  # errors before the first byte

    async def produce(write) -> None:
        await export_repo(ctx.app.db, ctx.app.reactor, did, write, since)

    return XRPCStream(CAR, produce)


@xrpc.query("com.atproto.sync.getRepo", auth=access_or_admin_optional)
async def get_repo(ctx: XRPCContext) -> XRPCStream:
    since = ctx.params.get("since")
    return await _export(ctx, _did_param(ctx.params["did"]), since)


@xrpc.query("com.atproto.sync.getCheckout", auth=access_or_admin_optional)
async def get_checkout(ctx: XRPCContext) -> XRPCStream:
    return await _export(ctx, _did_param(ctx.params["did"]), None)


@xrpc.query("com.atproto.sync.getLatestCommit", auth=access_or_admin_optional)
async def get_latest_commit(ctx: XRPCContext) -> dict[str, Any]:
    repo = await _available(ctx, _did_param(ctx.params["did"]))
    return {"cid": repo.commit_cid.encode(), "rev": repo.rev}


@xrpc.query("com.atproto.sync.getHead", auth=access_or_admin_optional)
async def get_head(ctx: XRPCContext) -> dict[str, Any]:
    repo = await _available(ctx, _did_param(ctx.params["did"]))
    return {"root": repo.commit_cid.encode()}


@xrpc.query("com.atproto.sync.getRepoStatus")
async def get_repo_status(ctx: XRPCContext) -> dict[str, Any]:
    repo = await ctx.app.db.read(reads.find_repo, _did_param(ctx.params["did"]))
    answer: dict[str, Any] = {"did": repo.did, "active": repo.status == "active"}
    if repo.status == "active":
        answer["rev"] = repo.rev
    else:
        answer["status"] = repo.status
    return answer


@xrpc.query("com.atproto.sync.getRecord", auth=access_or_admin_optional)
async def get_record_proof(ctx: XRPCContext) -> XRPCResponse:
    params = ctx.params
    did = _did_param(params["did"])
    root, blocks = await ctx.app.db.read(
        reads.record_proof, did, params["collection"], params["rkey"], is_self_or_admin(ctx.auth, did)
    )
    return XRPCResponse(encode_car(root, blocks), CAR)


@xrpc.query("com.atproto.sync.getBlocks", auth=access_or_admin_optional)
async def get_blocks(ctx: XRPCContext) -> XRPCResponse:
    try:
        cids = [parse_cid(value) for value in ctx.params["cids"]]
    except InvalidCID as e:
        raise InvalidRequest(str(e)) from None
    did = _did_param(ctx.params["did"])
    blocks = await ctx.app.db.read(reads.get_blocks, did, cids, is_self_or_admin(ctx.auth, did))
    return XRPCResponse(encode_car(None, blocks), CAR)
