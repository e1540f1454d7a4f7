"""
leafpds's own pages over HTTP: the sign-in page, first sign-in into the
account page, linking the other provider, app passwords, setting a
password, signing out, the live handle check, and their refusals.
"""

import html
import re

import pytest_twisted
from twisted.internet import reactor

from leafpds import crypto
from tests.documents_server import DocumentsServer
from tests.harness import Answer
from tests.signin import (  # noqa: F401 (world is a fixture)
    APP,
    Browser,
    back_at_app,
    exchange,
    local,
    start_world,
    stop_world,
    world,
)
from tests.test_accounts import PASSWORD, assert_error, bearer, create
from tests.test_migration_in import mint
from tests.test_plc_operations import did_web_document

POST = {
    "$type": "app.bsky.feed.post",
    "text": "posted with an app password",
    "createdAt": "2026-11-28T12:00:00.000Z",
}


def form_token(page: Answer) -> str:
    return html.unescape(re.search(r'name="form_token" value="([^"]+)"', page.body.decode()).group(1))


def field(page: Answer, pattern: str) -> str:
    return html.unescape(re.search(pattern, page.body.decode()).group(1))


async def sign_up_on_own_pages(pds, provider: str = "github", handle: str | None = None) -> Browser:
    """First sign-in from leafpds's sign-in page to the account page."""
    browser = Browser(pds)
    signin = await browser.get("/account/")
    assert signin.code == 200 and f'href="/auth/{provider}/login"'.encode() in signin.body
    chooser = await browser.sign_in(provider, redirect_uri=None)
    assert chooser.code == 200, chooser.body
    done = await browser.choose_handle(chooser, handle)
    assert (done.code, done.header("location")) == (303, "/account/"), done.body
    assert "leafpds_account" in browser.cookies
    return browser


async def account_page(browser: Browser) -> Answer:
    page = await browser.get("/account/")
    assert page.code == 200 and b"Your account" in page.body, page.body
    return page


async def did_of(browser: Browser) -> str:
    return field(await account_page(browser), r"<dt>DID</dt><dd><code>([^<]+)</code>")


async def app_password(browser: Browser, name: str) -> str:
    page = await account_page(browser)
    created = await browser.post_form(
        "/account/app-passwords", {"form_token": form_token(page), "name": name}
    )
    assert created.code == 200, created.body
    return field(created, r'<output class="secret" id="app-password">([^<]+)</output>')


async def session(pds, identifier: str, password: str) -> Answer:
    return await pds.post(
        "com.atproto.server.createSession", {"identifier": identifier, "password": password}
    )


@pytest_twisted.ensureDeferred
async def test_first_sign_in_on_own_pages_lands_on_the_account_page(world):
    pds, _github, _google = world
    browser = await sign_up_on_own_pages(pds)
    page = await account_page(browser)
    text = page.body.decode()
    assert "@octo-cat.test" in text and "did:plc:" in text
    assert "GitHub: linked" in text and "Google: not linked" in text
    assert "Password: none yet" in text
    # Pages are never cached, framed or given scripts beyond their own.
    assert page.header("cache-control") == "no-store"
    assert page.header("x-frame-options") == "DENY"
    csp = page.header("content-security-policy")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp

    # A second sign-in from a new browser finds the same account.
    again = Browser(pds)
    answer = await again.sign_in("github", redirect_uri=None)
    assert (answer.code, answer.header("location")) == (302, "/account/")
    assert await did_of(again) == await did_of(browser)


@pytest_twisted.ensureDeferred
async def test_the_account_cookie_is_http_only_and_scoped(world):
    pds, _github, _google = world
    browser = Browser(pds)
    chooser = await browser.sign_in("github", redirect_uri=None)
    done = await browser.choose_handle(chooser)
    set_cookie = next(
        c for c in done.headers.getRawHeaders("set-cookie") if c.startswith("leafpds_account=")
    ).lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "path=/account/" in set_cookie


