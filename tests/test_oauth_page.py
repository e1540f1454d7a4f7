"""
The OAuth authorization page (leafpds.web.authorize) on a real leafpds, over
loopback HTTP: a client pushes its request through the real ``/oauth/par``
(DPoP, PKCE), a person's browser (cookies kept, redirects followed by hand)
opens the page, signs in, consents or denies, and the client trades the
code at the real ``/oauth/token``.  Every refusal is checked to change
nothing: no code issued, no account signed in on the browser, the request
still usable where it should be.
"""

import html
import time
from urllib.parse import urlencode, urlsplit

import pytest_twisted
from twisted.internet.task import Clock

from leafpds.oauth.devices import device_accounts_unit
from leafpds.oauth.par import AuthorizationRequest
from tests.documents_server import DocumentsServer
from tests.harness import make_settings, start_pds
from tests.oauth_app import App, Mounted, Person, hidden
from tests.signin import local, query, start_world, stop_world
from tests.test_oauth_xrpc import web_client_metadata

PASSWORD = "correct horse battery"
CALLBACK = "http://127.0.0.1:4567/callback"  # App's default (any port of the loopback client's)


async def add_alice(pds) -> str:
    signed_in = await pds.service.app.accounts.create("alice.test", "alice@example.com", PASSWORD)
    return signed_in.account.did


