"""
leafpds's own account pages, mounted under ``/account/``:

``GET /account/``
    signed out: the sign-in page (the configured providers, and a password
    form for accounts that have one); signed in: the account page (DID,
    handle, the sign-ins linked to it, app passwords, the password).
``POST /account/signin``, ``POST /account/signout``
``POST /account/signup``
    creates an account with a password (when the server allows password
    sign-up), as ``createAccount`` does, and signs it in.
``POST /account/link``
    sends the signed-in user to another provider; its identity then signs in
    to this same account (see :mod:`leafpds.web.auth`).
``POST /account/app-passwords``, ``POST /account/app-passwords/revoke``
    create (the password is shown once) and revoke app passwords, which
    standard Bluesky clients use with ``createSession``.
``POST /account/password``
    sets a password, for example on an account created by sign-in, and
    signs out the account's other sessions.
``POST /account/apps/revoke``
    revokes an app's OAuth grant (the apps the account authorized are
    listed on the account page): its tokens are refused from then on.

Every form carries a token bound to the session (against CSRF).
"""

import secrets
from urllib.parse import urlsplit

from klein import Klein
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from leafpds.accounts.oauth import PendingLogin, PKCE
from leafpds.accounts.sessions import ACCESS, AccessCredentials
from leafpds.app import AppContext
from leafpds.errors import XRPCError
from leafpds.oauth.tokens import grants_of_unit, revoke_account_grant_unit
from leafpds.web import browser, incoming
from leafpds.web.auth import ACCOUNT_PAGE, HANDLE_CHECK, AuthPages
from leafpds.web.layout import (
    escape,
    failure_page,
    form_fields,
    same_secret,
    send_page,
    send_redirect,
    with_query,
)

# What a redirect back to the account page reports (by key: no text from the URL is shown).
_DONE = {
    "linked-github": "GitHub now signs you in to this account.",
    "linked-google": "Google now signs you in to this account.",
    "password": "Your password is set. Your other sessions were signed out; apps using app passwords stay signed in.",
    "revoked": "The app password was revoked; apps using it are signed out.",
    "app-revoked": "The app's access was revoked; it is signed out.",
}