@pytest_twisted.ensureDeferred
async def test_linking_google_lets_it_sign_in_to_the_same_did(world):
    pds, _github, _google = world
    browser = await sign_up_on_own_pages(pds)
    did = await did_of(browser)

    page = await account_page(browser)
    to_google = await browser.post_form(
        "/account/link", {"form_token": form_token(page), "provider": "google"}
    )
    assert to_google.code == 303
    callback = await browser.approve(to_google.header("location"))
    linked = await browser.get(local(callback))
    assert (linked.code, linked.header("location")) == (302, "/account/?done=linked-google")
    page = await browser.get("/account/?done=linked-google")
    assert b"Google: linked" in page.body and b"Google now signs you in" in page.body

    # Google alone now signs in to the same account, on these pages and for apps.
    other = Browser(pds)
    await other.sign_in("google", redirect_uri=None)
    assert await did_of(other) == did
    params = back_at_app(await Browser(pds).sign_in("google"))
    assert (await exchange(pds, params["code"])).json()["did"] == did


@pytest_twisted.ensureDeferred
async def test_an_identity_of_another_account_cannot_be_linked(world):
    pds, _github, google = world
    owner = await sign_up_on_own_pages(pds, "google")
    google_did = await did_of(owner)
    browser = await sign_up_on_own_pages(pds, "github")

    page = await account_page(browser)
    to_google = await browser.post_form(
        "/account/link", {"form_token": form_token(page), "provider": "google"}
    )
    refused = await browser.get(local(await browser.approve(to_google.header("location"))))
    assert refused.code == 409 and b"already belongs to another account" in refused.body
    assert b"Google: not linked" in (await account_page(browser)).body
    again = Browser(pds)
    await again.sign_in("google", redirect_uri=None)
    assert await did_of(again) == google_did


@pytest_twisted.ensureDeferred
async def test_app_passwords_sign_in_bluesky_clients_and_can_be_revoked(world):
    pds, _github, _google = world
    browser = await sign_up_on_own_pages(pds)
    secret = await app_password(browser, "My phone")
    assert re.fullmatch(r"[a-z2-7]{4}(-[a-z2-7]{4}){3}", secret)
    assert b"My phone" in (await account_page(browser)).body

    signed_in = await session(pds, "octo-cat.test", secret)
    assert signed_in.code == 200, signed_in.body
    access = signed_in.json()["accessJwt"]
    did = signed_in.json()["did"]
    posted = await pds.post(
        "com.atproto.repo.createRecord",
        {"repo": did, "collection": "app.bsky.feed.post", "record": POST},
        headers=bearer(access),
    )
    assert posted.code == 200, posted.body

    # An app password signs apps in, never the account pages.
    other = Browser(pds)
    refused = await other.post_form("/account/signin", {"identifier": "octo-cat.test", "password": secret})
    assert refused.code == 403 and "leafpds_account" not in other.cookies

    page = await account_page(browser)
    revoked = await browser.post_form(
        "/account/app-passwords/revoke", {"form_token": form_token(page), "name": "My phone"}
    )
    assert revoked.header("location") == "/account/?done=revoked"
    assert b"My phone" not in (await account_page(browser)).body
    assert_error(await session(pds, "octo-cat.test", secret), 401, "AuthenticationRequired")
    # The app's session ended with it.
    me = await pds.get("com.atproto.server.getSession", headers=bearer(access))
    assert me.code in (400, 401)


@pytest_twisted.ensureDeferred
async def test_forms_need_the_session_and_its_form_token(world):
    pds, _github, _google = world
    browser = await sign_up_on_own_pages(pds)
    stranger = Browser(pds)
    page = await account_page(browser)
    token = form_token(page)

    for who, fields in [
        (browser, {"name": "no token"}),
        (browser, {"name": "wrong token", "form_token": "0" * 32}),
        (stranger, {"name": "no session", "form_token": token}),
    ]:
        answer = await who.post_form("/account/app-passwords", fields)
        assert answer.code == 403, answer.body
    assert b"None yet." in (await account_page(browser)).body


