"""
CORS over real HTTP: what a browser app on another origin needs from
leafpds.  Preflights allow the request headers @atproto/api and the OAuth
and proxy flows send; every answer (leafpds's own, errors, proxied ones)
exposes the headers those clients read.  tests/test_browser_api.py proves
the same in Chromium.
"""

import re

import pytest
import pytest_twisted

from leafpds.xrpc.resource import CORS_ALLOW_HEADERS
from tests.test_proxy import services, signed_in  # noqa: F401 (a fixture)

ORIGIN = "http://localhost:5173"
# Sent by @atproto/api (authorization, content-type, atproto-proxy,
# atproto-accept-labelers), by OAuth sessions (dpop), by the Bluesky app (x-bsky-topics).
CLIENT_REQUEST_HEADERS = ["authorization", "content-type", "atproto-proxy", "atproto-accept-labelers", "dpop", "x-bsky-topics"]
# Read by clients from answers (rate limits, read-after-write, labelers, DPoP nonces and challenges).
CLIENT_READ_HEADERS = [
    "atproto-repo-rev", "atproto-content-labelers", "content-language", "dpop-nonce", "www-authenticate",
    "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy",
]


def names(value: str | None) -> set[str]:
    """A comma-separated header list, as a browser compares it (case-insensitive)."""
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


@pytest.mark.parametrize("path", [
    "/xrpc/com.atproto.server.createSession",  # served here
    "/xrpc/app.bsky.feed.getTimeline",  # proxied
    "/xrpc/com.atproto.repo.uploadBlob",
])
@pytest_twisted.ensureDeferred
async def test_the_preflight_allows_what_atproto_clients_send(pds, path):
    answer = await pds.request("OPTIONS", path, headers={
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": ",".join(CLIENT_REQUEST_HEADERS),
    })
    assert answer.code == 204, answer.body
    assert answer.header("access-control-allow-origin") == "*"
    missing = set(CLIENT_REQUEST_HEADERS) - names(answer.header("access-control-allow-headers"))
    assert not missing, f"the preflight does not allow {missing}"
    assert {"get", "post"} <= names(answer.header("access-control-allow-methods"))
    assert int(answer.header("access-control-max-age")) > 0


@pytest_twisted.ensureDeferred
async def test_leafpds_answers_expose_what_clients_read(pds):
    _, auth = await signed_in(pds)
    for path, headers, status in [
        ("/xrpc/com.atproto.server.describeServer", {}, 200),
        ("/xrpc/app.bsky.actor.getPreferences", auth, 200),
        ("/xrpc/com.atproto.server.getSession", {}, 401),  # errors too: a client reads why
    ]:
        answer = await pds.request("GET", path, headers={**headers, "Origin": ORIGIN})
        assert answer.code == status, (path, answer.body)
        assert answer.header("access-control-allow-origin") == "*"
        missing = set(CLIENT_READ_HEADERS) - names(answer.header("access-control-expose-headers"))
        assert not missing, f"{path} does not expose {missing}"
        # The rate-limit headers are there to be read.
        assert int(answer.header("ratelimit-remaining")) > 0, path


@pytest_twisted.ensureDeferred
async def test_proxied_answers_expose_the_appviews_headers(services):
    pds, appview, _ = services
    _, auth = await signed_in(pds)
    appview.route("app.bsky.feed.getTimeline", body={"feed": []}, headers={
        "atproto-repo-rev": "3lbxyzrev2222", "atproto-content-labelers": "did:plc:labeler", "content-language": "de",
    })
    answer = await pds.request("GET", "/xrpc/app.bsky.feed.getTimeline", headers={**auth, "Origin": ORIGIN})
    assert answer.code == 200, answer.body
    assert answer.header("access-control-allow-origin") == "*"
    exposed = names(answer.header("access-control-expose-headers"))
    for name, value in [("atproto-repo-rev", "3lbxyzrev2222"), ("atproto-content-labelers", "did:plc:labeler"),
                        ("content-language", "de")]:
        assert answer.header(name) == value and name in exposed, name


def test_the_preflight_allows_every_header_atproto_api_sets(atproto_api_bundle):
    # Read from the pinned @atproto/api itself: a new header in an upgrade
    # would be refused by browsers until CORS_ALLOW_HEADERS has it.
    source = atproto_api_bundle.read_text()
    sent = set(re.findall(r"""headers\.set\(\s*["']([A-Za-z0-9-]+)["']""", source))
    assert {"authorization", "atproto-proxy", "atproto-accept-labelers"} <= {s.lower() for s in sent}, sent
    missing = {s.lower() for s in sent} - names(CORS_ALLOW_HEADERS)
    assert not missing, f"@atproto/api sets {missing}, which preflights do not allow"
