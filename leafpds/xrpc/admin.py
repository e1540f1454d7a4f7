"""
com.atproto.admin.*: the operator's methods, all behind HTTP Basic
``admin:<--admin-password>``.  The logic is in :mod:`leafpds.admin`; the
registry has validated params and bodies by the lexicons already.
"""

from typing import Any

from leafpds.admin import actions, takedowns, views
from leafpds.xrpc.auth import admin
from leafpds.xrpc.registry import XRPCContext, xrpc


@xrpc.query("com.atproto.admin.getAccountInfo", auth=admin)
async def get_account_info(ctx: XRPCContext) -> dict[str, Any]:
    return await ctx.app.db.read(views.account_view, ctx.params["did"])


@xrpc.query("com.atproto.admin.getAccountInfos", auth=admin)
async def get_account_infos(ctx: XRPCContext) -> dict[str, Any]:
    return {"infos": await ctx.app.db.read(views.account_views, ctx.params["dids"])}


@xrpc.query("com.atproto.admin.searchAccounts", auth=admin)
async def search_accounts(ctx: XRPCContext) -> dict[str, Any]:
    params = ctx.params
    accounts, cursor = await ctx.app.db.read(
        views.search_accounts, params.get("email"), params["limit"], params.get("cursor")
    )
    return {"accounts": accounts, **({"cursor": cursor} if cursor else {})}


@xrpc.query("com.atproto.admin.getInviteCodes", auth=admin)
async def get_invite_codes(ctx: XRPCContext) -> dict[str, Any]:
    params = ctx.params
    codes, cursor = await ctx.app.db.read(
        views.list_invite_codes, params["sort"], params["limit"], params.get("cursor")
    )
    return {"codes": codes, **({"cursor": cursor} if cursor else {})}


@xrpc.procedure("com.atproto.admin.disableInviteCodes", auth=admin)
async def disable_invite_codes(ctx: XRPCContext) -> None:
    body = ctx.input
    await ctx.app.db.write(views.disable_invite_codes, body.get("codes", []), body.get("accounts", []))


@xrpc.procedure("com.atproto.admin.enableAccountInvites", auth=admin)
async def enable_account_invites(ctx: XRPCContext) -> None:
    await ctx.app.db.write(views.set_invites_disabled, ctx.input["account"], False)


@xrpc.procedure("com.atproto.admin.disableAccountInvites", auth=admin)
async def disable_account_invites(ctx: XRPCContext) -> None:
    await ctx.app.db.write(views.set_invites_disabled, ctx.input["account"], True)


@xrpc.query("com.atproto.admin.getSubjectStatus", auth=admin)
async def get_subject_status(ctx: XRPCContext) -> dict[str, Any]:
    params = ctx.params
    subject = takedowns.subject_from_params(params.get("did"), params.get("uri"), params.get("blob"))
    return await ctx.app.db.read(takedowns.status_unit, subject)


@xrpc.procedure("com.atproto.admin.updateSubjectStatus", auth=admin)
async def update_subject_status(ctx: XRPCContext) -> dict[str, Any]:
    body = ctx.input
    subject = takedowns.subject_from_ref(body["subject"])
    takedown = body.get("takedown")
    if takedown is not None:
        await actions.update_subject_status(ctx.app, subject, takedown["applied"], takedown.get("ref"))
    # As the official PDS: the subject and takedown as given.
    return {"subject": body["subject"], **({"takedown": takedown} if takedown is not None else {})}


@xrpc.procedure("com.atproto.admin.updateAccountHandle", auth=admin)
async def update_account_handle(ctx: XRPCContext) -> None:
    await actions.update_handle(ctx.app, ctx.input["did"], ctx.input["handle"])


@xrpc.procedure("com.atproto.admin.updateAccountEmail", auth=admin)
async def update_account_email(ctx: XRPCContext) -> None:
    await actions.update_email(ctx.app, ctx.input["account"], ctx.input["email"])


@xrpc.procedure("com.atproto.admin.updateAccountPassword", auth=admin)
async def update_account_password(ctx: XRPCContext) -> None:
    await actions.update_password(ctx.app, ctx.input["did"], ctx.input["password"])


@xrpc.procedure("com.atproto.admin.updateAccountSigningKey", auth=admin)
async def update_account_signing_key(ctx: XRPCContext) -> None:
    await actions.update_signing_key(ctx.app, ctx.input["did"], ctx.input["signingKey"])


@xrpc.procedure("com.atproto.admin.deleteAccount", auth=admin)
async def delete_account(ctx: XRPCContext) -> None:
    await actions.delete_account(ctx.app, ctx.input["did"])


@xrpc.procedure("com.atproto.admin.sendEmail", auth=admin)
async def send_email(ctx: XRPCContext) -> dict[str, Any]:
    body = ctx.input
    subject = body.get("subject") or "Message via your account provider"
    await ctx.app.account_email.send_message(body["recipientDid"], subject, body["content"])
    return {"sent": True}
