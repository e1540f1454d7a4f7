"""
The atproto OAuth authorization page, ``/oauth/authorize``: where a person
signs in and lets an app (an OAuth client) use their account.

``GET /oauth/authorize?request_uri=…&client_id=…``
    opens the request the client pushed (:mod:`leafpds.oauth.par`): once,
    for this browser.  An unknown, expired or used ``request_uri``, or one
    of another client, gets an error page: its redirect URI is not to be
    trusted.  The page offers the accounts already signed in on this
    browser, the configured providers (GitHub, Google) and a password.
``POST /oauth/authorize``
    the page's forms, told apart by ``action``: ``sign-in`` (a password),
    ``choose`` or ``forget`` (an account of the chooser), ``provider`` (off to GitHub or
    Google through :mod:`leafpds.web.auth`, which comes back here signed
    in: :meth:`AuthorizePages.signed_in_elsewhere`), then ``allow`` or
    ``deny`` on the consent screen.

Allow issues the code and sends the browser to the client's redirect URI
with ``code``, ``state`` and ``iss``; deny sends ``error=access_denied``
(RFC 6749 section 4.1.2).  A consent is remembered per account and client
when the person asks, so that the next authorization with no more scope
goes straight back (never for loopback development clients, whose name
nobody vouches for).  ``prompt`` is honoured: ``none`` answers
``login_required`` or ``consent_required`` rather than showing a page,
``login`` skips the chooser, ``consent`` always asks.

The browser carries one cookie here, a random device id (HttpOnly,
SameSite=Lax, path ``/oauth``), which the server maps to the accounts
signed in on it (:mod:`leafpds.oauth.devices`: a password sign-in when the
person ticks "remember", a provider's always, for a week); an opened request is bound
to it, and every form carries a token derived from it and the request
(against CSRF).  The pages are framed by nobody (``frame-ancestors 'none'``,
``X-Frame-Options``) and run no script.
"""

import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from leafpds.accounts.accounts import SignedIn
from leafpds.accounts.oauth import PendingLogin, PKCE
from leafpds.accounts.sessions import ACCESS, REFRESH_LIFETIME
from leafpds.app import AppContext
from leafpds.errors import XRPCError
from leafpds.oauth.clients import Client
from leafpds.oauth.devices import (
    DeviceAccount,
    add_device_account_unit,
    device_accounts_unit,
    forget_device_account_unit,
)
from leafpds.oauth.errors import OAuthError
from leafpds.oauth.par import REQUEST_URI_PREFIX, AuthorizationRequest
from leafpds.oauth.responses import describe_scope, redirect_to_client
from leafpds.oauth.server import AuthorizationServer
from leafpds.oauth.tokens import consented_unit, remember_consent_unit
from leafpds.web import incoming
from leafpds.web.auth import AuthPages
from leafpds.web.layout import (
    escape,
    failure_page,
    form_fields,
    same_secret,
    send_page,
    send_redirect,
    with_query,
)

log = Logger()

PATH = "/oauth/authorize"
DEVICE_COOKIE = b"leafpds_device"
DEVICE_COOKIE_PATH = b"/oauth"


@dataclass
class Flow:
    """An opened authorization request, on its way through this page."""

    request_id: str
    request_uri: str
    device: str
    request: AuthorizationRequest
    client: Client
    expires_at: float
    # The account that signed in (or was chosen) for it.
    did: str | None = None


# A host the page's CSP may name (nothing that could end the directive or add one).
_HOST = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]")


