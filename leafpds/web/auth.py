"""
Sign-in with GitHub or Google, mounted under ``/auth/``:

``GET /auth/<provider>/login?redirect_uri=…&state=…``
    checks that ``redirect_uri`` is one the operator allow-listed (without
    one, the user ends on leafpds's own account page), remembers the request
    (10 minutes, single use, bound to this browser by a cookie) and sends the
    browser to the provider with leafpds's own state, PKCE and, for Google,
    a nonce.
``GET /auth/<provider>/callback``
    trades the provider's code for the user's identity.  A known identity
    goes straight back to the app; a new one gets the handle chooser.
``POST /auth/signup``
    the handle chooser's form: provisions the account (no password) and the
    identity mapping together, then goes back to the app.
``GET /auth/handle?handle=…``
    ``{handle, available, message}``: the chooser's check as the user types.
``POST /auth/exchange``
    the app trades the one-time ``code`` it was sent back with, and the same
    ``redirect_uri``, for ``{did, handle, accessJwt, refreshJwt}``.

Going back to the app means a redirect to its ``redirect_uri`` with its
``state`` and a one-time ``code``; tokens never appear in a URL.  A sign-in
started on the OAuth authorization page (``PendingLogin.resume``) goes back
there instead, signed in (:meth:`AuthorizePages.signed_in_elsewhere`).
"""

import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from leafpds.accounts.accounts import SignedIn
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
from leafpds.identity.handles import validate_new_handle
from leafpds.web import browser, incoming
from leafpds.web.layout import (
    escape,
    failure_page,
    form_fields,
    same_secret,
    send_json,
    send_page,
    send_redirect,
    with_query,
)

if TYPE_CHECKING:
    from leafpds.web.authorize import AuthorizePages

log = Logger()

# Ties a pending sign-in to the browser that started it (login CSRF).
COOKIE = b"leafpds_signin"
ACCOUNT_PAGE = "/account/"


@dataclass(frozen=True)
class Signup:
    """A new identity waiting for its owner to choose a handle."""

    identity: Identity
    browser: str
    redirect_uri: str
    app_state: str
    # The OAuth authorization request to go back to, if any (PendingLogin.resume).
    resume: str = ""


# Tells the chooser, as the user types, whether a handle can be had; the
# form works the same without it.
HANDLE_CHECK = """
const input = document.getElementById("handle"), status = document.getElementById("handle-status");
let timer;
input.addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    const answer = await fetch("/auth/handle?" + new URLSearchParams({handle: input.value}));
    const result = await answer.json();
    status.textContent = result.message;
    status.setAttribute("role", result.available ? "status" : "alert");
  }, 250);
});
"""