class AccountPages:
    app = Klein()

    def __init__(self, ctx: AppContext, auth: AuthPages) -> None:
        self.ctx = ctx
        self.auth = auth

    def resource(self) -> IResource:
        return self.app.resource()

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        return failure_page(request, failure)

    def _form_token(self, credentials: AccessCredentials) -> str:
        return self.ctx.tokens.form_token(credentials.session_id)

    def _form(
        self,
        credentials: AccessCredentials,
        action: str,
        fields: str,
        button: str,
        quiet: bool = False,
        label: str = "",
    ) -> str:
        token = escape(self._form_token(credentials))
        style = ' class="quiet"' if quiet else ""
        # A button among several alike (Revoke) says what it acts on.
        named = f' aria-label="{escape(label)}"' if label else ""
        return (
            f'<form method="post" action="{ACCOUNT_PAGE}{action}">'
            f'<input type="hidden" name="form_token" value="{token}">{fields}'
            f"<button type=\"submit\"{style}{named}>{escape(button)}</button></form>"
        )

    def _checked(self, request: IRequest) -> tuple[AccessCredentials | None, dict[str, str]]:
        """The signed-in session behind a form post, if its form token matches."""
        credentials = browser.signed_in(request, self.ctx)
        fields = form_fields(request)
        if credentials is None or not same_secret(
            fields.get("form_token", ""), self._form_token(credentials)
        ):
            return None, fields
        return credentials, fields

    def _expired(self, request: IRequest) -> bytes:
        content = (
            "<p role=alert>You are signed out, or this form is out of date.</p>"
            f'<p><a href="{ACCOUNT_PAGE}">Sign in again</a></p>'
        )
        return send_page(request, "Please sign in", content, 403)

    # -- signed out --------------------------------------------------------------

    def _sign_in_page(
        self, request: IRequest, problem: str = "", code: int = 200, signup: dict[str, str] | None = None
    ) -> bytes:
        alert = f"<p role=alert>{escape(problem)}</p>" if problem else ""
        buttons = "".join(
            f'<p><a class="button" href="/auth/{name}/login">Sign in with {escape(provider.title)}</a></p>'
            for name, provider in self.auth.providers.items()
        )
        first_time = (
            "<p>New here? Signing in for the first time creates your account.</p>" if buttons else ""
        )
        content = (
            f"{alert}{first_time}{buttons}"
            "<h2>With a password</h2>"
            f'<form method="post" action="{ACCOUNT_PAGE}signin">'
            '<label for="identifier">Handle or email</label>'
            '<input id="identifier" name="identifier" required autocomplete="username"'
            ' spellcheck="false" autocapitalize="none">'
            '<label for="password">Password</label>'
            '<input id="password" name="password" type="password" required autocomplete="current-password">'
            '<button type="submit">Sign in</button></form>'
        )
        if not self.ctx.settings.password_signup:
            return send_page(request, "Sign in", content, code)
        return send_page(
            request, "Sign in", content + self._sign_up_form(signup or {}), code, script=HANDLE_CHECK
        )

    def _sign_up_form(self, given: dict[str, str]) -> str:
        """Creating an account with a password, as createAccount does (when the server allows it)."""
        settings = self.ctx.settings
        invite = (
            '<label for="invite">Invite code</label>'
            f'<input id="invite" name="invite" required value="{escape(given.get("invite", ""))}"'
            ' spellcheck="false" autocapitalize="none">'
            if settings.invite_required
            else ""
        )
        return (
            "<h2>New here? Create an account</h2>"
            f'<form method="post" action="{ACCOUNT_PAGE}signup">'
            '<label for="handle">Handle</label>'
            f'<input id="handle" name="handle" required value="{escape(given.get("handle", ""))}"'
            ' autocomplete="username" spellcheck="false" autocapitalize="none"'
            ' aria-describedby="handle-hint handle-status">'
            f'<small id="handle-hint">It ends in <code>{escape(settings.handle_domain)}</code>.</small>'
            '<p id="handle-status" aria-live="polite"></p>'
            '<label for="email">Email</label>'
            f'<input id="email" name="email" type="email" required autocomplete="email"'
            f' value="{escape(given.get("email", ""))}">'
            '<label for="new-password">Password</label>'
            '<input id="new-password" name="password" type="password" required minlength="8"'
            ' autocomplete="new-password">'
            '<label for="confirm-password">The same again</label>'
            '<input id="confirm-password" name="confirm" type="password" required minlength="8"'
            ' autocomplete="new-password">'
            f"{invite}"
            '<button type="submit">Create my account</button></form>'
        )

    @app.route("/signup", methods=["POST"])
    async def sign_up(self, request: IRequest) -> bytes:
        fields = form_fields(request)
        given = {name: fields.get(name, "").strip() for name in ("handle", "email", "invite")}
        if not self.ctx.settings.password_signup:
            return self._sign_in_page(request, "This server creates accounts only through the sign-ins above.", 403)
        if fields.get("password", "") != fields.get("confirm", ""):
            return self._sign_in_page(request, "The two passwords differ.", 400, given)
        try:
            signed_in = await self.ctx.accounts.create(
                self.auth.full_handle(given["handle"]),
                given["email"],
                fields.get("password", ""),
                given["invite"] or None,
                invite_required=self.ctx.settings.invite_required,
            )
        except XRPCError as e:
            return self._sign_in_page(request, e.message, e.status, given)
        browser.remember(request, self.ctx, signed_in)
        return send_redirect(request, ACCOUNT_PAGE)

    @app.route("/signin", methods=["POST"])
    async def sign_in(self, request: IRequest) -> bytes:
        fields = form_fields(request)
        identifier = fields.get("identifier", "").strip().lower()
        try:
            self.ctx.login_limits.consume(identifier, 1, request)
            signed_in = await self.ctx.accounts.sign_in(identifier, fields.get("password", ""))
        except XRPCError as e:
            return self._sign_in_page(request, e.message, e.status)
        if signed_in.scope != ACCESS:
            return self._sign_in_page(request, "App passwords sign apps in; use your own password here.", 403)
        browser.remember(request, self.ctx, signed_in)
        return send_redirect(request, ACCOUNT_PAGE)

    # -- signed in ---------------------------------------------------------------

    @app.route("/", methods=["GET"])
    async def home(self, request: IRequest) -> bytes:
        credentials = browser.signed_in(request, self.ctx)
        if credentials is None:
            return self._sign_in_page(request)
        try:
            account = await self.ctx.accounts.get(credentials.did)
        except XRPCError:
            browser.forget(request, self.ctx)
            return self._sign_in_page(request)
        done = _DONE.get(incoming.query_arg(request, "done"), "")
        notice = f"<p role=status>{escape(done)}</p>" if done else ""
        content = (
            f"{notice}<dl><dt>Handle</dt><dd><code>@{escape(account.handle)}</code></dd>"
            f"<dt>DID</dt><dd><code>{escape(account.did)}</code></dd>"
            f"<dt>Server</dt><dd><code>{escape(self.ctx.public_url)}</code></dd></dl>"
            + await self._sign_ins(credentials, account.has_password)
            + await self._app_passwords(credentials)
            + await self._authorized_apps(credentials)
            + self._form(credentials, "signout", "", "Sign out", quiet=True)
        )
        return send_page(request, "Your account", content)

    async def _sign_ins(self, credentials: AccessCredentials, has_password: bool) -> str:
        linked = set(await self.ctx.accounts.linked_identities(credentials.did))
        rows = []
        for name, provider in self.auth.providers.items():
            if name in linked:
                rows.append(f"<li>{escape(provider.title)}: linked</li>")
            else:
                field = f'<input type="hidden" name="provider" value="{escape(name)}">'
                rows.append(
                    f"<li>{escape(provider.title)}: not linked "
                    + self._form(credentials, "link", field, f"Link {provider.title}", quiet=True)
                    + "</li>"
                )
        password = (
            '<label for="new-password">New password</label>'
            '<input id="new-password" name="password" type="password" required minlength="8"'
            ' autocomplete="new-password">'
            '<label for="confirm-password">The same again</label>'
            '<input id="confirm-password" name="confirm" type="password" required minlength="8"'
            ' autocomplete="new-password">'
        )
        state = "set" if has_password else "none yet (you sign in through the providers above)"
        return (
            "<h2>How you sign in</h2><ul>" + "".join(rows) + f"<li>Password: {state}</li></ul>"
            + self._form(credentials, "password", password, "Change password" if has_password else "Set a password")
        )

    async def _app_passwords(self, credentials: AccessCredentials) -> str:
        rows = "".join(
            f"<tr><td>{escape(entry['name'])}</td><td>{escape(entry['createdAt'][:10])}</td><td>"
            + self._form(
                credentials,
                "app-passwords/revoke",
                f'<input type="hidden" name="name" value="{escape(entry["name"])}">',
                "Revoke",
                quiet=True,
                label=f"Revoke {entry['name']}",
            )
            + "</td></tr>"
            for entry in await self.ctx.accounts.list_app_passwords(credentials.did)
        )
        table = (
            f"<table><thead><tr><th>Name</th><th>Created</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
            if rows
            else "<p>None yet.</p>"
        )
        fields = (
            '<label for="app-password-name">Name (the app it is for)</label>'
            '<input id="app-password-name" name="name" required maxlength="64" spellcheck="false">'
            '<label><input type="checkbox" name="privileged" value="1"> Allow access to direct messages</label>'
        )
        return (
            "<h2>App passwords</h2><p>Bluesky apps sign in with your handle and an app password.</p>"
            + table
            + self._form(credentials, "app-passwords", fields, "Create app password")
        )

    async def _authorized_apps(self, credentials: AccessCredentials) -> str:
        grants = await self.ctx.db.read(grants_of_unit, credentials.did)
        if not grants:
            return "<h2>Apps you authorized</h2><p>None.</p>"
        names = await gatherResults([self._client_name(grant.client_id) for grant in grants])
        rows = "".join(
            f"<tr><td>{escape(name)}<br><small><code>{escape(grant.client_id)}</code></small></td>"
            f"<td>{escape(grant.created_at[:10])}</td>"
            f"<td>{' '.join(f'<code>{escape(scope)}</code>' for scope in grant.scope.split())}</td><td>"
            + self._form(
                credentials,
                "apps/revoke",
                f'<input type="hidden" name="grant" value="{escape(grant.id)}">',
                "Revoke",
                quiet=True,
                label=f"Revoke {name}",
            )
            + "</td></tr>"
            for grant, name in zip(grants, names)
        )
        return (
            "<h2>Apps you authorized</h2><p>These apps signed in with your account and may act as it"
            " within what you allowed.</p>"
            "<table><thead><tr><th>App</th><th>Since</th><th>Allowed</th><th></th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )

    def _client_name(self, client_id: str) -> "Deferred[str]":
        """The name an app gives itself, else its client id's host (its metadata may be unreachable now)."""

        async def name() -> str:
            try:
                client = await self.ctx.oauth.clients.get(client_id)
            except XRPCError:
                client = None
            if client is not None and client.client_name:
                return client.client_name
            return urlsplit(client_id).hostname or client_id

        return Deferred.fromCoroutine(name())

    @app.route("/apps/revoke", methods=["POST"])
    async def revoke_app(self, request: IRequest) -> bytes:
        credentials, fields = self._checked(request)
        if credentials is None:
            return self._expired(request)
        grant_id = fields.get("grant", "")
        revoked = await self.ctx.db.write(
            revoke_account_grant_unit, credentials.did, grant_id, self.ctx.reactor.seconds()
        )
        if not revoked:
            return self._problem(request, "That app is not authorized for this account (any more).")
        # Its access tokens die now, not when they expire.
        self.ctx.oauth.revoked([grant_id])
        return send_redirect(request, with_query(ACCOUNT_PAGE, {"done": "app-revoked"}))

    @app.route("/app-passwords", methods=["POST"])
    async def create_app_password(self, request: IRequest) -> bytes:
        credentials, fields = self._checked(request)
        if credentials is None:
            return self._expired(request)
        try:
            created = await self.ctx.accounts.create_app_password(
                credentials.did, fields.get("name", ""), fields.get("privileged") == "1"
            )
        except XRPCError as e:
            return self._problem(request, e.message)
        account = await self.ctx.accounts.get(credentials.did)
        content = (
            f"<p>Your app password for <strong>{escape(created['name'])}</strong>:</p>"
            f'<p><output class="secret" id="app-password">{escape(created["password"])}</output></p>'
            "<p>Copy it now: it is not shown again. In the app, sign in with your handle"
            f" <code>{escape(account.handle)}</code>, this password, and the server"
            f" <code>{escape(self.ctx.public_url)}</code>.</p>"
            f'<p><a href="{ACCOUNT_PAGE}">Back to your account</a></p>'
        )
        return send_page(request, "App password created", content)

    @app.route("/app-passwords/revoke", methods=["POST"])
    async def revoke_app_password(self, request: IRequest) -> bytes:
        credentials, fields = self._checked(request)
        if credentials is None:
            return self._expired(request)
        await self.ctx.accounts.revoke_app_password(credentials.did, fields.get("name", ""))
        return send_redirect(request, with_query(ACCOUNT_PAGE, {"done": "revoked"}))

    @app.route("/password", methods=["POST"])
    async def set_password(self, request: IRequest) -> bytes:
        credentials, fields = self._checked(request)
        if credentials is None:
            return self._expired(request)
        if fields.get("password", "") != fields.get("confirm", ""):
            return self._problem(request, "The two passwords differ.")
        try:
            await self.ctx.accounts.set_password(
                credentials.did, fields.get("password", ""), keep_session=credentials.session_id
            )
        except XRPCError as e:
            return self._problem(request, e.message)
        return send_redirect(request, with_query(ACCOUNT_PAGE, {"done": "password"}))

    @app.route("/link", methods=["POST"])
    async def link(self, request: IRequest) -> bytes:
        credentials, fields = self._checked(request)
        if credentials is None:
            return self._expired(request)
        provider = fields.get("provider", "")
        if provider not in self.auth.providers:
            return self._problem(request, "This server does not offer that sign-in.")
        pending = PendingLogin(
            provider, PKCE.generate(), secrets.token_urlsafe(24), "", "", link_to=credentials.did
        )
        return await self.auth.begin(request, pending)

    @app.route("/signout", methods=["POST"])
    async def sign_out(self, request: IRequest) -> bytes:
        credentials, _fields = self._checked(request)
        if credentials is not None:
            await self.ctx.accounts.end_session(credentials.did, credentials.session_id)
        browser.forget(request, self.ctx)
        return send_redirect(request, ACCOUNT_PAGE)

    def _problem(self, request: IRequest, message: str) -> bytes:
        content = f"<p role=alert>{escape(message)}</p><p><a href=\"{ACCOUNT_PAGE}\">Back to your account</a></p>"
        return send_page(request, "That did not work", content, 400)
