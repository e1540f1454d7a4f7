"""app.bsky.actor.*: the methods of the actor namespace served here, not by an AppView."""

from typing import Any

from leafpds.accounts import preferences
from leafpds.xrpc.auth import access, full_session
from leafpds.xrpc.registry import XRPCContext, xrpc


@xrpc.query("app.bsky.actor.getPreferences", auth=access)
async def get_preferences(ctx: XRPCContext) -> dict[str, Any]:
    rows = await ctx.app.db.read(preferences.read_unit, ctx.auth.did)
    full_access = full_session(ctx.auth)
    return {"preferences": preferences.visible(rows, full_access, ctx.app.reactor.seconds())}


@xrpc.procedure("app.bsky.actor.putPreferences", auth=access)
async def put_preferences(ctx: XRPCContext) -> None:
    # The body is lexicon-checked already: each preference is an object with a
    # $type, and the known types are valid.
    full_access = full_session(ctx.auth)
    rows = preferences.rows_to_store(ctx.input["preferences"], full_access)
    await ctx.app.db.write(preferences.replace_unit, ctx.auth.did, rows, full_access)
