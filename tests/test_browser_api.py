"""
A browser app on its own origin with leafpds as its PDS: a static page
served from ``http://localhost:<port>`` loads ``@atproto/api`` (bundled from
the pinned npm package, tests/jsbundle.py) in headless Chromium, signs up,
logs in and posts on leafpds at ``http://127.0.0.1:<other port>``, reads
the author feed through leafpds's proxy from a stand-in AppView that
verifies the service JWT, and reads its preferences.  Every call is a
cross-origin fetch with headers of @atproto/api's own (``authorization``,
``content-type``, ``atproto-accept-labelers``), so it passes only if
leafpds's CORS preflights and exposed headers are right.

Screenshots are kept under the test's temporary folder; a failure names it
and carries the browser console.
"""

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.jsbundle import JS_DIR
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS
from tests.test_proxy import services  # noqa: F401 (a fixture)

PAGE = JS_DIR / "api-app.html"
AUTHOR_FEED = "app.bsky.feed.getAuthorFeed"
# The labeler @atproto/api asks for on every call unless told otherwise.
BSKY_LABELER = "did:plc:ar7c4by46qjdydhdevvrndac"
ACCOUNT = {"handle": "webapp.test", "email": "webapp@example.com", "password": "correct horse battery"}
TEXT = "Posted from a page on another origin"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def serve_page(bundle: Path) -> tuple[str, Any]:
    """The app's own server: the page and the bundle, on loopback; (page URL, listening port)."""
    root = Resource()
    root.putChild(b"", Data(PAGE.read_bytes(), "text/html; charset=utf-8"))
    root.putChild(b"atproto-api.js", Data(bundle.read_bytes(), "text/javascript; charset=utf-8"))
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(root))
    # "localhost", not the PDS's "127.0.0.1": another origin whatever the ports.
    return f"http://localhost:{listening.getHost().port}/", listening


