"""com.atproto.sync.*: what relays and other services crawl."""

from typing import Any

from leafpds.ipld.cid import CID
from leafpds.xrpc.registry import XRPCContext, xrpc


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
