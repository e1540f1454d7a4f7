"""
A person in a real browser: headless Chromium (Debian's, driven by
Playwright) signs in with GitHub on leafpds's page, approves on the GitHub
stand-in, chooses a handle (watching the live check), lands on the account
page and creates an app password; then the Python ``atproto`` SDK logs in
with that app password and posts, as a Bluesky client would.

Screenshots of every page reached are kept under the test's temporary
folder; a failure names the folder.
"""

from pathlib import Path

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.signin import world  # noqa: F401 (a fixture)

CHROMIUM = "/usr/bin/chromium"
# As root in a sandbox without a network: no sandbox of Chromium's own, and
# none of the background calls home that this machine would refuse.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000


def sign_up_in_browser(start_url: str, shots: Path) -> tuple[str, str]:
    """Clicks through sign-up; (handle, app password) from the pages it saw."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            step = 0

            def shot(name: str) -> None:
                nonlocal step
                step += 1
                page.screenshot(path=shots / f"{step:02d}-{name}.png", full_page=True)

            try:
                page.goto(start_url)
                expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
                shot("sign-in")
                page.get_by_role("link", name="Sign in with GitHub").click()

                expect(page.get_by_role("button", name="Authorize")).to_be_visible()
                shot("github-authorize")
                page.get_by_role("button", name="Authorize").click()

                expect(page.get_by_role("heading", name="Choose your handle")).to_be_visible()
                handle = page.get_by_label("Handle")
                expect(handle).to_have_value("octo-cat.test")
                handle.fill("octo-browser")
                # The live check answers while the user types.
                expect(page.locator("#handle-status")).to_have_text("octo-browser.test is available.")
                shot("choose-handle")
                page.get_by_role("button", name="Create my account").click()

                expect(page.get_by_role("heading", name="Your account")).to_be_visible()
                expect(page.get_by_text("@octo-browser.test")).to_be_visible()
                shot("account")
                page.get_by_label("Name (the app it is for)").fill("Bluesky app")
                page.get_by_role("button", name="Create app password").click()

                expect(page.get_by_role("heading", name="App password created")).to_be_visible()
                shot("app-password")
                password = page.locator("#app-password").inner_text()
                page.get_by_role("link", name="Back to your account").click()
                expect(page.get_by_role("button", name="Revoke Bluesky app")).to_be_visible()
                shot("account-with-app-password")
                return "octo-browser.test", password
            except Exception as e:
                shot("failure")
                raise AssertionError(f"{e}\n(screenshots in {shots})") from e
        finally:
            browser.close()


def post_with_sdk(pds_url: str, handle: str, password: str) -> tuple[str, str]:
    """Log in with the app password through the atproto SDK and post; (did, post URI)."""
    from atproto import Client

    client = Client(base_url=pds_url)
    client.login(handle, password, fetch_bsky_profile=False)  # no AppView here
    did = client.com.atproto.server.get_session().did
    post = client.send_post("Hello from an app password made in a browser", profile_identify=did)
    return did, post.uri


@pytest_twisted.ensureDeferred
async def test_sign_up_in_a_real_browser_then_post_with_an_app_password(world, tmp_path):
    pds, _github, _google = world
    shots = tmp_path / "screenshots"
    shots.mkdir()
    # The public URL: the provider sends the browser back there, and the
    # sign-in cookie belongs to that host.
    start = pds.service.app.public_url + "/account/"
    handle, password = await deferToThread(sign_up_in_browser, start, shots)

    did, uri = await deferToThread(post_with_sdk, pds.url, handle, password)
    collection, rkey = uri.rsplit("/", 2)[-2:]
    record = await pds.get(
        "com.atproto.repo.getRecord", {"repo": handle, "collection": collection, "rkey": rkey}
    )
    assert record.code == 200, record.body
    assert record.json()["uri"] == f"at://{did}/app.bsky.feed.post/{rkey}"
    assert record.json()["value"]["text"] == "Hello from an app password made in a browser"
