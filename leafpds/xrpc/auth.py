"""
Auth verifiers, declared on handlers with ``auth=...``.

Each takes the :class:`XRPCContext` and returns the caller's credentials or
raises the error the reference PDS answers with.
"""

import base64
import hmac
from dataclasses import dataclass

from leafpds.accounts.sessions import AccessCredentials, RefreshCredentials
from leafpds.errors import AuthenticationRequired, AuthMissing, InvalidToken
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


async def access(ctx: XRPCContext) -> AccessCredentials:
    """A valid access token: a full session or any app password."""
    return ctx.app.tokens.verify_access(_bearer(ctx))


async def access_privileged(ctx: XRPCContext) -> AccessCredentials:
    """A full session or a privileged app password."""
    credentials = await access(ctx)
    if not credentials.privileged:
        raise InvalidToken("Bad token scope")
    return credentials


async def access_full(ctx: XRPCContext) -> AccessCredentials:
    """A full session only: managing app passwords needs the account's own password."""
    credentials = await access(ctx)
    if credentials.is_app_password:
        raise InvalidToken("Bad token scope")
    return credentials


async def refresh(ctx: XRPCContext) -> RefreshCredentials:
    return ctx.app.tokens.verify_refresh(_bearer(ctx))
