"""com.atproto.server.*: the server's description, accounts and sessions."""

import secrets
from typing import Any

from leafpds.accounts import lifecycle
from leafpds.accounts.accounts import SignedIn
from leafpds.accounts.service_auth import is_privileged, is_protected, is_service_audience
from leafpds.accounts.service_jwt import verify_service_jwt
from leafpds.errors import AuthenticationRequired, InvalidRequest, XRPCError
from leafpds.accounts.sessions import ACCESS
from leafpds.timestamps import now_iso
from leafpds.oauth.requirements import check_rpc
from leafpds.xrpc.auth import Caller, access, access_full, access_privileged, admin, authorization, oauth_permissions, refresh
from leafpds.xrpc.ratelimit import client_ip
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
        "did": ctx.app.service_did,
        "availableUserDomains": [settings.handle_domain],
        "inviteCodeRequired": settings.invite_required,
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


async def _did_doc(ctx: XRPCContext, did: str) -> dict[str, Any] | None:
    # The document is a convenience in these answers: an unreachable PLC
    # directory or did:web host must not stop anyone from logging in.
    return await ctx.app.dids.resolve(did)


async def _session_answer(ctx: XRPCContext, signed_in: SignedIn) -> dict[str, Any]:
    account = signed_in.account
    answer: dict[str, Any] = {
        "accessJwt": signed_in.tokens.access,
        "refreshJwt": signed_in.tokens.refresh,
        "handle": account.handle,
        "did": account.did,
        "active": account.active,
    }
    did_doc = signed_in.did_doc or await _did_doc(ctx, account.did)
    if did_doc is not None:
        answer["didDoc"] = did_doc
    if account.email and signed_in.scope == ACCESS:
        answer["email"] = account.email
        answer["emailConfirmed"] = account.email_confirmed
    if not account.active:
        answer["status"] = account.status
    return answer


@xrpc.procedure("com.atproto.server.createAccount")
async def create_account(ctx: XRPCContext) -> dict[str, Any]:
    body = ctx.input
    did = body.get("did")
    if not ctx.app.settings.password_signup:
        # Migrations in too: anyone can mint a DID and sign its service JWT,
        # so one would be a way around the operator's choice.
        if did:
            raise InvalidRequest(
                "This server accepts no accounts moving in: it creates accounts only through sign-in"
                " with GitHub or Google"
            )
        raise InvalidRequest("This server creates accounts only through sign-in with GitHub or Google")
    did_doc = await _migrating_in(ctx, did) if did else None
    if "email" not in body:
        raise InvalidRequest("Email is required")
    if "password" not in body:
        raise XRPCError("Password is required", name="InvalidPassword")
    signed_in = await ctx.app.accounts.create(
        body["handle"],
        body["email"],
        body["password"],
        body.get("inviteCode"),
        invite_required=ctx.app.settings.invite_required,
        did=did or None,
        did_doc=did_doc,
    )
    answer = await _session_answer(ctx, signed_in)
    return {k: answer[k] for k in ("accessJwt", "refreshJwt", "handle", "did", "didDoc") if k in answer}


async def _migrating_in(ctx: XRPCContext, did: str) -> dict[str, Any] | None:
    """
    An account arriving from another PDS with its DID: the caller must
    bring a service JWT from ``did`` for this PDS and this method, signed
    with the DID's current key (the old PDS's getServiceAuth).  Returns the
    DID's document.
    """
    found = authorization(ctx)
    if found is None or found[0] != "bearer" or not found[1]:
        raise AuthenticationRequired(f"Missing auth to create account with did: {did}")
    resolve = ctx.app.dids.resolve
    claims = await verify_service_jwt(
        found[1],
        aud=ctx.app.service_did,
        lxm="com.atproto.server.createAccount",
        resolve=resolve,
        now=ctx.app.reactor.seconds(),
    )
    if claims.iss != did:
        raise AuthenticationRequired(f"Auth doesn't match DID: {did}")
    return await resolve(did)


