"""
The whole atproto OAuth flow for a confidential client: a web app whose
``client_id`` is its metadata document at ``https://localhost:<port>/…``,
served over TLS on loopback with its JWK set, that authenticates with
``private_key_jwt`` (ES256).  The official client
(``@atproto/oauth-client-node`` with a ``keyset``, tests/js-oauth/page-client.mjs)
drives it against a real leafpds run with ``oauth_allow_local_clients``;
headless Chromium plays the person (password sign-in, consent remembered,
then straight back), coming back to the app's site, whose callback URL the
test hands to the client.

leafpds fetches the documents through its production path
(:mod:`leafpds.oauth.clients` over :mod:`leafpds.outbound`, TLS checked
against the system's authorities): the test makes it trust the app's
certificate the way an operator would trust a private authority, with
OpenSSL's ``SSL_CERT_FILE``.
"""

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from jwt.algorithms import ECAlgorithm
from twisted.internet.threads import deferToThread

from leafpds.oauth.assertions import ASSERTION_TYPE
from leafpds.oauth.tokens import REFRESH_LIFETIME_CONFIDENTIAL
from tests.documents_server import DocumentsServer
from tests.harness import make_settings, start_pds
from tests.oauth_app import App, Mounted, refused
from tests.oauth_keys import ClientKey
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS
from tests.test_oauth_official_page import PASSWORD, OfficialApp, check_the_app_worked

NAME = "Leaf Test App"
KID = "leaf-app-2026"


class WebApp:
    """
    The app's own site, ``https://localhost:<port>`` with a certificate of
    its own (``ca``): its client metadata document and, with ``jwks_uri``,
    its JWK set; and ``description``, what page-client.mjs needs to be it.
    """

    def __init__(self, folder: Path) -> None:
        self.site = DocumentsServer.start(tls=True)
        self.key = ClientKey(kid=KID)
        self.origin = self.site.origin
        self.client_id = self.origin + "/client-metadata.json"
        self.redirect_uri = self.origin + "/callback"
        self.ca = folder / "web-app-ca.pem"
        self.ca.write_bytes(self.site.cert_pem or b"")
        self.description = folder / "web-app.json"
        self.metadata: dict = {}
        self.publish([self.key.jwk], inline=False)

    def publish(self, keys: list[dict], *, inline: bool) -> None:
        """Serve metadata whose key set is ``keys``, in the document or at its ``jwks_uri``."""
        self.metadata = {
            "client_id": self.client_id,
            "client_name": NAME,
            "client_uri": self.origin,
            "application_type": "web",
            "redirect_uris": [self.redirect_uri],
            "scope": "atproto transition:generic",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "dpop_bound_access_tokens": True,
        }
        if inline:
            self.metadata["jwks"] = {"keys": keys}
        else:
            self.metadata["jwks_uri"] = self.site.put("/jwks.json", {"keys": keys})
        self.site.put("/client-metadata.json", self.metadata)
        # Where the browser comes back to (the app takes the query from its URL).
        self.site.put("/callback", b"back at the app", content_type="text/plain")
        private = {**ECAlgorithm.to_jwk(self.key.private, as_dict=True), "kid": KID}
        self.description.write_text(json.dumps({"metadata": self.metadata, "key": private}))


@pytest_twisted.async_yield_fixture
async def world(tmp_path, monkeypatch):
    web = WebApp(tmp_path)
    # leafpds checks TLS against the system's authorities, which OpenSSL lets
    # SSL_CERT_FILE replace (it reads it for each new TLS context): here, the
    # app's certificate alone.
    monkeypatch.setenv("SSL_CERT_FILE", str(web.ca))
    pds = await start_pds(make_settings(tmp_path / "data", oauth_allow_local_clients=True))
    try:
        did = (await pds.service.app.accounts.create("alice.test", "alice@example.com", PASSWORD)).account.did
        yield pds, web, did
    finally:
        await pds.service.stopService()
        if web.site.port.connected:
            await web.site.stop()