class AuthPages:
    app = Klein()

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        now = ctx.reactor.seconds
        self.providers = configured_providers(ctx.settings, now)
        # state -> (browser cookie, pending login)
        self.pending: Expiring[tuple[str, PendingLogin]] = Expiring(PENDING_LIFETIME, now)
        self.signups: Expiring[Signup] = Expiring(PENDING_LIFETIME, now)
        # Tickets whose account is being created right now (double submits).
        self.signing_up: set[str] = set()
        self.handoffs = HandOffCodes(now)
        #: The OAuth authorization page, which sign-ins started there go back to.
        self.authorize: "AuthorizePages | None" = None

    def resource(self) -> IResource:
        return self.app.resource()

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        return failure_page(request, failure)

    def error_page(self, request: IRequest, message: str, code: int = 400) -> bytes:
        content = f"<p role=alert>{escape(message)}</p><p><a href=\"{ACCOUNT_PAGE}\">Start again</a></p>"
        return send_page(request, "Sign-in failed", content, code)

    def _callback_url(self, provider: str) -> str:
        return f"{self.ctx.public_url}/auth/{provider}/callback"

    def _browser(self, request: IRequest) -> str:
        return incoming.cookie(request, COOKIE) or ""

    # -- the flow --------------------------------------------------------------

    async def begin(self, request: IRequest, pending: PendingLogin) -> bytes:
        """Remember ``pending`` for this browser and send it to the provider."""
        browser_id = self._browser(request) or secrets.token_urlsafe(24)
        state = self.pending.add((browser_id, pending))
        request.addCookie(
            COOKIE, browser_id.encode("ascii"), path=b"/auth/", httpOnly=True, sameSite="lax",
            secure=self.ctx.public_url.startswith("https:"),
        )
        try:
            url = await self.providers[pending.provider].authorize_url(
                self._callback_url(pending.provider), state, pending
            )
        except OAuthError as e:
            self.pending.take(state)
            return self.error_page(request, str(e), 502)
        return send_redirect(request, url)

    @app.route("/", methods=["GET"])
    def index(self, request: IRequest) -> bytes:
        """The sign-in page lives with the account pages."""
        return send_redirect(request, ACCOUNT_PAGE)

    @app.route("/<provider>/login", methods=["GET"])
    async def login(self, request: IRequest, provider: str) -> bytes:
        """Sign in and go back to an app (``redirect_uri``), or with none, to the account page."""
        if provider not in self.providers:
            return self.error_page(request, "This server does not offer that sign-in.", 404)
        redirect_uri = incoming.query_arg(request, "redirect_uri")
        if redirect_uri and redirect_uri not in self.ctx.settings.app_redirect_uris:
            return self.error_page(request, "The app asked to be sent back to an address this server does not allow.")
        pending = PendingLogin(
            provider, PKCE.generate(), secrets.token_urlsafe(24), redirect_uri, incoming.query_arg(request, "state")
        )
        return await self.begin(request, pending)

    @app.route("/<provider>/callback", methods=["GET"])
    async def callback(self, request: IRequest, provider: str) -> bytes:
        state = incoming.query_arg(request, "state")
        browser_id, pending = self.pending.take(state) or ("", None)
        if (
            pending is None
            or pending.provider != provider
            or not same_secret(browser_id, self._browser(request))
        ):
            return self.error_page(request, "This sign-in has expired or was already used. Please start again.")
        if incoming.query_arg(request, "error") or not incoming.query_arg(request, "code"):
            if pending.resume and self.authorize is not None:
                # Back to the authorization page, to sign in another way or deny.
                return self.authorize.resume(request, pending.resume)
            if not pending.redirect_uri:
                return self.error_page(request, "The sign-in was cancelled.")
            return self._back_to_app(request, pending.redirect_uri, pending.app_state, error="access_denied")
        try:
            identity = await self.providers[provider].identify(
                incoming.query_arg(request, "code"), self._callback_url(provider), pending
            )
        except OAuthError as e:
            log.warn("Sign-in with {provider} failed: {error}", provider=provider, error=str(e))
            return self.error_page(request, str(e), 502)
        if pending.link_to is not None:
            return await self._link(request, pending.link_to, identity)
        did = await self.ctx.accounts.did_for_identity(identity.provider, identity.subject)
        if did is not None:
            return await self._finish(request, did, pending.redirect_uri, pending.app_state, resume=pending.resume)
        if await self.ctx.accounts.email_in_use(identity.email):
            # Never joined by email alone: whoever holds the other account links it.
            return self.error_page(
                request,
                f"An account on this server already uses {identity.email}. If it is yours, sign in"
                f" to it and link {self.providers[provider].title} from its account page.",
                409,
            )
        ticket = self.signups.add(
            Signup(identity, browser_id, pending.redirect_uri, pending.app_state, pending.resume)
        )
        return self._chooser(request, ticket, identity.handle_hint + self.ctx.settings.handle_domain)

    async def _link(self, request: IRequest, did: str, identity: Identity) -> bytes:
        try:
            await self.ctx.accounts.link_identity(did, identity.provider, identity.subject)
        except XRPCError as e:
            return self.error_page(request, e.message, 409)
        return send_redirect(request, with_query(ACCOUNT_PAGE, {"done": f"linked-{identity.provider}"}))

    async def _finish(
        self,
        request: IRequest,
        did: str,
        redirect_uri: str,
        app_state: str,
        signed_in: SignedIn | None = None,
        resume: str = "",
    ) -> bytes:
        """Back to the OAuth authorization page, to the app with a hand-off code, or into the account page."""
        if resume and self.authorize is not None:
            return await self.authorize.signed_in_elsewhere(request, resume, did, signed_in)
        if redirect_uri:
            code = self.handoffs.issue(did, redirect_uri)
            return self._back_to_app(request, redirect_uri, app_state, code=code)
        try:
            signed_in = signed_in or await self.ctx.accounts.start_session(did)
        except XRPCError as e:
            return self.error_page(request, e.message, 403)
        browser.remember(request, self.ctx, signed_in)
        return send_redirect(request, ACCOUNT_PAGE)

    def _back_to_app(self, request: IRequest, redirect_uri: str, app_state: str, **params: str) -> bytes:
        if app_state:
            params["state"] = app_state
        return send_redirect(request, with_query(redirect_uri, params))

    def _chooser(self, request: IRequest, ticket: str, handle: str, problem: str = "") -> bytes:
        alert = f"<p role=alert id=problem>{escape(problem)}</p>" if problem else ""
        content = (
            "<p>Welcome! Choose the handle people will know you by.</p>"
            f"{alert}"
            '<form method="post" action="/auth/signup">'
            f'<input type="hidden" name="ticket" value="{escape(ticket)}">'
            '<label for="handle">Handle</label>'
            f'<input id="handle" name="handle" value="{escape(handle)}" required'
            ' autocomplete="username" spellcheck="false" autocapitalize="none"'
            ' aria-describedby="handle-hint handle-status problem">'
            f'<small id="handle-hint">It ends in <code>{escape(self.ctx.settings.handle_domain)}</code>.</small>'
            '<p id="handle-status" aria-live="polite"></p>'
            '<button type="submit">Create my account</button></form>'
        )
        return send_page(
            request, "Choose your handle", content, 400 if problem else 200, script=HANDLE_CHECK
        )

    def full_handle(self, handle: str) -> str:
        """``handle`` as typed, completed with this server's handle domain."""
        handle = handle.strip().lower()
        domain = self.ctx.settings.handle_domain
        return handle if not handle or handle.endswith(domain) else handle + domain

    @app.route("/handle", methods=["GET"])
    async def handle_available(self, request: IRequest) -> bytes:
        """``{handle, available, message}`` for the chooser's live check."""
        handle = self.full_handle(incoming.query_arg(request, "handle"))
        try:
            handle = validate_new_handle(handle, self.ctx.accounts.handle_domains)
            available = await self.ctx.accounts.did_for_handle(handle) is None
            message = f"{handle} is available." if available else f"{handle} is already taken."
        except XRPCError as e:
            available, message = False, e.message
        return send_json(request, 200, {"handle": handle, "available": available, "message": message})

    @app.route("/signup", methods=["POST"])
    async def signup(self, request: IRequest) -> bytes:
        form = form_fields(request)
        ticket = form.get("ticket", "")
        waiting = self.signups.get(ticket)
        if waiting is None or not same_secret(waiting.browser, self._browser(request)):
            return self.error_page(request, "This sign-up has expired or was already used. Please start again.")
        if ticket in self.signing_up:
            return self.error_page(request, "Your account is already being created.", 409)
        handle = self.full_handle(form.get("handle", ""))
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
        return await self._finish(
            request, signed_in.account.did, waiting.redirect_uri, waiting.app_state, signed_in, waiting.resume
        )

    @app.route("/exchange", methods=["POST"])
    async def exchange(self, request: IRequest) -> bytes:
        try:
            given = json.loads(request.content.read() or b"null")
        except ValueError:
            given = None
        if not isinstance(given, dict) or not all(
            isinstance(given.get(k), str) for k in ("code", "redirect_uri")
        ):
            return send_json(request, 400, {"error": "InvalidRequest", "message": "Expected {code, redirect_uri}"})
        did = self.handoffs.redeem(given["code"], given["redirect_uri"])
        if did is None:
            return send_json(request, 400, {
                "error": "InvalidGrant",
                "message": "The code is unknown, expired, already used, or for another redirect_uri",
            })
        try:
            signed_in = await self.ctx.accounts.start_session(did)
        except XRPCError as e:
            return send_json(request, e.status, e.to_json())
        return send_json(request, 200, {
            "did": did,
            "handle": signed_in.account.handle,
            "accessJwt": signed_in.tokens.access,
            "refreshJwt": signed_in.tokens.refresh,
        })