async def count(pds, table: str) -> int:
    return await pds.service.app.db.read(lambda conn: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def text(page) -> str:
    return html.unescape(page.body.decode())


async def push(app: App, **changes) -> str:
    code, pushed = await app.par(**changes)
    assert code == 201, pushed
    return pushed["request_uri"]


def back_at_client(answer, redirect_uri: str = CALLBACK) -> dict[str, str]:
    assert answer.code in (302, 303), answer.body
    location = answer.header("location")
    assert location.startswith(redirect_uri + "?"), location
    return query(location)


@pytest_twisted.ensureDeferred
async def test_password_sign_in_and_consent_send_the_code_back(pds):
    did = await add_alice(pds)
    app = App(Mounted(pds))
    request_uri = await push(app)
    person = Person(pds)
    page = await person.open(app, request_uri)
    assert page.code == 200, page.body
    # Never framed, never cached, no script, no referrer.
    csp = page.header("content-security-policy")
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "script-src 'nonce-" in csp
    assert page.header("x-frame-options") == "DENY" and page.header("cache-control") == "no-store"
    assert "<script" not in page.body.decode()
    cookie = page.header("set-cookie")
    assert cookie.startswith("leafpds_device=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/oauth;" in cookie + ";" and "Secure" not in cookie  # http here
    # The login_hint prefills the form; a development client is said to be one.
    assert 'id="identifier" name="identifier" required autocomplete="username" value="alice.test"' in page.body.decode()
    assert "development app" in text(page) and "<h1>Sign in</h1>" in text(page)

    consent = await person.sign_in(page)
    assert consent.code == 200, consent.body
    assert "<h1>Allow A development app?</h1>" in text(consent) and "@alice.test" in text(consent)
    assert "Read and write everything in your account" in text(consent)
    assert "Know your account's identity" in text(consent)
    assert 'name="remember"' not in consent.body.decode()  # never remembered for loopback clients
    assert await count(pds, "oauth_codes") == 0

    params = back_at_client(await person.act(consent, "allow"))
    assert params["state"] == "st-1" and params["iss"] == pds.service.app.oauth.issuer
    status, tokens = await app.exchange(params["code"])
    assert status == 200, tokens
    assert tokens["sub"] == did and tokens["scope"] == "atproto transition:generic"

    # The request is spent: opening it again (this browser or another) is refused.
    again = await person.open(app, request_uri)
    assert again.code == 400 and "unknown, has expired or was already used" in text(again)
    assert await count(pds, "oauth_codes") == 1


@pytest_twisted.ensureDeferred
async def test_requests_the_page_cannot_trust_get_an_error_page(pds):
    did = await add_alice(pds)
    app = App(Mounted(pds))
    person = Person(pds)
    missing = await person.get("/oauth/authorize")
    assert missing.code == 400 and "request_uri" in text(missing)
    assert missing.header("location") is None and missing.header("x-frame-options") == "DENY"
    unknown = await person.open(app, "urn:ietf:params:oauth:request_uri:nothing")
    assert unknown.code == 400 and unknown.header("location") is None

    # Another client's request_uri: refused, and the request stays the client's to open.
    request_uri = await push(app)
    head = await pds.request("HEAD", "/oauth/authorize?" + urlencode({"request_uri": request_uri, "client_id": app.client_id}))
    assert head.code == 200 and head.header("set-cookie") is None  # a link checker's look opens nothing
    other = await person.open(app, request_uri, client_id="http://localhost")
    assert other.code == 400 and other.header("location") is None
    assert (await person.open(app, request_uri)).code == 200
    # Opened by this browser: another browser cannot take it over.
    thief = await Person(pds).open(app, request_uri)
    assert thief.code == 400 and thief.header("location") is None
    # The same browser may reload it.
    assert (await person.open(app, request_uri)).code == 200

    # A login_hint that is a DID prefills the account's handle.
    hinted = await Person(pds).open(app, await push(app, login_hint=did))
    assert 'autocomplete="username" value="alice.test"' in hinted.body.decode()

    # Expired: the pushed request lives 5 minutes.
    pending = pds.service.app.oauth.pending
    clock = Clock()
    clock.advance(time.time())
    pending._clock = clock
    late = await push(app)
    clock.advance(pending.lifetime + 1)
    expired = await person.open(app, late)
    assert expired.code == 400 and expired.header("location") is None
    assert await count(pds, "oauth_codes") == 0


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_issues_nothing_and_counts_as_a_sign_in(tmp_path):
    pds = await start_pds(make_settings(tmp_path / "data", rate_limit_logins="3/300"))
    try:
        await add_alice(pds)
        app = App(Mounted(pds))
        person = Person(pds)
        page = await person.open(app, await push(app))
        for _ in range(3):
            wrong = await person.sign_in(page, password="not the password")
            assert wrong.code == 401 and "Invalid identifier or password" in text(wrong)
            assert "<h1>Sign in</h1>" in text(wrong)
        assert await count(pds, "oauth_codes") == 0
        assert await count(pds, "oauth_device_accounts") == 0
        # The limit is the one createSession counts against: the right password waits too.
        limited = await person.sign_in(wrong)
        assert limited.code == 429 and await count(pds, "oauth_device_accounts") == 0
        session = await pds.post("com.atproto.server.createSession",
                                  {"identifier": "alice.test", "password": PASSWORD})
        assert session.code == 429
    finally:
        await pds.service.stopService()


@pytest_twisted.ensureDeferred
async def test_forms_without_this_browsers_token_are_refused(pds):
    await add_alice(pds)
    app = App(Mounted(pds))
    person = Person(pds)
    page = await person.open(app, await push(app))
    fields = {"request_uri": hidden(page, "request_uri"), "action": "sign-in",
              "identifier": "alice.test", "password": PASSWORD}
    missing = await person.post_form("/oauth/authorize", fields)
    assert missing.code == 403 and "out of date" in text(missing)
    wrong = await person.post_form("/oauth/authorize", {**fields, "form_token": "0" * 32})
    assert wrong.code == 403
    # The right token from another browser (no device cookie, or another one) is no better.
    stranger = Person(pds)
    assert (await stranger.post_form("/oauth/authorize", {**fields, "form_token": hidden(page, "form_token")})).code == 400
    stranger.cookies["leafpds_device"] = "someone-elses"
    assert (await stranger.post_form("/oauth/authorize", {**fields, "form_token": hidden(page, "form_token")})).code == 400
    # Allow before anyone signed in: the sign-in page again.
    early = await person.act(page, "allow")
    assert early.code == 400 and "Sign in first" in text(early)
    assert await count(pds, "oauth_codes") == 0 and await count(pds, "oauth_device_accounts") == 0
    # Nothing was spent: the real form still works.
    consent = await person.sign_in(page)
    assert consent.code == 200 and "<h1>Allow" in text(consent)


@pytest_twisted.ensureDeferred
async def test_deny_sends_access_denied_to_the_client(pds):
    await add_alice(pds)
    app = App(Mounted(pds))
    person = Person(pds)
    request_uri = await push(app)
    # By email this time (the identifier is a handle or an email, as createSession's).
    consent = await person.sign_in(await person.open(app, request_uri), identifier="Alice@Example.com")
    assert consent.code == 200 and "@alice.test" in text(consent)
    params = back_at_client(await person.act(consent, "deny"))
    assert params == {"error": "access_denied", "error_description": "The person denied access",
                      "state": "st-1", "iss": pds.service.app.oauth.issuer}
    assert await count(pds, "oauth_codes") == 0
    assert (await person.act(consent, "allow")).code == 400  # spent
    assert await count(pds, "oauth_codes") == 0
    # Cancel on the sign-in page is a denial too.
    page = await person.open(app, await push(app))
    assert back_at_client(await person.act(page, "deny"))["error"] == "access_denied"


@pytest_twisted.async_yield_fixture
async def web_app(tmp_path):
    """A leafpds that accepts loopback metadata documents, and a web client publishing one."""
    documents = DocumentsServer.start()
    pds = await start_pds(make_settings(tmp_path / "data", oauth_allow_local_clients=True))
    client_id = documents.origin + "/client-metadata.json"
    redirect_uri = documents.origin + "/callback"
    metadata = web_client_metadata(client_id, redirect_uri)
    metadata.update(client_name="Leaf Reader", client_uri=documents.origin + "/",
                    logo_uri=documents.origin + "/logo.png",
                    scope="atproto transition:generic transition:chat.bsky")
    documents.put("/client-metadata.json", metadata)
    yield pds, App(Mounted(pds), client_id=client_id, redirect_uri=redirect_uri), documents
    await pds.service.stopService()
    await documents.stop()


@pytest_twisted.ensureDeferred
async def test_a_remembered_consent_skips_the_screen(web_app):
    pds, app, _documents = web_app
    did = await add_alice(pds)
    person = Person(pds)
    page = await person.open(app, await push(app))
    origin = app.redirect_uri.rsplit("/", 1)[0]
    consent = await person.sign_in(page)
    assert consent.code == 200
    # The client as its metadata names it: name, site, logo (allowed by the CSP for its origin only).
    assert "<h1>Allow Leaf Reader?</h1>" in text(consent)
    assert f'<a href="{origin}/" rel="noopener noreferrer">' in consent.body.decode()
    assert f'<img src="{origin}/logo.png"' in consent.body.decode()
    assert f"img-src {origin};" in consent.header("content-security-policy")
    assert 'name="remember" value="1" checked' in consent.body.decode()
    back_at_client(await person.act(consent, "allow", remember="1"), app.redirect_uri)
    assert await count(pds, "oauth_consents") == 1

    # Again: the browser's account is offered, and choosing it goes straight back.
    page = await person.open(app, await push(app))
    assert page.code == 200 and "Continue as" in text(page) and "@alice.test" in text(page)
    params = back_at_client(await person.act(page, "choose", did=did), app.redirect_uri)
    assert (await app.exchange(params["code"]))[0] == 200
    # prompt=none with the hinted account, or without a hint the one account, signed in here: no page at all.
    for hint in ("alice.test", did, None):
        silent = await person.open(app, await push(app, prompt="none", login_hint=hint))
        assert "code" in back_at_client(silent, app.redirect_uri), hint
    # ... unless the app hints at another account.
    other = await person.open(app, await push(app, prompt="none", login_hint="bob.test"))
    assert back_at_client(other, app.redirect_uri)["error"] == "login_required"
    # prompt=consent asks anyway; more scope than remembered asks too.
    for changes in ({"prompt": "consent"}, {"scope": "atproto transition:generic transition:chat.bsky"}):
        page = await person.open(app, await push(app, **changes))
        asked = await person.act(page, "choose", did=did)
        assert asked.code == 200 and "<h1>Allow Leaf Reader?</h1>" in text(asked), changes
    # Choosing an account not signed in on this browser is refused.
    page = await person.open(app, await push(app))
    refused = await person.act(page, "choose", did="did:plc:notsignedinhereatall")
    assert refused.code == 403 and "<h1>Sign in</h1>" in text(refused)


@pytest_twisted.ensureDeferred
async def test_prompt_none_without_an_account_answers_login_required(web_app):
    pds, app, _documents = web_app
    await add_alice(pds)
    params = back_at_client(await Person(pds).open(app, await push(app, prompt="none")), app.redirect_uri)
    assert params["error"] == "login_required" and params["state"] == "st-1"
    assert await count(pds, "oauth_codes") == 0


@pytest_twisted.ensureDeferred
async def test_consent_is_not_remembered_for_loopback_clients(pds):
    did = await add_alice(pds)
    app = App(Mounted(pds))
    person = Person(pds)
    consent = await person.sign_in(await person.open(app, await push(app)))
    # Even when a form says so.
    back_at_client(await person.act(consent, "allow", remember="1"))
    assert await count(pds, "oauth_consents") == 0
    page = await person.open(app, await push(app))
    asked = await person.act(page, "choose", did=did)
    assert asked.code == 200 and "<h1>Allow A development app?</h1>" in text(asked)
    # prompt=none cannot skip it either.
    params = back_at_client(await person.open(app, await push(app, prompt="none")))
    assert params["error"] == "consent_required"


@pytest_twisted.ensureDeferred
async def test_the_chooser_forgets_accounts_whose_session_ended(pds):
    did = await add_alice(pds)
    app = App(Mounted(pds))
    person = Person(pds)
    back_at_client(await person.act(await person.sign_in(await person.open(app, await push(app))), "allow"))
    page = await person.open(app, await push(app))
    assert "@alice.test" in text(page)
    # A new password signs out the account's other sessions, this browser's too.
    keep = (await pds.service.app.accounts.start_session(did)).tokens.access
    await pds.service.app.accounts.set_password(
        did, "another password", pds.service.app.tokens.verify_access(keep).session_id)
    page = await person.open(app, await push(app))
    assert page.code == 200 and "Continue as" not in text(page)
    assert (await person.act(page, "choose", did=did)).code == 403


@pytest_twisted.ensureDeferred
async def test_sign_in_with_github_on_the_page_creates_the_account_and_comes_back(tmp_path):
    world = await start_world(tmp_path / "data")
    pds, github, _google = world
    try:
        app = App(Mounted(pds))
        person = Person(pds)
        page = await person.open(app, await push(app, login_hint=None))
        assert "Sign in with GitHub" in text(page) and "Sign in with Google" in text(page)
        to_github = await person.act(page, "provider", provider="github")
        assert to_github.code == 303 and to_github.header("location").startswith(github.url)
        callback = await person.approve(to_github.header("location"))
        chooser = await person.get(local(callback))
        assert chooser.code == 200 and "<h1>Choose your handle</h1>" in text(chooser)
        # The account, its DID and repo are made; then back to the authorization.
        back = await person.choose_handle(chooser)
        assert back.code == 303 and back.header("location").startswith("/oauth/authorize?"), back.body
        did = await pds.service.app.accounts.did_for_handle("octo-cat.test")
        assert did is not None
        consent = await person.get(back.header("location"))
        assert consent.code == 200 and "@octo-cat.test" in text(consent)
        params = back_at_client(await person.act(consent, "allow"))
        status, tokens = await app.exchange(params["code"])
        assert status == 200 and tokens["sub"] == did

        # A second time through GitHub, in a fresh browser: the known identity comes straight back.
        other = Person(pds)
        page = await other.open(app, await push(app, login_hint=None))
        callback = await other.approve((await other.act(page, "provider", provider="github")).header("location"))
        back = await other.get(local(callback))
        assert back.code == 302 and back.header("location").startswith("/oauth/authorize?")
        consent = await other.get(back.header("location"))
        assert consent.code == 200 and "@octo-cat.test" in text(consent)
        # Cancelled at the provider: back to the page, still usable.
        page = await other.open(app, await push(app, login_hint=None))
        to_github = (await other.act(page, "provider", provider="github")).header("location")
        callback = await other.approve(to_github, decision="deny")
        back = await other.get(local(callback))
        assert back.code == 302 and urlsplit(back.header("location")).path == "/oauth/authorize"
        assert (await other.get(back.header("location"))).code == 200
        assert await count(pds, "accounts") == 1
    finally:
        await stop_world(world)


@pytest_twisted.ensureDeferred
async def test_a_logo_address_cannot_write_the_pages_csp(web_app):
    pds, _app, documents = web_app
    await add_alice(pds)
    client_id = documents.origin + "/odd-client.json"
    metadata = web_client_metadata(client_id, documents.origin + "/callback")
    metadata["logo_uri"] = "https://logo;script-src 'unsafe-inline' x/logo.png"
    documents.put("/odd-client.json", metadata)
    app = App(Mounted(pds), client_id=client_id, redirect_uri=documents.origin + "/callback")
    person = Person(pds)
    consent = await person.sign_in(await person.open(app, await push(app)))
    assert consent.code == 200 and "<h1>Allow Loopback web app?</h1>" in text(consent)
    csp = consent.header("content-security-policy")
    assert "unsafe-inline' x" not in csp and "img-src" not in csp and "<img" not in consent.body.decode()


@pytest_twisted.ensureDeferred
async def test_the_device_cookie_is_secure_on_an_https_server(tmp_path):
    pds = await start_pds(make_settings(tmp_path / "data", public_url="https://pds.example.com"))
    try:
        app = App(Mounted(pds))
        # Pushed through the server's own store: PAR's proofs would name https://pds.example.com.
        request_uri = pds.service.app.oauth.pending.push(AuthorizationRequest(
            client_id=app.client_id, redirect_uri=CALLBACK, scope="atproto", state="st-1",
            code_challenge=app.challenge))
        page = await Person(pds).open(app, request_uri)
        assert page.code == 200, page.body
        cookie = page.header("set-cookie")
        assert cookie.startswith("leafpds_device=") and "Secure" in cookie and "HttpOnly" in cookie
    finally:
        await pds.service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_browser_remembers_an_account_when_asked_and_for_a_week(pds):
    did = await add_alice(pds)
    app = App(Mounted(pds))
    person = Person(pds)
    sessions = await count(pds, "refresh_tokens")
    consent = await person.sign_in(await person.open(app, await push(app)), remember=False)
    back_at_client(await person.act(consent, "allow"))
    # Not remembered: not offered, and the sign-in's session is over already.
    assert await count(pds, "oauth_device_accounts") == 0 and await count(pds, "refresh_tokens") == sessions
    page = await person.open(app, await push(app))
    assert "Continue as" not in text(page)
    consent = await person.sign_in(page)
    back_at_client(await person.act(consent, "allow"))
    assert "Continue as" in text(await person.open(app, await push(app)))
    # Offered for a week after the sign-in, then the password is asked again.
    device, now = person.cookies["leafpds_device"], time.time()
    offered = await pds.service.app.db.read(device_accounts_unit, device, now + 6 * 24 * 3600)
    assert [a.did for a in offered] == [did]
    assert await pds.service.app.db.read(device_accounts_unit, device, now + 8 * 24 * 3600) == []
    # Forget: off the chooser, its session over; the page goes on.
    page = await person.open(app, await push(app))
    forgotten = await person.act(page, "forget", did=did)
    assert forgotten.code == 200 and "Continue as" not in text(forgotten) and "<h1>Sign in</h1>" in text(forgotten)
    assert await count(pds, "oauth_device_accounts") == 0 and await count(pds, "refresh_tokens") == sessions
    assert (await person.act(forgotten, "choose", did=did)).code == 403


@pytest_twisted.ensureDeferred
async def test_an_app_password_does_not_sign_in_here(pds):
    did = await add_alice(pds)
    created = await pds.service.app.accounts.create_app_password(did, "phone", False)
    sessions = await count(pds, "refresh_tokens")
    app = App(Mounted(pds))
    person = Person(pds)
    refused = await person.sign_in(await person.open(app, await push(app)), password=created["password"])
    assert refused.code == 403 and "use your own password" in text(refused)
    # Nothing stays of it: no session, nothing offered, nothing issued.
    assert await count(pds, "refresh_tokens") == sessions
    assert await count(pds, "oauth_device_accounts") == 0 and await count(pds, "oauth_codes") == 0


@pytest_twisted.ensureDeferred
async def test_sign_in_with_google_on_the_page_creates_the_account_too(tmp_path):
    world = await start_world(tmp_path / "data")
    pds, _github, google = world
    try:
        app = App(Mounted(pds))
        person = Person(pds)
        page = await person.open(app, await push(app, login_hint=None))
        to_google = await person.act(page, "provider", provider="google")
        assert to_google.code == 303 and to_google.header("location").startswith(google.url)
        chooser = await person.get(local(await person.approve(to_google.header("location"))))
        assert chooser.code == 200 and "<h1>Choose your handle</h1>" in text(chooser)
        back = await person.choose_handle(chooser, "ada-oauth")
        consent = await person.get(back.header("location"))
        assert consent.code == 200 and "@ada-oauth.test" in text(consent)
        params = back_at_client(await person.act(consent, "allow"))
        status, tokens = await app.exchange(params["code"])
        assert status == 200 and tokens["sub"] == await pds.service.app.accounts.did_for_handle("ada-oauth.test")
    finally:
        await stop_world(world)