@pytest_twisted.ensureDeferred
async def test_an_account_made_by_sign_in_can_set_a_password(world):
    pds, _github, _google = world
    browser = await sign_up_on_own_pages(pds)
    assert_error(await session(pds, "octo-cat.test", "a new long password"), 401, "AuthenticationRequired")

    page = await account_page(browser)
    for fields, problem in [
        ({"password": "a new long password", "confirm": "another one"}, b"differ"),
        ({"password": "short", "confirm": "short"}, b"at least 8"),
    ]:
        answer = await browser.post_form("/account/password", {"form_token": form_token(page), **fields})
        assert answer.code == 400 and problem in answer.body
    assert_error(await session(pds, "octo-cat.test", "short"), 401, "AuthenticationRequired")

    done = await browser.post_form("/account/password", {
        "form_token": form_token(page), "password": "a new long password", "confirm": "a new long password",
    })
    assert done.header("location") == "/account/?done=password"
    assert b"Password: set" in (await account_page(browser)).body
    signed_in = await session(pds, "octo-cat.test", "a new long password")
    assert signed_in.code == 200 and signed_in.json()["did"] == await did_of(browser)

    # The password also opens the account pages.
    other = Browser(pds)
    answer = await other.post_form(
        "/account/signin", {"identifier": "octo-cat.test", "password": "a new long password"}
    )
    assert (answer.code, answer.header("location")) == (303, "/account/")
    assert await did_of(other) == await did_of(browser)
    wrong = await Browser(pds).post_form("/account/signin", {"identifier": "octo-cat.test", "password": "nope nope"})
    assert wrong.code == 401 and b"Invalid identifier or password" in wrong.body


@pytest_twisted.ensureDeferred
async def test_signing_out_ends_the_session(world):
    pds, _github, _google = world
    browser = await sign_up_on_own_pages(pds)
    old_cookie = dict(browser.cookies)
    page = await account_page(browser)
    out = await browser.post_form("/account/signout", {"form_token": form_token(page)})
    assert (out.code, out.header("location")) == (303, "/account/")
    assert "leafpds_account" not in browser.cookies
    assert b"Sign in with GitHub" in (await browser.get("/account/")).body

    # The old cookie, replayed, no longer opens the account.
    replay = Browser(pds)
    replay.cookies = old_cookie
    page = await replay.get("/account/")
    assert b"Your account" not in page.body and b"Sign in with GitHub" in page.body


@pytest_twisted.ensureDeferred
async def test_an_email_already_in_use_is_never_joined_automatically(world):
    pds, _github, _google = world
    taken = await create(pds, "octo", email="octo@example.com")  # GitHub's primary email
    assert taken.code == 200
    browser = Browser(pds)
    refused = await browser.sign_in("github", redirect_uri=None)
    assert refused.code == 409 and b"already uses octo@example.com" in refused.body
    assert b"link GitHub from its account page" in refused.body
    assert_error(await pds.get("com.atproto.identity.resolveHandle", {"handle": "octo-cat.test"}), 400, "HandleNotFound")

    # Its owner signs in with the password and links GitHub instead.
    await browser.post_form("/account/signin", {"identifier": "octo.test", "password": PASSWORD})
    page = await account_page(browser)
    to_github = await browser.post_form("/account/link", {"form_token": form_token(page), "provider": "github"})
    linked = await browser.get(local(await browser.approve(to_github.header("location"))))
    assert linked.header("location") == "/account/?done=linked-github"
    params = back_at_app(await Browser(pds).sign_in("github"))
    assert (await exchange(pds, params["code"])).json()["did"] == taken.json()["did"]


