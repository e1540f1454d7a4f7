"""com.atproto.identity.*: handles."""

from typing import Any

from leafpds import syntax
from leafpds.errors import InvalidRequest, XRPCError
from leafpds.xrpc.auth import access_privileged
from leafpds.xrpc.registry import XRPCContext, xrpc


@xrpc.query("com.atproto.identity.resolveHandle")
async def resolve_handle(ctx: XRPCContext) -> dict[str, Any]:
    handle = syntax.normalize_handle(ctx.params["handle"])
    did = await ctx.app.accounts.did_for_handle(handle)
    if did is None and not _is_local(ctx, handle):
        did = await ctx.app.handle_resolver.resolve(handle)
    if did is None:
        raise XRPCError("Unable to resolve handle", name="HandleNotFound")
    return {"did": did}


def _is_local(ctx: XRPCContext, handle: str) -> bool:
    return handle.endswith(ctx.app.settings.handle_domain)


@xrpc.procedure("com.atproto.identity.updateHandle", auth=access_privileged)
async def update_handle(ctx: XRPCContext) -> None:
    handle = ctx.input["handle"]
    if not isinstance(handle, str):
        raise InvalidRequest("Input/handle must be a string")
    await ctx.app.accounts.update_handle(ctx.auth.did, handle)