def drive_page(page_url: str, service: str, between: Callable[[dict], Any], shots: Path) -> dict:
    """
    Runs the page's two steps in Chromium (``between`` runs in the reactor
    after the first, given its result); both steps' results, merged.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"page error: {error}"))
            # A request CORS blocks shows up here (its reason only in DevTools).
            page.on("requestfailed", lambda r: console.append(f"request failed: {r.method} {r.url}: {r.failure}"))
            step = 0

            def shot(name: str) -> None:
                nonlocal step
                step += 1
                page.screenshot(path=shots / f"{step:02d}-{name}.png", full_page=True)

            try:
                page.goto(page_url)
                page.wait_for_function("window.pageReady === true")
                posted = page.evaluate("(args) => window.signUpAndPost(args)", {"service": service, "text": TEXT, **ACCOUNT})
                shot("posted")
                blockingCallFromThread(reactor, lambda: ensureDeferred(between(posted)))
                read = page.evaluate("(args) => window.readBack(args)", {"actor": posted["did"]})
                shot("read-back")
                return {**posted, **read}
            except Exception as e:
                shot("failure")
                raise AssertionError(f"{e}\nbrowser console:\n" + "\n".join(console) + f"\n(screenshots in {shots})") from e
        finally:
            browser.close()


@pytest_twisted.ensureDeferred
async def test_a_page_on_another_origin_uses_leafpds_through_atproto_api(services, atproto_api_bundle, tmp_path):
    pds, appview, _ = services
    page_url, listening = await serve_page(atproto_api_bundle)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    canned: dict[str, Any] = {}

    async def answer_the_author_feed(posted: dict) -> None:
        # The AppView "has indexed" the post: a lexicon-valid feed holding it,
        # at the repo's current rev (so no read-after-write merge applies).
        collection, rkey = posted["post"]["uri"].rsplit("/", 2)[-2:]
        record = await pds.get("com.atproto.repo.getRecord", {"repo": posted["did"], "collection": collection, "rkey": rkey})
        assert record.code == 200, record.body
        latest = await pds.get("com.atproto.sync.getLatestCommit", {"did": posted["did"]})
        assert latest.code == 200, latest.body
        canned["rev"] = latest.json()["rev"]
        canned["feed"] = {"feed": [{"post": {
            "uri": posted["post"]["uri"], "cid": posted["post"]["cid"],
            "author": {"did": posted["did"], "handle": posted["handle"]},
            "record": record.json()["value"],
            "indexedAt": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }}], "cursor": "next-page"}
        appview.route(AUTHOR_FEED, body=canned["feed"], headers={
            "atproto-repo-rev": canned["rev"], "content-language": "en",
            "atproto-content-labelers": BSKY_LABELER, "content-type": "application/json; charset=utf-8",
        })

    try:
        seen = await deferToThread(drive_page, page_url, pds.url, answer_the_author_feed, shots)
    finally:
        await listening.stopListening()

    # Signed up and logged in; leafpds's own answer showed its exposed headers.
    assert seen["handle"] == ACCOUNT["handle"] and seen["did"].startswith("did:plc:")
    assert int(seen["loginHeaders"].get("ratelimit-remaining", -1)) > 0, seen["loginHeaders"]
    assert seen["loginHeaders"].get("ratelimit-policy"), seen["loginHeaders"]
    # Every call crossed origins: the page's is neither the PDS URL it was
    # given nor the one the DID document moved the agent to.
    assert origin(page_url) not in {origin(pds.url), origin(seen["pdsUrl"] or pds.url)}

    # The post is in the repo as the page wrote it.
    collection, rkey = seen["post"]["uri"].rsplit("/", 2)[-2:]
    assert collection == "app.bsky.feed.post"
    record = await pds.get("com.atproto.repo.getRecord", {"repo": seen["did"], "collection": collection, "rkey": rkey})
    assert record.code == 200, record.body
    assert record.json()["cid"] == seen["post"]["cid"] and record.json()["value"]["text"] == TEXT

    # The feed came through the proxy, with a service JWT the AppView verified,
    # and the headers @atproto/api added (allowed by the preflight) went along.
    (call,) = [r for r in appview.received if r.nsid == AUTHOR_FEED]
    assert call.error is None
    assert call.claims["iss"] == seen["did"] and call.claims["aud"] == appview.did
    assert call.claims["lxm"] == AUTHOR_FEED
    assert call.query == {"actor": [seen["did"]], "limit": ["10"]}
    assert f"{BSKY_LABELER};redact" in call.headers["atproto-accept-labelers"]
    assert seen["feed"] == canned["feed"]
    # Readable by the page only because leafpds exposes them.
    visible = seen["feedHeaders"]
    assert visible.get("atproto-repo-rev") == canned["rev"], visible
    assert visible.get("content-language") == "en", visible
    assert visible.get("atproto-content-labelers") == BSKY_LABELER, visible

    # Preferences: set and read back by the page, and stored by leafpds.
    assert seen["adultContentEnabled"] is True
    adult = {"$type": "app.bsky.actor.defs#adultContentPref", "enabled": True}
    assert adult in seen["preferences"]
    login = await pds.post("com.atproto.server.createSession", {"identifier": ACCOUNT["handle"], "password": ACCOUNT["password"]})
    stored = await pds.get("app.bsky.actor.getPreferences", headers={"Authorization": f"Bearer {login.json()['accessJwt']}"})
    assert adult in stored.json()["preferences"]


def test_the_bundle_is_one_module_exporting_the_agents(atproto_api_bundle):
    # What the fixture promises another page: the agents, from one file with no imports left.
    source = atproto_api_bundle.read_text()
    assert "\nimport " not in source and " from \"" not in source.split("export {")[-1]
    listed = subprocess.run(
        ["node", "--input-type=module", "-e",
         f"const m = await import({json.dumps(atproto_api_bundle.as_uri())}); console.log(JSON.stringify(Object.keys(m).sort()))"],
        capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == ["Agent", "AtpAgent", "CredentialSession", "RichText"]
