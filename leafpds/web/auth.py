"""
Sign-in with GitHub or Google, mounted under ``/auth/``:

``GET /auth/<provider>/login?redirect_uri=…&state=…``
    checks that ``redirect_uri`` is one the operator allow-listed, remembers
    the request (10 minutes, single use, bound to this browser by a cookie)
    and sends the browser to the provider with leafpds's own state, PKCE
    and, for Google, a nonce.
``GET /auth/<provider>/callback``
    trades the provider's code for the user's identity.  A known identity
    goes straight back to the app; a new one gets the handle chooser.
``POST /auth/signup``
    the handle chooser's form: provisions the account (no password) and the
    identity mapping together, then goes back to the app.
``POST /auth/exchange``
    the app trades the one-time ``code`` it was sent back with, and the same
    ``redirect_uri``, for ``{did, handle, accessJwt, refreshJwt}``.

Going back to the app means a redirect to its ``redirect_uri`` with its
``state`` and a one-time ``code``; tokens never appear in a URL.
"""

import html
import json
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from leafpds.accounts.oauth import (
    PENDING_LIFETIME,
    Expiring,
    HandOffCodes,
    Identity,
    OAuthError,
    PendingLogin,
    PKCE,
    configured_providers,
)
from leafpds.app import AppContext
from leafpds.errors import XRPCError

log = Logger()

HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"
# Ties a pending sign-in to the browser that started it (login CSRF).
COOKIE = b"leafpds_signin"


@dataclass(frozen=True)
class Signup:
    """A new identity waiting for its owner to choose a handle."""

    identity: Identity
    browser: str
    redirect_uri: str
    app_state: str


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to whatever query it already has."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def page(title: str, content: str) -> bytes:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · leafpds</title></head>\n"
        f"<body><main><h1>{html.escape(title)}</h1>\n{content}\n</main></body></html>\n"
    ).encode("utf-8")


