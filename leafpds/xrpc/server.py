"""com.atproto.server.*: the server's description, accounts and sessions."""

import secrets
from typing import Any

from leafpds.timestamps import now_iso
from leafpds.xrpc.auth import admin
from leafpds.xrpc.registry import XRPCContext, xrpc


@xrpc.query("com.atproto.server.describeServer")
async def describe_server(ctx: XRPCContext) -> dict[str, Any]:
    settings = ctx.app.settings
    links = {}
    if settings.privacy_policy_url:
        links["privacyPolicy"] = settings.privacy_policy_url
    if settings.terms_of_service_url:
        links["termsOfService"] = settings.terms_of_service_url
    contact = {"email": settings.contact_email} if settings.contact_email else {}
    return {
        "did": settings.service_did,
        "availableUserDomains": [settings.handle_domain],
        "inviteCodeRequired": False,
        "phoneVerificationRequired": False,
        "links": links,
        "contact": contact,
    }


def _new_invite_code(hostname: str) -> str:
    # The reference PDS's shape: <hostname with dashes>-xxxxx-xxxxx.
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    part = lambda: "".join(secrets.choice(alphabet) for _ in range(5))  # noqa: E731
    return f"{hostname.replace('.', '-')}-{part()}-{part()}"


def _store_invite_codes(conn: Any, rows: list[tuple[str, int, str]], now: str) -> None:
    conn.executemany(
        "INSERT INTO invite_codes (code, available_uses, for_account, created_by, created_at)"
        " VALUES (?, ?, ?, 'admin', ?)",
        [(code, uses, account, now) for code, uses, account in rows],
    )


@xrpc.procedure("com.atproto.server.createInviteCode", auth=admin)
async def create_invite_code(ctx: XRPCContext) -> dict[str, Any]:
    code = _new_invite_code(ctx.app.settings.hostname)
    account = ctx.input.get("forAccount", "admin")
    await ctx.app.db.write(_store_invite_codes, [(code, ctx.input["useCount"], account)], now_iso())
    return {"code": code}


@xrpc.procedure("com.atproto.server.createInviteCodes", auth=admin)
async def create_invite_codes(ctx: XRPCContext) -> dict[str, Any]:
    hostname = ctx.app.settings.hostname
    count = ctx.input.get("codeCount", 1)
    uses = ctx.input["useCount"]
    accounts = ctx.input.get("forAccounts") or ["admin"]
    result = [
        {"account": account, "codes": [_new_invite_code(hostname) for _ in range(count)]}
        for account in accounts
    ]
    rows = [(code, uses, entry["account"]) for entry in result for code in entry["codes"]]
    await ctx.app.db.write(_store_invite_codes, rows, now_iso())
    return {"codes": result}