@xrpc.procedure("com.atproto.server.createSession")
async def create_session(ctx: XRPCContext) -> dict[str, Any]:
    ctx.app.login_limits.consume(ctx.input["identifier"].strip().lower(), 1, ctx.request)
    signed_in = await ctx.app.accounts.sign_in(ctx.input["identifier"], ctx.input["password"])
    return await _session_answer(ctx, signed_in)


@xrpc.procedure("com.atproto.server.refreshSession", auth=refresh)
async def refresh_session(ctx: XRPCContext) -> dict[str, Any]:
    signed_in = await ctx.app.accounts.refresh(ctx.auth)
    answer = await _session_answer(ctx, signed_in)
    answer.pop("email", None)
    answer.pop("emailConfirmed", None)
    return answer


@xrpc.query("com.atproto.server.getSession", auth=access)
async def get_session(ctx: XRPCContext) -> dict[str, Any]:
    account = await ctx.app.accounts.get(ctx.auth.did)
    answer: dict[str, Any] = {"handle": account.handle, "did": account.did, "active": account.active}
    did_doc = await _did_doc(ctx, account.did)
    if did_doc is not None:
        answer["didDoc"] = did_doc
    if account.email and _shows_email(ctx.auth):
        answer["email"] = account.email
        answer["emailConfirmed"] = account.email_confirmed
    if not account.active:
        answer["status"] = account.status
    return answer


def _shows_email(caller: Caller) -> bool:
    """A full session sees the account's email; an OAuth grant with ``transition:email`` or ``account:email``."""
    permissions = oauth_permissions(caller)
    if permissions is None:
        return caller.scope == ACCESS
    return permissions.allows_account("email", "read")


@xrpc.procedure("com.atproto.server.deleteSession", auth=refresh)
async def delete_session(ctx: XRPCContext) -> None:
    await ctx.app.accounts.sign_out(ctx.auth)


@xrpc.procedure("com.atproto.server.createAppPassword", auth=access_full)
async def create_app_password(ctx: XRPCContext) -> dict[str, Any]:
    return await ctx.app.accounts.create_app_password(
        ctx.auth.did, ctx.input["name"], ctx.input.get("privileged", False)
    )


@xrpc.query("com.atproto.server.listAppPasswords", auth=access_privileged)
async def list_app_passwords(ctx: XRPCContext) -> dict[str, Any]:
    return {"passwords": await ctx.app.accounts.list_app_passwords(ctx.auth.did)}


@xrpc.procedure("com.atproto.server.revokeAppPassword", auth=access_full)
async def revoke_app_password(ctx: XRPCContext) -> None:
    await ctx.app.accounts.revoke_app_password(ctx.auth.did, ctx.input["name"])


# getServiceAuth's limits on a requested expiry, in seconds from now.
SERVICE_TOKEN_MAX_LIFETIME = 60 * 60
SERVICE_TOKEN_MAX_LIFETIME_WITHOUT_METHOD = 60


@xrpc.query("com.atproto.server.getServiceAuth", auth=access)
async def get_service_auth(ctx: XRPCContext) -> dict[str, Any]:
    # The checks come in the official PDS's order, so a request with several
    # faults gets the error it would get there.
    aud, exp, lxm = ctx.params["aud"], ctx.params.get("exp"), ctx.params.get("lxm")
    if not is_service_audience(aud):
        raise InvalidRequest("aud must be a valid atproto DID or did#serviceId reference")
    permissions = oauth_permissions(ctx.auth)
    if permissions is not None:
        # A grant's own rule (a method-less token is one for every method).
        check_rpc(permissions, lxm or "*", aud)
    elif lxm is not None and is_privileged(lxm) and not ctx.auth.privileged:
        raise InvalidRequest(
            f"insufficient access to request a service auth token for the following method: {lxm}"
        )
    if exp is not None:
        ahead = exp - ctx.app.reactor.seconds()
        if ahead < 0:
            raise XRPCError("expiration is in past", name="BadExpiration")
        if ahead > SERVICE_TOKEN_MAX_LIFETIME:
            raise XRPCError(
                "cannot request a token with an expiration more than an hour in the future",
                name="BadExpiration",
            )
        if lxm is None and ahead > SERVICE_TOKEN_MAX_LIFETIME_WITHOUT_METHOD:
            raise XRPCError(
                "cannot request a method-less token with an expiration more than a minute in the future",
                name="BadExpiration",
            )
    if lxm is not None and is_protected(lxm):
        raise InvalidRequest(
            f"cannot request a service auth token for the following protected method: {lxm}"
        )
    return {"token": await ctx.app.service_auth.token(ctx.auth.did, aud, lxm, exp)}