@pytest_twisted.ensureDeferred
async def test_cancelled_sign_in_on_own_pages_shows_an_error_page(world):
    pds, _github, _google = world
    browser = Browser(pds)
    callback = await browser.approve(await browser.to_provider("google", redirect_uri=None), "deny")
    answer = await browser.get(local(callback))
    assert answer.code == 400 and b"cancelled" in answer.body
    assert "leafpds_account" not in browser.cookies


@pytest_twisted.ensureDeferred
async def test_live_handle_check(world):
    pds, _github, _google = world
    await sign_up_on_own_pages(pds)
    for given, available, message in [
        ("fresh-name", True, "fresh-name.test is available."),
        ("octo-cat", False, "octo-cat.test is already taken."),
        ("Octo-Cat.test", False, "octo-cat.test is already taken."),
        ("x", False, "Handle too short"),
        ("bad_name!", False, None),
    ]:
        answer = await pds.request("GET", "/auth/handle?handle=" + given)
        assert answer.code == 200 and answer.json()["available"] is available, (given, answer.body)
        if message:
            assert message in answer.json()["message"]
    chooser = await Browser(pds).sign_in("google", redirect_uri=None)
    assert b'aria-live="polite"' in chooser.body and b"/auth/handle?" in chooser.body


@pytest_twisted.ensureDeferred
async def test_no_password_signup_refuses_create_account_but_not_sign_in(tmp_path):
    started = await start_world(tmp_path / "data", no_password_signup=True)
    pds = started[0]
    try:
        assert_error(await create(pds, "alice"), 400, "InvalidRequest")
        browser = await sign_up_on_own_pages(pds)
        page = await account_page(browser)
        done = await browser.post_form("/account/password", {
            "form_token": form_token(page), "password": "a new long password", "confirm": "a new long password",
        })
        assert done.code == 303
        assert (await session(pds, "octo-cat.test", "a new long password")).code == 200
    finally:
        await stop_world(started)


@pytest_twisted.ensureDeferred
async def test_no_password_signup_refuses_accounts_moving_in_too(tmp_path):
    # Anyone can mint a DID and sign its service JWT: a migration in would be
    # a way around the operator's choice, so it is refused as a sign-up is.
    documents = DocumentsServer.start()
    started = await start_world(tmp_path / "data", no_password_signup=True, allow_private_services=True)
    pds = started[0]
    try:
        did = f"did:web:localhost%3A{documents.port.getHost().port}"
        owner = crypto.K256Keypair.generate()
        documents.put("/.well-known/did.json", did_web_document(did, "webby.test", owner.did(), "https://old.example.com"))
        now = int(reactor.seconds())
        token = mint(owner, {"iss": did, "aud": pds.service.app.service_did,
                             "lxm": "com.atproto.server.createAccount", "iat": now, "exp": now + 60})
        body = {"did": did, "handle": "webby.test", "email": "webby@example.com", "password": PASSWORD}
        refused = await pds.post("com.atproto.server.createAccount", body, headers=bearer(token))
        assert_error(refused, 400, "InvalidRequest")
        assert "moving in" in refused.json()["message"]
        held = await pds.service.app.db.read(lambda conn: conn.execute(
            "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM repo_roots)").fetchone())
        assert held == (0, 0)
        assert "/.well-known/did.json" not in documents.hits  # refused before anything was fetched
    finally:
        await stop_world(started)
        await documents.stop()


