"""
Auth verifiers, declared on handlers with ``auth=...``.

Each takes the :class:`XRPCContext` and returns the caller's credentials or
raises the error the reference PDS answers with.

The ``access`` verifiers take a session's access token (``Bearer``) or an
OAuth access token with its proof (``DPoP``, :mod:`leafpds.oauth.access`).
An OAuth caller is no app password: what it may do is its grant's scope,
which XRPC checks per call once the input is read
(:func:`leafpds.oauth.requirements.check_call`; blobs, the proxy and
service auth where the type or audience is known).
"""

import base64
import hmac
from dataclasses import dataclass

from leafpds.accounts.sessions import AccessCredentials, RefreshCredentials
from leafpds.errors import AuthenticationRequired, AuthMissing, InvalidToken, XRPCError
from leafpds.oauth.access import DpopCaller, ResourceRefusal, check_dpop_call
from leafpds.oauth.errors import InvalidDpopProof
from leafpds.oauth.requirements import OAuthForbidden, names_grant_for
from leafpds.oauth.scopes import Permissions
from leafpds.web import incoming
from leafpds.xrpc.registry import XRPCContext


@dataclass(frozen=True)
class AdminCredentials:
    pass


def authorization(ctx: XRPCContext) -> tuple[str, str] | None:
    """The (scheme, value) of the Authorization header, scheme lower-cased."""
    header = incoming.header(ctx.request, "authorization")
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    return scheme.lower(), value.strip()


async def admin(ctx: XRPCContext) -> AdminCredentials:
    """HTTP Basic ``admin:<--admin-password>``."""
    found = authorization(ctx)
    if found is None:
        raise AuthMissing("Authentication Required")
    scheme, value = found
    if scheme != "basic":
        raise InvalidToken("Unexpected authorization type")
    try:
        username, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken("Malformed basic auth") from None
    expected = ctx.app.settings.admin_password
    # Compare both parts in constant time, and refuse everything when no admin
    # password is configured.
    ok = hmac.compare_digest(username.encode(), b"admin") & hmac.compare_digest(
        password.encode(), (expected or "").encode()
    )
    if not (expected and ok):
        raise AuthenticationRequired("Invalid admin credentials")
    return AdminCredentials()


def _bearer(ctx: XRPCContext) -> str:
    found = authorization(ctx)
    if found is None:
        raise AuthMissing("Authentication Required")
    scheme, value = found
    if scheme != "bearer" or not value:
        raise InvalidToken("Unexpected authorization type")
    return value


#: Whoever an ``access`` verifier let in.
Caller = AccessCredentials | DpopCaller


async def access(ctx: XRPCContext) -> Caller:
    """A valid access token: a full session, any app password, or an OAuth grant."""
    found = authorization(ctx)
    if found is None:
        raise AuthMissing("Authentication Required")
    scheme, value = found
    if scheme == "dpop":
        return _dpop(ctx, value)
    if scheme != "bearer" or not value:
        raise InvalidToken("Unexpected authorization type")
    try:
        return ctx.app.tokens.verify_access(value)
    except InvalidToken:
        # Checked only once the token failed as a session's: no cost to sessions.
        if ctx.app.oauth.access.grant_of(value) is not None:
            raise InvalidToken("DPoP-bound access token presented as a Bearer token") from None
        raise


def _dpop(ctx: XRPCContext, token: str) -> DpopCaller:
    """
    An OAuth caller: the token and its proof for this request (``htu`` the
    public URL of the path).  Every answer to such a request carries the
    next nonce; a refusal is 401 with ``WWW-Authenticate: DPoP``.
    """
    request, oauth = ctx.request, ctx.app.oauth
    nonce = oauth.next_nonce()
    if nonce is not None:
        request.setHeader("dpop-nonce", nonce)
    try:
        try:
            proof = incoming.header(request, "dpop")
        except XRPCError as e:
            raise ResourceRefusal(InvalidDpopProof(e.message)) from None
        url = ctx.app.public_url + incoming.path(request)
        return check_dpop_call(oauth.access, oauth.dpop, token, proof, request.method.decode("ascii"), url)
    except ResourceRefusal as refusal:
        request.setHeader("www-authenticate", refusal.www_authenticate)
        raise


async def access_or_admin_optional(ctx: XRPCContext) -> Caller | AdminCredentials | None:
    """
    For the sync reads anyone may make: no ``Authorization`` is an anonymous
    caller (None); an access token (``Bearer``, ``DPoP``) or the admin's
    ``Basic`` must be valid, never ignored, as the official PDS answers.
    What the caller may read depends on who it is (:func:`is_self_or_admin`),
    so the answer varies with the header.
    """
    ctx.request.setHeader("vary", "authorization")
    found = authorization(ctx)
    if found is None:
        return None
    if found[0] == "basic":
        return await admin(ctx)
    return await access(ctx)


def is_self_or_admin(caller: Caller | AdminCredentials | None, did: str) -> bool:
    """Whether ``caller`` is the account ``did`` itself or the admin."""
    if isinstance(caller, AdminCredentials):
        return True
    return caller is not None and caller.did == did


def oauth_permissions(caller: Caller | None) -> Permissions | None:
    """What an OAuth caller's grant allows; None for a session (or no caller)."""
    return caller.permissions if isinstance(caller, DpopCaller) else None


def full_session(caller: Caller) -> bool:
    """Whether the caller signed in with the account's own password (neither app password nor OAuth)."""
    return isinstance(caller, AccessCredentials) and not caller.is_app_password


def _grant_may_call(ctx: XRPCContext, credentials: Caller) -> None:
    # OAuth reaches the methods kept to privileged credentials only where a
    # scope is stated for them (account and identity changes, checked per call).
    if isinstance(credentials, DpopCaller) and not names_grant_for(ctx.nsid):
        raise OAuthForbidden()


async def access_privileged(ctx: XRPCContext) -> Caller:
    """A full session, a privileged app password, or an OAuth grant where a scope allows the method."""
    credentials = await access(ctx)
    if isinstance(credentials, AccessCredentials) and not credentials.privileged:
        raise InvalidToken("Bad token scope")
    _grant_may_call(ctx, credentials)
    return credentials


async def access_full(ctx: XRPCContext) -> Caller:
    """
    A full session (managing app passwords needs the account's own
    password), or an OAuth grant where a scope allows the method (asking to
    change the email); what only the password may do is 403 ``Forbidden``
    to any grant, as the official PDS answers.
    """
    credentials = await access(ctx)
    if isinstance(credentials, AccessCredentials) and credentials.is_app_password:
        raise InvalidToken("Bad token scope")
    _grant_may_call(ctx, credentials)
    return credentials


async def refresh(ctx: XRPCContext) -> RefreshCredentials:
    return ctx.app.tokens.verify_refresh(_bearer(ctx))