def _image_source(url: str | None) -> str:
    """The CSP source allowing the client's logo at ``url`` (its origin), or "" to show none."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    host = parts.netloc.rpartition("@")[2].lower()
    host = host.rsplit(":", 1)[0] if port is not None else host
    if parts.scheme not in ("https", "http") or parts.username is not None or not _HOST.fullmatch(host):
        return ""
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class AuthorizePages:
    app = Klein()

    def __init__(self, ctx: AppContext, server: AuthorizationServer, auth: AuthPages) -> None:
        self.ctx = ctx
        self.server = server
        self.auth = auth
        auth.authorize = self
        # request id -> its flow; all live as long, so insertion order is expiry order.
        self.flows: OrderedDict[str, Flow] = OrderedDict()

    def resource(self) -> IResource:
        return self.app.resource()

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        return failure_page(request, failure)

    # -- state -------------------------------------------------------------------

    def _device(self, request: IRequest) -> str:
        return incoming.cookie(request, DEVICE_COOKIE) or ""

    def _new_device(self, request: IRequest) -> str:
        device = secrets.token_urlsafe(32)
        request.addCookie(
            DEVICE_COOKIE, device.encode("ascii"), path=DEVICE_COOKIE_PATH, max_age=str(REFRESH_LIFETIME),
            httpOnly=True, sameSite="lax", secure=self.ctx.public_url.startswith("https:"),
        )
        return device

    def _prune(self) -> None:
        now = self.ctx.reactor.seconds()
        while self.flows:
            flow = next(iter(self.flows.values()))
            if flow.expires_at > now:
                return
            del self.flows[flow.request_id]

    def _flow(self, request_id: str, device: str) -> Flow | None:
        """The live flow ``request_id`` names, if it is this browser's."""
        self._prune()
        flow = self.flows.get(request_id)
        if flow is None or self.server.pending.get(request_id) is None:
            return None
        return flow if same_secret(flow.device, device) else None

    def _form_token(self, flow: Flow) -> str:
        return self.ctx.tokens.form_token(f"oauth-authorize:{flow.device}:{flow.request_id}")

    def _url(self, flow: Flow) -> str:
        return with_query(PATH, {"request_uri": flow.request_uri, "client_id": flow.client.client_id})

    # -- answers -----------------------------------------------------------------

    def error_page(self, request: IRequest, message: str, code: int = 400) -> bytes:
        content = (
            f"<p role=alert>{escape(message)}</p>"
            "<p>Go back to the app and sign in again from there.</p>"
        )
        return send_page(request, "This sign-in cannot go on", content, code)

    def _to_client(self, request: IRequest, flow: Flow, **result: str) -> bytes:
        """Back to the client with an error (``error``, ``description``); the request is spent."""
        self.server.pending.finish(flow.request_id)
        self.flows.pop(flow.request_id, None)
        return send_redirect(request, redirect_to_client(flow.request, self.server.issuer, **result))

    def _form(self, flow: Flow, fields: str, buttons: str) -> str:
        return (
            f'<form method="post" action="{PATH}">'
            f'<input type="hidden" name="request_uri" value="{escape(flow.request_uri)}">'
            f'<input type="hidden" name="form_token" value="{escape(self._form_token(flow))}">'
            f"{fields}{buttons}</form>"
        )

    def _client_name(self, client: Client) -> str:
        if client.loopback:
            return "A development app"
        return client.client_name or urlsplit(client.client_id).hostname or client.client_id

    def _client_block(self, flow: Flow) -> tuple[str, str]:
        """Who is asking, as HTML, and the CSP source its logo needs ("" if none)."""
        client = flow.client
        name = escape(self._client_name(client))
        logo, images = "", _image_source(client.logo_uri)
        if images:
            logo = f'<img src="{escape(client.logo_uri or "")}" alt="" width="48" height="48" class="logo"> '
        if client.client_uri:
            host = escape(urlsplit(client.client_uri).netloc)
            where = f' (<a href="{escape(client.client_uri)}" rel="noopener noreferrer">{host}</a>)'
        elif client.loopback:
            where = ""
        else:
            where = f" (<code>{escape(client.client_id)}</code>)"
        block = f"<p class=client>{logo}<strong>{name}</strong>{where} wants to use your account.</p>"
        if client.loopback:
            block += (
                "<p role=note>This is a development app running on someone's own computer"
                " (a loopback client). Nobody vouches for its name: allow it only if you are"
                " testing an app of your own.</p>"
            )
        return block, images

    async def _sign_in_page(
        self, request: IRequest, flow: Flow, problem: str = "", code: int = 200, identifier: str = ""
    ) -> bytes:
        block, images = self._client_block(flow)
        alert = f"<p role=alert>{escape(problem)}</p>" if problem else ""
        chooser = ""
        if flow.request.prompt != "login":
            accounts = await self.ctx.db.read(device_accounts_unit, flow.device, self.ctx.reactor.seconds())
            if accounts:
                chooser = "<h2>Continue as</h2>" + "".join(
                    self._form(
                        flow, f'<input type="hidden" name="did" value="{escape(a.did)}">',
                        f'<button type="submit" name="action" value="choose">@{escape(a.handle)}</button>'
                        f'<button type="submit" name="action" value="forget" class="quiet"'
                        f' aria-label="Forget @{escape(a.handle)} on this browser">Forget</button>',
                    )
                    for a in self._hinted_first(accounts, flow.request.login_hint)
                )
        providers = "".join(
            self._form(
                flow, f'<input type="hidden" name="provider" value="{escape(name)}">',
                f'<button type="submit" name="action" value="provider">Sign in with {escape(p.title)}</button>',
            )
            for name, p in self.auth.providers.items()
        )
        if providers:
            providers = "<p>New here? Signing in for the first time creates your account.</p>" + providers
        prefill = identifier or await self._hint_identifier(flow.request.login_hint)
        password = self._form(
            flow,
            '<label for="identifier">Handle or email</label>'
            f'<input id="identifier" name="identifier" required autocomplete="username" value="{escape(prefill)}"'
            ' spellcheck="false" autocapitalize="none">'
            '<label for="password">Password</label>'
            '<input id="password" name="password" type="password" required autocomplete="current-password">'
            '<label><input type="checkbox" name="remember_device" value="1">'
            " Remember this account on this browser (not on a shared computer)</label>",
            '<button type="submit" name="action" value="sign-in">Sign in</button>',
        )
        cancel = self._form(flow, "", '<button type="submit" name="action" value="deny" class="quiet">Cancel</button>')
        content = (
            f"{block}{alert}{chooser}"
            + ("<h2>Or with another account</h2>" if chooser else "")
            + f"{providers}<h2>With a password</h2>{password}{cancel}"
        )
        return send_page(request, "Sign in", content, code, images=images)

    @staticmethod
    def _hinted_first(accounts: list[DeviceAccount], hint: str | None) -> list[DeviceAccount]:
        return sorted(accounts, key=lambda a: hint not in (a.did, a.handle))

    async def _hint_identifier(self, hint: str | None) -> str:
        """What ``login_hint`` prefills: a handle as it is, a DID as its handle here (if any)."""
        if not hint or not hint.startswith("did:"):
            return hint or ""
        try:
            return (await self.ctx.accounts.get(hint)).handle
        except XRPCError:
            return ""

    async def _consent_or_code(self, request: IRequest, flow: Flow) -> bytes:
        """With an account chosen: the consent screen, or straight back if consent is remembered."""
        assert flow.did is not None
        pushed, client = flow.request, flow.client
        remembered = (
            not client.loopback
            and pushed.prompt != "consent"
            and await self.ctx.db.read(consented_unit, flow.did, client.client_id, pushed.scope)
        )
        if remembered:
            return await self._issue(request, flow)
        if pushed.prompt == "none":
            return self._to_client(request, flow, error="consent_required",
                                   description="The account has not authorized this app yet")
        return await self._consent_page(request, flow)

    async def _consent_page(self, request: IRequest, flow: Flow) -> bytes:
        assert flow.did is not None
        block, images = self._client_block(flow)
        try:
            handle = (await self.ctx.accounts.get(flow.did)).handle
        except XRPCError:
            return self.error_page(request, "This account is not available.", 403)
        asks = "".join(f"<li>{escape(line)}</li>" for line in describe_scope(flow.request.scope))
        remember = (
            ""
            if flow.client.loopback
            else '<label><input type="checkbox" name="remember" value="1" checked>'
            " Remember my choice: next time, do not ask again for the same access</label>"
        )
        content = (
            f"{block}<p>Signed in as <strong>@{escape(handle)}</strong>.</p>"
            f"<h2>It asks to</h2><ul class=scopes>{asks}</ul>"
            + self._form(
                flow,
                remember,
                '<p><button type="submit" name="action" value="allow">Allow</button>'
                '<button type="submit" name="action" value="deny" class="quiet">Deny</button></p>',
            )
        )
        return send_page(request, f"Allow {self._client_name(flow.client)}?", content, images=images)

    async def _issue(self, request: IRequest, flow: Flow, remember: bool = False) -> bytes:
        assert flow.did is not None
        # Spent first: a second submit of the same form finds nothing to issue.
        if self.server.pending.finish(flow.request_id) is None:
            self.flows.pop(flow.request_id, None)
            return self.error_page(request, "This sign-in has expired or was already used.")
        self.flows.pop(flow.request_id, None)
        code = await self.server.issue_code(flow.request, flow.did)
        if remember and not flow.client.loopback:
            await self.ctx.db.write(
                remember_consent_unit, flow.did, flow.client.client_id, flow.request.scope, self.ctx.reactor.seconds()
            )
        return send_redirect(request, redirect_to_client(flow.request, self.server.issuer, code=code))

    async def _signed_in(self, flow: Flow, signed_in: SignedIn, remember: bool = True) -> None:
        """
        ``signed_in``'s account is the one authorizing ``flow``, and, if
        ``remember``, offered on this browser from now on; if not, the
        session the sign-in started ends at once.
        """
        credentials = self.ctx.tokens.verify_access(signed_in.tokens.access)
        if remember:
            await self.ctx.db.write(
                add_device_account_unit, flow.device, credentials.did, credentials.session_id,
                self.ctx.reactor.seconds(),
            )
        else:
            await self.ctx.accounts.end_session(credentials.did, credentials.session_id)
        flow.did = credentials.did

    async def _next(self, request: IRequest, flow: Flow) -> bytes:
        """Where a flow stands: consent (or the code) once an account is chosen, else sign-in."""
        if flow.did is not None:
            return await self._consent_or_code(request, flow)
        if flow.request.prompt == "none":
            accounts = await self.ctx.db.read(device_accounts_unit, flow.device, self.ctx.reactor.seconds())
            hint = flow.request.login_hint
            # The hinted account, or without a hint the only one: never a guess.
            if hint:
                chosen = [a for a in accounts if hint in (a.did, a.handle)]
            else:
                chosen = accounts if len(accounts) == 1 else []
            if not chosen:
                return self._to_client(request, flow, error="login_required",
                                       description="No account is signed in on this browser")
            flow.did = chosen[0].did
            return await self._consent_or_code(request, flow)
        return await self._sign_in_page(request, flow)

    # -- the page ------------------------------------------------------------------

    # Mounted at /oauth/authorize itself: the path left is "", not "/".
    @app.route("/", methods=["GET"], strict_slashes=False)
    async def show(self, request: IRequest) -> bytes:
        if request.method == b"HEAD":
            # A link checker's look opens nothing: the request is the person's browser's to open.
            return send_page(request, "Sign in", "")
        request_uri = incoming.query_arg(request, "request_uri")
        client_id = incoming.query_arg(request, "client_id")
        if not request_uri or not client_id:
            return self.error_page(request, "The app sent no authorization request (request_uri and client_id).")
        request_id = request_uri.removeprefix(REQUEST_URI_PREFIX)
        device = self._device(request)
        flow = self._flow(request_id, device) if device else None
        if flow is not None and flow.client.client_id == client_id:
            # This browser again (a reload, or back from GitHub or Google).
            return await self._next(request, flow)
        try:
            request_id, pushed = self.server.pending.open(request_uri, client_id)
        except OAuthError:
            return self.error_page(request, "This sign-in request is unknown, has expired or was already used.")
        try:
            client = await self.server.clients.get(client_id)
        except OAuthError as e:
            # The redirect URI was checked when the request was pushed: it can be told.
            self.server.pending.finish(request_id)
            log.warn("Client {client_id} could not be read at authorization: {error}",
                     client_id=client_id, error=e.message)
            return send_redirect(request, redirect_to_client(
                pushed, self.server.issuer, error="invalid_client", description=e.message))
        self._prune()
        flow = Flow(
            request_id, request_uri, device or self._new_device(request), pushed, client,
            self.ctx.reactor.seconds() + self.server.pending.lifetime,
        )
        self.flows[request_id] = flow
        return await self._next(request, flow)

    @app.route("/", methods=["POST"], strict_slashes=False)
    async def act(self, request: IRequest) -> bytes:
        fields = form_fields(request)
        request_uri = fields.get("request_uri", "")
        flow = self._flow(request_uri.removeprefix(REQUEST_URI_PREFIX), self._device(request))
        if flow is None:
            return self.error_page(request, "This sign-in has expired or was already used.")
        if not same_secret(fields.get("form_token", ""), self._form_token(flow)):
            return self.error_page(request, "This form is out of date. Reload the page and try again.", 403)
        action = fields.get("action", "")
        if action == "deny":
            return self._to_client(request, flow, error="access_denied", description="The person denied access")
        if action == "sign-in":
            return await self._password(request, flow, fields)
        if action == "choose":
            return await self._choose(request, flow, fields.get("did", ""))
        if action == "forget":
            return await self._forget(request, flow, fields.get("did", ""))
        if action == "provider":
            return await self._provider(request, flow, fields.get("provider", ""))
        if action == "allow":
            if flow.did is None:
                return await self._sign_in_page(request, flow, "Sign in first.", 400)
            return await self._issue(request, flow, remember=fields.get("remember") == "1")
        return self.error_page(request, "Unknown action.")

    async def _password(self, request: IRequest, flow: Flow, fields: dict[str, str]) -> bytes:
        identifier = fields.get("identifier", "").strip().lower()
        try:
            # Counted as createSession counts sign-ins.
            self.ctx.login_limits.consume(identifier, 1, request)
            signed_in = await self.ctx.accounts.sign_in(identifier, fields.get("password", ""))
        except XRPCError as e:
            return await self._sign_in_page(request, flow, e.message, e.status, identifier)
        if signed_in.scope != ACCESS:
            # The app password's session is of no use here: end it at once.
            credentials = self.ctx.tokens.verify_access(signed_in.tokens.access)
            await self.ctx.accounts.end_session(credentials.did, credentials.session_id)
            return await self._sign_in_page(
                request, flow, "App passwords sign apps in; use your own password here.", 403, identifier
            )
        await self._signed_in(flow, signed_in, remember=fields.get("remember_device") == "1")
        return await self._consent_or_code(request, flow)

    async def _choose(self, request: IRequest, flow: Flow, did: str) -> bytes:
        accounts = await self.ctx.db.read(device_accounts_unit, flow.device, self.ctx.reactor.seconds())
        if flow.request.prompt == "login" or did not in {a.did for a in accounts}:
            return await self._sign_in_page(request, flow, "That account is no longer signed in here.", 403)
        flow.did = did
        return await self._consent_or_code(request, flow)

    async def _forget(self, request: IRequest, flow: Flow, did: str) -> bytes:
        """Sign an account out of this browser's chooser (its session here ends)."""
        session_id = await self.ctx.db.write(forget_device_account_unit, flow.device, did)
        if session_id is not None:
            await self.ctx.accounts.end_session(did, session_id)
        return await self._sign_in_page(request, flow)

    async def _provider(self, request: IRequest, flow: Flow, provider: str) -> bytes:
        if provider not in self.auth.providers:
            return await self._sign_in_page(request, flow, "This server does not offer that sign-in.", 404)
        pending = PendingLogin(provider, PKCE.generate(), secrets.token_urlsafe(24), "", "", resume=flow.request_id)
        return await self.auth.begin(request, pending)

    # -- back from GitHub or Google (called by AuthPages) -----------------------------

    def resume(self, request: IRequest, request_id: str) -> bytes:
        """Back to the page of a flow (e.g. the person cancelled at the provider)."""
        flow = self.flows.get(request_id)
        if flow is None or self.server.pending.get(request_id) is None:
            return self.error_page(request, "This sign-in has expired or was already used.")
        return send_redirect(request, self._url(flow))

    async def signed_in_elsewhere(
        self, request: IRequest, request_id: str, did: str, signed_in: SignedIn | None
    ) -> bytes:
        """
        A provider's sign-in that started on this page (the browser was bound
        to it by the sign-in cookie) ended as ``did``: the flow goes on as that
        account, on this browser's next visit to the page.
        """
        flow = self.flows.get(request_id)
        if flow is None or self.server.pending.get(request_id) is None:
            return self.error_page(request, "This sign-in has expired or was already used.")
        try:
            signed_in = signed_in or await self.ctx.accounts.start_session(did)
        except XRPCError as e:
            return self.error_page(request, e.message, 403)
        await self._signed_in(flow, signed_in)
        return send_redirect(request, self._url(flow))