@pytest_twisted.ensureDeferred
async def test_malformed_page_requests_get_a_4xx_page_and_change_nothing(world):
    pds, _github, _google = world
    browser = await sign_up_on_own_pages(pds)
    did = await did_of(browser)
    junk = [
        b"",
        b"%ff%fe=%00",
        b"form_token=" + b"A" * 100_000,
        b"name=" + "é".encode() * 70 + b"&form_token=x",
        b"provider=github&provider=google",
        b"\x00\x01\x02garbage",
    ]
    paths = [
        "/account/signin", "/account/signout", "/account/link", "/account/app-passwords",
        "/account/app-passwords/revoke", "/account/password", "/auth/signup", "/auth/exchange",
    ]
    for path in paths:
        for body in junk:
            for content_type in ["application/x-www-form-urlencoded", "text/plain", "application/json"]:
                answer = await pds.request(
                    "POST", path, data=body, allow_redirects=False,
                    headers={"Content-Type": content_type, "Cookie": f"leafpds_account={body[:40].decode('latin-1')}"},
                )
                assert 300 <= answer.code < 500, (path, body[:20], content_type, answer.code, answer.body[:200])
                assert b"Traceback" not in answer.body and b"/leafpds/" not in answer.body
    for path in ["/auth/handle?handle=%ff%fe", "/auth/handle?handle=" + "a" * 5000, "/auth/github/callback?state=%00",
                 "/auth/nowhere/login", "/account/nothing-here", "/auth/google/login?redirect_uri=javascript:alert(1)"]:
        answer = await Browser(pds).get(path)
        assert answer.code < 500, (path, answer.code, answer.body[:200])
    page = await account_page(browser)
    assert did in page.body.decode() and b"None yet." in page.body and b"Password: none yet" in page.body


@pytest_twisted.ensureDeferred
async def test_changing_the_password_signs_out_every_other_session_but_app_passwords(world):
    pds, _github, _google = world
    browser = await sign_up_on_own_pages(pds)
    page = await account_page(browser)
    await browser.post_form("/account/password", {
        "form_token": form_token(page), "password": "the first password", "confirm": "the first password",
    })
    by_password = (await session(pds, "octo-cat.test", "the first password")).json()
    app = (await session(pds, "octo-cat.test", await app_password(browser, "Phone"))).json()
    elsewhere = Browser(pds)
    await elsewhere.sign_in("github", redirect_uri=None)
    await account_page(elsewhere)

    page = await account_page(browser)
    changed = await browser.post_form("/account/password", {
        "form_token": form_token(page), "password": "the second password", "confirm": "the second password",
    })
    assert changed.header("location") == "/account/?done=password"
    # This browser stays signed in; the other browser and the old password's session do not.
    assert b"Your other sessions were signed out" in (await browser.get("/account/?done=password")).body
    assert b"Your account" not in (await elsewhere.get("/account/")).body
    old = await pds.get("com.atproto.server.getSession", headers=bearer(by_password["accessJwt"]))
    assert old.code in (400, 401)
    refreshed = await pds.post(
        "com.atproto.server.refreshSession", headers=bearer(by_password["refreshJwt"])
    )
    assert refreshed.code in (400, 401)
    assert_error(await session(pds, "octo-cat.test", "the first password"), 401, "AuthenticationRequired")
    # The app with its own app password goes on.
    assert (await pds.get("com.atproto.server.getSession", headers=bearer(app["accessJwt"]))).code == 200


@pytest_twisted.ensureDeferred
async def test_the_pages_without_their_trailing_slash_redirect_to_it(world):
    pds, _github, _google = world
    for path in ["/account", "/auth"]:
        answer = await pds.request("GET", path, allow_redirects=False, headers={"Host": "elsewhere.example"})
        assert answer.code in (301, 302, 308) and answer.header("location") == path + "/", answer.body
    assert b"Sign in" in (await pds.request("GET", "/account")).body
    assert b"Sign in" in (await pds.request("GET", "/auth")).body


@pytest_twisted.ensureDeferred
async def test_unknown_page_paths_and_page_bugs_get_pages_without_details(world, monkeypatch):
    pds, _github, _google = world
    missing = await pds.request("GET", "/account/nothing-here")
    assert missing.code == 404 and missing.header("content-type").startswith("text/html")

    async def broken(did):
        raise RuntimeError("a secret detail")

    monkeypatch.setattr(pds.service.app.accounts, "linked_identities", broken)
    browser = await sign_up_on_own_pages(pds)
    failed = await browser.get("/account/")
    assert failed.code == 500 and b"Something went wrong" in failed.body
    assert b"secret detail" not in failed.body and b"Traceback" not in failed.body