async def nothing_granted(pds) -> None:
    app = pds.service.app
    assert app.oauth.pending._pending == {}
    for table in ("oauth_codes", "oauth_grants", "oauth_refresh_tokens", "oauth_consents"):
        count = await app.db.read(lambda conn, t=table: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
        assert count == 0, table


def person_allows(urls: list[str], shots: Path, origin: str, handle: str) -> list[str]:
    """
    Chromium on the authorization page: signs in and allows, remembering
    the choice; the second time only picks the account and is sent straight
    back.  The callback URLs the app was sent.
    """
    from playwright.sync_api import expect, sync_playwright

    callback = origin + "/callback"
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # The browser is not told about the app's certificate (leafpds is:
            # that is what the test is about); it goes back to the app anyway.
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            callbacks: list[str] = []

            def back_at_app() -> None:
                page.wait_for_url(lambda target: target.startswith(callback))
                expect(page.get_by_text("back at the app")).to_be_visible()
                callbacks.append(page.url)

            shot = iter(range(1, 100))

            def screenshot(name: str) -> None:
                page.screenshot(path=shots / f"{next(shot):02d}-{name}.png", full_page=True)

            try:
                page.goto(urls[0])
                expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
                # Named as its metadata names it, with its site; no development-app warning.
                client = page.locator("p.client")
                expect(client).to_have_text(f"{NAME} ({urlsplit(origin).netloc}) wants to use your account.")
                expect(client.get_by_role("link")).to_have_attribute("href", origin)
                expect(page.get_by_text("This is a development app")).to_have_count(0)
                screenshot("sign-in")
                expect(page.get_by_label("Handle or email")).to_have_value(handle)
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_label("Remember this account on this browser").check()
                page.get_by_role("button", name="Sign in", exact=True).click()
                expect(page.get_by_role("heading", name=f"Allow {NAME}?")).to_be_visible()
                expect(page.get_by_text(f"Signed in as @{handle}")).to_be_visible()
                expect(page.get_by_label("Remember my choice", exact=False)).to_be_checked()
                screenshot("consent")
                page.get_by_role("button", name="Allow").click()
                back_at_app()
                screenshot("back-at-app")
                # Again: the account from the chooser, and the remembered consent
                # sends the browser straight back.
                page.goto(urls[1])
                expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
                page.get_by_role("button", name=f"@{handle}", exact=True).click()
                back_at_app()
                assert len(callbacks) == 2, callbacks
                return callbacks
            except Exception as e:
                screenshot("failure")
                raise AssertionError(f"{e}\n(screenshots in {shots})") from e
        finally:
            browser.close()


@pytest_twisted.ensureDeferred
async def test_a_confidential_web_app_signs_a_person_in(world, tmp_path, atproto_api_bundle):
    pds, web, did = world
    app = OfficialApp(atproto_api_bundle, tmp_path / "store.json", pds, client=web.description)
    urls = [(await app.run("authorize", "alice.test"))["authorize"]["url"] for _ in range(2)]
    for url in urls:
        assert url.startswith(pds.service.app.public_url + "/oauth/authorize?")
        assert parse_qs(urlsplit(url).query)["client_id"] == [web.client_id]
    # leafpds fetched the app's documents over TLS (once each: they are cached).
    assert web.site.hits == {"/client-metadata.json": 1, "/jwks.json": 1}, web.site.hits
    shots = tmp_path / "screenshots"
    shots.mkdir()
    callbacks = await deferToThread(person_allows, urls, shots, web.origin, "alice.test")
    assert web.site.hits["/callback"] == 2
    for callback in callbacks:
        query = parse_qs(urlsplit(callback).query)
        assert query["iss"] == [pds.service.app.public_url] and query["code"], callback
        # The code exchange, the refresh and the sign-out each authenticate with
        # a new assertion (one used twice is refused: the test below); the
        # grant's refresh token lives as long as a confidential client's may.
        steps = await app.run("finish", urlsplit(callback).query)
        await check_the_app_worked(pds, app, steps, did, REFRESH_LIFETIME_CONFIDENTIAL)
    # Every request that authenticated the app took an assertion of its own:
    # two pushed requests, and each time a code exchange, a refresh and a revocation.
    seen = pds.service.app.oauth.replay._seen
    assert len([key for key in seen if key.startswith(f"assertion:{web.client_id}:")]) == 2 + 2 * 3


@pytest_twisted.ensureDeferred
async def test_a_client_assertion_is_good_for_one_request(world):
    pds, web, did = world
    app = App(Mounted(pds), client_id=web.client_id, redirect_uri=web.redirect_uri, signer=web.key)
    once = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": app.assertion()}
    code, pushed = await app.par(**once)
    assert code == 201, pushed
    pending = dict(pds.service.app.oauth.pending._pending)
    refused(answer := await app.par(**once), 401, "invalid_client")
    assert "replayed" in answer[1]["error_description"]
    assert pds.service.app.oauth.pending._pending == pending  # nothing more was pushed
    # At the token endpoint: refused before the code is looked at, which stays good.
    the_code = await app.consent(pushed["request_uri"], did=did)
    refused(await app.exchange(the_code, **once), 401, "invalid_client")
    grants = "SELECT count(*) FROM oauth_grants"
    assert await pds.service.app.db.read(lambda conn: conn.execute(grants).fetchone()[0]) == 0
    code, tokens = await app.exchange(the_code)
    assert code == 200, tokens
    # The refresh token too: the same assertion twice, the second is refused
    # and the token still works with a new one.
    again = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": app.assertion()}
    code, refreshed = await app.refresh(tokens["refresh_token"], **again)
    assert code == 200, refreshed
    refused(await app.refresh(refreshed["refresh_token"], **again), 401, "invalid_client")
    code, last = await app.refresh(refreshed["refresh_token"])
    assert code == 200, last
    [auth] = await pds.service.app.db.read(lambda conn: conn.execute("SELECT client_auth FROM oauth_grants").fetchone())
    assert auth == "private_key_jwt"


@pytest_twisted.ensureDeferred
async def test_an_app_whose_metadata_cannot_be_fetched_gets_nothing(world, tmp_path, atproto_api_bundle):
    pds, web, _ = world
    await web.site.stop()
    app = OfficialApp(atproto_api_bundle, tmp_path / "store.json", pds, client=web.description)
    answer = (await app.run("authorize", "alice.test"))["refused"]
    assert (answer["status"], answer["error"]) == (400, "invalid_client_metadata"), answer
    assert "Unable to obtain client metadata" in answer["description"]
    await nothing_granted(pds)


@pytest.mark.parametrize("inline", [True, False], ids=["jwks", "jwks_uri"])
@pytest_twisted.ensureDeferred
async def test_an_app_whose_keys_lack_its_signing_key_gets_nothing(world, tmp_path, atproto_api_bundle, inline):
    pds, web, _ = world
    # The key set names the app's key id, for another key (the app's own was dropped).
    web.publish([ClientKey(kid=KID).jwk], inline=inline)
    app = OfficialApp(atproto_api_bundle, tmp_path / "store.json", pds, client=web.description)
    answer = (await app.run("authorize", "alice.test"))["refused"]
    assert (answer["status"], answer["error"]) == (401, "invalid_client"), answer
    assert "not signed by any of the client's keys" in answer["description"]
    # A fetched key set is fetched again once, in case the app had rotated its keys.
    assert web.site.hits == ({"/client-metadata.json": 1} if inline else {"/client-metadata.json": 1, "/jwks.json": 2})
    await nothing_granted(pds)
    if not inline:
        # The app publishes its key again: the cached key set does not verify,
        # so it is fetched anew, and the app is let in.
        web.publish([ClientKey(kid="spare").jwk, web.key.jwk], inline=False)
        assert "authorize" in await app.run("authorize", "alice.test")
        assert web.site.hits["/jwks.json"] == 3
