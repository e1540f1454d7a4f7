"""
A signed-in browser on leafpds's own account pages.

The cookie holds the access JWT of an ordinary full session (the same kind
``createSession`` starts), so signing out, revocation and expiry work as for
any session.  It is HttpOnly and SameSite=Lax, scoped to ``/account/``, and
every form on those pages also carries a token bound to the session
(:meth:`TokenIssuer.form_token`) against cross-site requests.
"""

from twisted.web.iweb import IRequest

from leafpds.accounts.accounts import SignedIn
from leafpds.accounts.sessions import ACCESS, ACCESS_LIFETIME, AccessCredentials
from leafpds.app import AppContext
from leafpds.errors import XRPCError
from leafpds.web import incoming

COOKIE = b"leafpds_account"
PATH = b"/account/"


def remember(request: IRequest, ctx: AppContext, signed_in: SignedIn) -> None:
    """Sign this browser in to the account pages with ``signed_in``'s session."""
    _set(request, ctx, signed_in.tokens.access.encode("ascii"), ACCESS_LIFETIME)


def forget(request: IRequest, ctx: AppContext) -> None:
    _set(request, ctx, b"", 0)


def signed_in(request: IRequest, ctx: AppContext) -> AccessCredentials | None:
    """The session this browser is signed in with, if it is current and full."""
    token = incoming.cookie(request, COOKIE)
    if not token:
        return None
    try:
        credentials = ctx.tokens.verify_access(token)
    except XRPCError:
        return None
    # App passwords sign apps in; they never manage the account.
    return credentials if credentials.scope == ACCESS else None


def _set(request: IRequest, ctx: AppContext, value: bytes, max_age: int) -> None:
    request.addCookie(
        COOKIE,
        value,
        path=PATH,
        max_age=str(max_age),
        httpOnly=True,
        sameSite="lax",
        secure=ctx.public_url.startswith("https:"),
    )