# Creating an account with a password on the sign-in page.


SIGN_UP = {"handle": "newbie", "email": "newbie@example.com", "password": PASSWORD, "confirm": PASSWORD}


async def accounts_count(pds) -> int:
    return (await pds.service.app.db.read(lambda c: c.execute("SELECT count(*) FROM accounts").fetchone()))[0]


@pytest_twisted.ensureDeferred
async def test_a_newcomer_creates_an_account_with_a_password_on_the_sign_in_page(world):
    pds, _github, _google = world
    browser = Browser(pds)
    page = await browser.get("/account/")
    assert b'action="/account/signup"' in page.body and b"Create my account" in page.body
    done = await browser.post_form("/account/signup", SIGN_UP)
    assert (done.code, done.header("location")) == (303, "/account/"), done.body
    page = await account_page(browser)
    assert b"@newbie.test" in page.body and b"Password: set" in page.body
    # The same account as createAccount makes: a session with the password.
    answer = await session(pds, "newbie.test", PASSWORD)
    assert answer.code == 200 and answer.json()["did"] == await did_of(browser)


@pytest_twisted.ensureDeferred
async def test_sign_up_refusals_keep_what_was_typed_and_create_nothing(world):
    pds, _github, _google = world
    await create(pds, "taken")
    before = await accounts_count(pds)
    cases = [
        ({**SIGN_UP, "confirm": "something else entirely"}, 400, "The two passwords differ."),
        ({**SIGN_UP, "handle": "taken"}, 400, "Handle already taken"),
        ({**SIGN_UP, "handle": "a"}, 400, "Handle too short"),
        ({**SIGN_UP, "email": "not an email"}, 400, None),
        ({**SIGN_UP, "password": "short", "confirm": "short"}, 400, None),
    ]
    for fields, status, message in cases:
        answer = await Browser(pds).post_form("/account/signup", fields)
        assert answer.code == status, (fields, answer.body)
        alert = field(answer, r"<p role=alert>([^<]+)</p>")
        assert message is None or message in alert, alert
        # What was typed is still there (but never the password).
        assert f'value="{fields["handle"]}"'.encode() in answer.body
        assert fields["password"].encode() not in answer.body
        assert "leafpds_account" not in answer.headers.getRawHeaders("set-cookie", [""])[0]
    assert await accounts_count(pds) == before


@pytest_twisted.ensureDeferred
async def test_sign_up_follows_the_servers_rules(tmp_path):
    started = await start_world(tmp_path / "data", no_password_signup=True)
    try:
        pds = started[0]
        page = await Browser(pds).get("/account/")
        assert b"/account/signup" not in page.body
        answer = await Browser(pds).post_form("/account/signup", SIGN_UP)
        assert answer.code == 403 and await accounts_count(pds) == 0
    finally:
        await stop_world(started)
    started = await start_world(tmp_path / "invites", invite_required=True, admin_password="admin secret")
    try:
        pds = started[0]
        page = await Browser(pds).get("/account/")
        assert b'name="invite"' in page.body
        answer = await Browser(pds).post_form("/account/signup", SIGN_UP)
        assert answer.code == 400 and b"invite" in answer.body.lower() and await accounts_count(pds) == 0
    finally:
        await stop_world(started)


@pytest_twisted.ensureDeferred
async def test_without_providers_the_sign_in_page_still_lets_a_newcomer_in(pds):
    browser = Browser(pds)
    page = await browser.get("/account/")
    assert b'href="/auth/' not in page.body and b'action="/account/signup"' in page.body
    done = await browser.post_form("/account/signup", SIGN_UP)
    assert done.code == 303
    assert b"@newbie.test" in (await account_page(browser)).body
