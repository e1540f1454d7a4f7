"""com.atproto.identity.*: handles, and the credentials a DID document should name for this PDS."""

from typing import Any

from leafpds import syntax
from leafpds.errors import InvalidRequest, XRPCError
from leafpds.identity.plc import ATPROTO_KEY, PDS_SERVICE, PDS_TYPE
from leafpds.xrpc.auth import access, access_privileged
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


@xrpc.query("com.atproto.identity.getRecommendedDidCredentials", auth=access)
async def get_recommended_did_credentials(ctx: XRPCContext) -> dict[str, Any]:
    """
    What the account's DID document should hold for this PDS to serve it (a
    migration in publishes these): this PDS's rotation key, the account's
    signing key here, its handle, this PDS as its endpoint.
    """
    did = ctx.auth.did
    account = await ctx.app.accounts.get(did)
    key = await ctx.app.keys.signing_key(did)
    return {
        "alsoKnownAs": [f"at://{account.handle}"],
        "verificationMethods": {ATPROTO_KEY: key.did()},
        "rotationKeys": [ctx.app.accounts.rotation_key.did()],
        "services": {PDS_SERVICE: {"type": PDS_TYPE, "endpoint": ctx.app.public_url}},
    }