class AuthPages:
    app = Klein()

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.providers = configured_providers(ctx.settings)
        now = ctx.reactor.seconds
        # state -> (browser cookie, pending login)
        self.pending: Expiring[tuple[str, PendingLogin]] = Expiring(PENDING_LIFETIME, now)
        self.signups: Expiring[Signup] = Expiring(PENDING_LIFETIME, now)
        # Tickets whose account is being created right now (double submits).
        self.signing_up: set[str] = set()
        self.handoffs = HandOffCodes(now)

    def resource(self) -> IResource:
        return self.app.resource()

    # -- answers ---------------------------------------------------------------

    def _page(self, request: IRequest, title: str, content: str, code: int = 200) -> bytes:
        data = page(title, content)
        request.setResponseCode(code)
        request.setHeader("content-type", HTML)
        request.setHeader("content-length", str(len(data)))
        request.setHeader("cache-control", "no-store")
        return data

    def _error_page(self, request: IRequest, message: str, code: int = 400) -> bytes:
        return self._page(request, "Sign-in failed", f"<p role=alert>{html.escape(message)}</p>", code)

    def _redirect(self, request: IRequest, url: str) -> bytes:
        request.setResponseCode(302)
        request.setHeader("location", url.encode("utf-8"))
        request.setHeader("cache-control", "no-store")
        request.setHeader("content-length", "0")
        return b""

    def _back_to_app(self, request: IRequest, redirect_uri: str, app_state: str, **params: str) -> bytes:
        if app_state:
            params["state"] = app_state
        return self._redirect(request, with_query(redirect_uri, params))

    def _callback_url(self, provider: str) -> str:
        return f"{self.ctx.public_url}/auth/{provider}/callback"

    def _browser(self, request: IRequest) -> str:
        value = request.getCookie(COOKIE)
        return value.decode("ascii", "replace") if value else ""

    # -- the flow --------------------------------------------------------------

    @app.route("/<provider>/login", methods=["GET"])
    async def login(self, request: IRequest, provider: str) -> bytes:
        chosen = self.providers.get(provider)
        if chosen is None:
            return self._error_page(request, "This server does not offer that sign-in.", 404)
        redirect_uri = _arg(request, "redirect_uri")
        if redirect_uri not in self.ctx.settings.app_redirect_uris:
            return self._error_page(request, "The app asked to be sent back to an address this server does not allow.")
        pending = PendingLogin(
            provider, PKCE.generate(), secrets.token_urlsafe(24), redirect_uri, _arg(request, "state")
        )
        browser = self._browser(request) or secrets.token_urlsafe(24)
        state = self.pending.add((browser, pending))
        request.addCookie(
            COOKIE, browser.encode("ascii"), path=b"/auth/", httpOnly=True, sameSite="lax",
            secure=self.ctx.public_url.startswith("https:"),
        )
        try:
            url = await chosen.authorize_url(self._callback_url(provider), state, pending)
        except OAuthError as e:
            self.pending.take(state)
            return self._error_page(request, str(e), 502)
        return self._redirect(request, url)

    @app.route("/<provider>/callback", methods=["GET"])
    async def callback(self, request: IRequest, provider: str) -> bytes:
        state = _arg(request, "state")
        browser, pending = self.pending.take(state) or ("", None)
        if (
            pending is None
            or pending.provider != provider
            or not _same(browser, self._browser(request))
        ):
            return self._error_page(request, "This sign-in has expired or was already used. Please start again.")
        if _arg(request, "error") or not _arg(request, "code"):
            return self._back_to_app(request, pending.redirect_uri, pending.app_state, error="access_denied")
        try:
            identity = await self.providers[provider].identify(
                _arg(request, "code"), self._callback_url(provider), pending
            )
        except OAuthError as e:
            log.warn("Sign-in with {provider} failed: {error}", provider=provider, error=str(e))
            return self._error_page(request, str(e), 502)
        did = await self.ctx.accounts.did_for_identity(identity.provider, identity.subject)
        if did is not None:
            code = self.handoffs.issue(did, pending.redirect_uri)
            return self._back_to_app(request, pending.redirect_uri, pending.app_state, code=code)
        ticket = self.signups.add(Signup(identity, browser, pending.redirect_uri, pending.app_state))
        return self._chooser(request, ticket, identity.handle_hint + self.ctx.settings.handle_domain)

    def _chooser(self, request: IRequest, ticket: str, handle: str, problem: str = "") -> bytes:
        alert = f'<p role=alert id=problem>{html.escape(problem)}</p>' if problem else ""
        described = ' aria-describedby="problem"' if problem else ""
        content = (
            "<p>Welcome! Choose the handle people will know you by.</p>"
            f"{alert}"
            '<form method="post" action="/auth/signup">'
            f'<input type="hidden" name="ticket" value="{html.escape(ticket)}">'
            '<label for="handle">Handle</label> '
            f'<input id="handle" name="handle" value="{html.escape(handle)}" required'
            f' autocomplete="username" spellcheck="false"{described}> '
            f"<small>ending in {html.escape(self.ctx.settings.handle_domain)}</small> "
            '<button type="submit">Create my account</button></form>'
        )
        return self._page(request, "Choose your handle", content, 400 if problem else 200)

    @app.route("/signup", methods=["POST"])
    async def signup(self, request: IRequest) -> bytes:
        form = _form(request)
        ticket = form.get("ticket", "")
        waiting = self.signups.get(ticket)
        if waiting is None or not _same(waiting.browser, self._browser(request)):
            return self._error_page(request, "This sign-up has expired or was already used. Please start again.")
        if ticket in self.signing_up:
            return self._error_page(request, "Your account is already being created.", 409)
        handle = form.get("handle", "").strip().lower()
        domain = self.ctx.settings.handle_domain
        if handle and not handle.endswith(domain):
            handle += domain
        identity = waiting.identity
        self.signing_up.add(ticket)
        try:
            signed_in = await self.ctx.accounts.create(
                handle, identity.email, None, oauth_identity=(identity.provider, identity.subject)
            )
        except XRPCError as e:
            return self._chooser(request, ticket, handle, e.message)
        finally:
            self.signing_up.discard(ticket)
        self.signups.take(ticket)
        code = self.handoffs.issue(signed_in.account.did, waiting.redirect_uri)
        return self._back_to_app(request, waiting.redirect_uri, waiting.app_state, code=code)

    @app.route("/exchange", methods=["POST"])
    async def exchange(self, request: IRequest) -> bytes:
        try:
            given = json.loads(request.content.read() or b"null")
        except ValueError:
            given = None
        if not isinstance(given, dict) or not all(
            isinstance(given.get(k), str) for k in ("code", "redirect_uri")
        ):
            return _json(request, 400, {"error": "InvalidRequest", "message": "Expected {code, redirect_uri}"})
        did = self.handoffs.redeem(given["code"], given["redirect_uri"])
        if did is None:
            return _json(request, 400, {
                "error": "InvalidGrant",
                "message": "The code is unknown, expired, already used, or for another redirect_uri",
            })
        try:
            signed_in = await self.ctx.accounts.start_session(did)
        except XRPCError as e:
            return _json(request, e.status, e.to_json())
        return _json(request, 200, {
            "did": did,
            "handle": signed_in.account.handle,
            "accessJwt": signed_in.tokens.access,
            "refreshJwt": signed_in.tokens.refresh,
        })


def _same(a: str, b: str) -> bool:
    return bool(a) and secrets.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _arg(request: IRequest, name: str) -> str:
    values = request.args.get(name.encode("ascii"))
    return values[0].decode("utf-8", "replace") if values else ""


def _form(request: IRequest) -> dict[str, str]:
    """
    The fields of a urlencoded form body.  Read here because the site never
    merges bodies into ``request.args`` (XRPC parameters are query-only).
    """
    content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    request.content.seek(0)
    pairs = parse_qsl(request.content.read().decode("utf-8", "replace"), keep_blank_values=True)
    return {name: value for name, value in reversed(pairs)}  # the first of repeated fields


def _json(request: IRequest, code: int, value: Any) -> bytes:
    data = json.dumps(value, separators=(",", ":")).encode("utf-8")
    request.setResponseCode(code)
    request.setHeader("content-type", JSON)
    request.setHeader("content-length", str(len(data)))
    request.setHeader("cache-control", "no-store")
    return data