# -- email: codes mailed to the account's address (accounts/account_email.py) --


def _limit(ctx: XRPCContext, key: str) -> None:
    ctx.app.method_limits[ctx.nsid].consume(key, 1, ctx.request)


@xrpc.procedure("com.atproto.server.requestEmailConfirmation", auth=access)
async def request_email_confirmation(ctx: XRPCContext) -> None:
    _limit(ctx, ctx.auth.did)
    await ctx.app.account_email.request_confirmation(ctx.auth.did)


@xrpc.procedure("com.atproto.server.confirmEmail", auth=access)
async def confirm_email(ctx: XRPCContext) -> None:
    await ctx.app.account_email.confirm(ctx.auth.did, ctx.input["email"], ctx.input["token"])


@xrpc.procedure("com.atproto.server.requestEmailUpdate", auth=access_full)
async def request_email_update(ctx: XRPCContext) -> dict[str, Any]:
    _limit(ctx, ctx.auth.did)
    return {"tokenRequired": await ctx.app.account_email.request_update(ctx.auth.did)}


@xrpc.procedure("com.atproto.server.updateEmail", auth=access_full)
async def update_email(ctx: XRPCContext) -> None:
    await ctx.app.account_email.update(ctx.auth.did, ctx.input["email"], ctx.input.get("token"))


@xrpc.procedure("com.atproto.server.requestPasswordReset")
async def request_password_reset(ctx: XRPCContext) -> None:
    # Answered alike whether or not an account has the address (the official
    # PDS says 400 when none has: that tells anyone which addresses do).
    _limit(ctx, client_ip(ctx.request))
    await ctx.app.account_email.request_password_reset(ctx.input["email"])


@xrpc.procedure("com.atproto.server.resetPassword")
async def reset_password(ctx: XRPCContext) -> None:
    _limit(ctx, client_ip(ctx.request))
    await ctx.app.account_email.reset_password(ctx.input["token"], ctx.input["password"])


# -- the account's lifecycle (accounts/lifecycle.py) ------------------------------


@xrpc.procedure("com.atproto.server.deactivateAccount", auth=access_full)
async def deactivate_account(ctx: XRPCContext) -> None:
    await lifecycle.deactivate(ctx.app, ctx.auth.did, ctx.input.get("deleteAfter"))


@xrpc.procedure("com.atproto.server.activateAccount", auth=access_full)
async def activate_account(ctx: XRPCContext) -> None:
    await lifecycle.activate(ctx.app, ctx.auth.did)


@xrpc.query("com.atproto.server.checkAccountStatus", auth=access)
async def check_account_status(ctx: XRPCContext) -> dict[str, Any]:
    return await lifecycle.check_status(ctx.app, ctx.auth.did)


@xrpc.procedure("com.atproto.server.requestAccountDelete", auth=access_full)
async def request_account_delete(ctx: XRPCContext) -> None:
    _limit(ctx, ctx.auth.did)
    await lifecycle.request_delete(ctx.app, ctx.auth.did)


@xrpc.procedure("com.atproto.server.deleteAccount")
async def delete_account(ctx: XRPCContext) -> None:
    # No session needed: the password and the mailed code are the proof.
    _limit(ctx, client_ip(ctx.request))
    body = ctx.input
    await lifecycle.delete(ctx.app, body["did"], body["password"], body["token"].strip())
