"""com.atproto.identity.*: handles, the credentials a DID document should name for this PDS, PLC operations."""

from typing import Any

from leafpds import syntax
from leafpds.accounts import plc_operations
from leafpds.accounts.accounts import account_by
from leafpds.errors import InvalidRequest, XRPCError
from leafpds.identity.plc import ATPROTO_KEY, PDS_SERVICE, PDS_TYPE
from leafpds.xrpc.auth import access, access_full, access_privileged
from leafpds.xrpc.registry import XRPCContext, xrpc


@xrpc.query("com.atproto.identity.resolveHandle")
async def resolve_handle(ctx: XRPCContext) -> dict[str, Any]:
    handle = syntax.normalize_handle(ctx.params["handle"])
    did = await ctx.app.accounts.resolve_local_handle(handle)
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


@xrpc.procedure("com.atproto.identity.refreshIdentity")
async def refresh_identity(ctx: XRPCContext) -> dict[str, Any]:
    """
    Re-read the identity of an account hosted here and announce it
    (``#identity``), e.g. after a did:web's owner changed its did.json.  No
    session is needed: the answer is what the public documents say, and
    the limit per account bounds the events anyone can cause.  The official
    PDS does not serve this method; the lexicon's errors are used.
    """
    identifier = ctx.input["identifier"]
    if identifier.startswith("did:"):
        did = identifier
        if await ctx.app.db.read(account_by, "did", did) is None:
            raise XRPCError(f"{did} has no account on this PDS", name="DidNotFound")
    else:
        did = await ctx.app.accounts.did_for_handle(syntax.normalize_handle(identifier))
        if did is None:
            raise XRPCError(f"{identifier} is not the handle of an account on this PDS", name="HandleNotFound")
    ctx.app.method_limits[ctx.nsid].consume(did, 1, ctx.request)
    handle, doc = await ctx.app.accounts.refresh_identity(did)
    return {"did": did, "handle": handle, "didDoc": doc}


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


# -- PLC operations: moving an account between PDSes (accounts/plc_operations.py) --


@xrpc.procedure("com.atproto.identity.requestPlcOperationSignature", auth=access_full)
async def request_plc_operation_signature(ctx: XRPCContext) -> None:
    ctx.app.method_limits[ctx.nsid].consume(ctx.auth.did, 1, ctx.request)
    await plc_operations.request_signature(ctx.app, ctx.auth.did)


@xrpc.procedure("com.atproto.identity.signPlcOperation", auth=access_full)
async def sign_plc_operation(ctx: XRPCContext) -> dict[str, Any]:
    body = ctx.input
    operation = await plc_operations.sign(ctx.app, ctx.auth.did, body.get("token"), body)
    return {"operation": operation}


@xrpc.procedure("com.atproto.identity.submitPlcOperation", auth=access_full)
async def submit_plc_operation(ctx: XRPCContext) -> None:
    await plc_operations.submit(ctx.app, ctx.auth.did, ctx.input["operation"])
