"""
Service proxying over real HTTP: a leafpds on loopback forwards the methods
it does not serve to stand-in services (tests/appview_standin.py) that
verify every service JWT on their own, with the atproto SDK, against the
PLC directory.
"""

import json
import socket

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.web.client import ResponseFailed

from leafpds import crypto
from leafpds.identity import plc
from tests.appview_standin import StandInAppView
from tests.harness import make_settings, start_pds
from tests.test_accounts import PASSWORD, bearer, create

TIMELINE = "app.bsky.feed.getTimeline"
PROFILE = "app.bsky.actor.getProfile"
LIST_CONVOS = "chat.bsky.convo.listConvos"
SEND_MESSAGE = "chat.bsky.convo.sendMessage"
REPORT = "com.atproto.moderation.createReport"


@pytest_twisted.async_yield_fixture
async def services(tmp_path):
    """(pds, appview, reports): a leafpds whose AppView and report service are stand-ins."""
    appview = await StandInAppView.start()
    reports = await StandInAppView.start()
    pds = await start_pds(make_settings(
        tmp_path / "data",
        appview_url=appview.url, appview_did=appview.did,
        report_service_url=reports.url, report_service_did=reports.did,
        allow_private_services=True,
    ))
    for standin in (appview, reports):
        standin.plc_url = pds.service.app.plc.base_url
    yield pds, appview, reports
    await pds.service.stopService()
    await appview.stop()
    await reports.stop()


async def signed_in(pds, name="alice"):
    made = (await create(pds, name=name)).json()
    return made["did"], bearer(made["accessJwt"])


async def app_password_session(pds, full, handle, privileged=False):
    made = await pds.post(
        "com.atproto.server.createAppPassword", {"name": f"app {privileged}", "privileged": privileged}, headers=full
    )
    assert made.code == 200, made.body
    login = await pds.post(
        "com.atproto.server.createSession", {"identifier": handle, "password": made.json()["password"]}
    )
    assert login.code == 200, login.body
    return bearer(login.json()["accessJwt"])


# Routing and what goes up and comes back.


@pytest_twisted.ensureDeferred
async def test_unserved_methods_go_to_the_appview_with_a_service_jwt(services):
    pds, appview, reports = services
    did, auth = await signed_in(pds)
    appview.route(TIMELINE, body={"feed": [], "cursor": "c1"}, headers={
        "atproto-repo-rev": "3abc", "atproto-content-labelers": "did:plc:labeler",
        "content-language": "fr", "content-type": "application/json; charset=utf-8",
        "x-not-forwarded": "secret",
    })
    answer = await pds.request(
        "GET", f"/xrpc/{TIMELINE}?limit=5&algorithm=reverse-chronological&x=%C3%A9",
        headers={**auth, "Accept-Language": "fr, en;q=0.5", "atproto-accept-labelers": "did:plc:l1;redact",
                 "x-bsky-topics": "t1", "x-other": "stays"},
    )
    assert answer.code == 200, answer.body
    assert answer.json() == {"feed": [], "cursor": "c1"}
    assert answer.header("atproto-repo-rev") == "3abc"
    assert answer.header("atproto-content-labelers") == "did:plc:labeler"
    assert answer.header("content-language") == "fr"
    assert answer.header("content-type") == "application/json; charset=utf-8"
    assert answer.header("x-not-forwarded") is None

    (seen,) = appview.received
    assert seen.error is None
    assert seen.claims["iss"] == did and seen.claims["aud"] == appview.did and seen.claims["lxm"] == TIMELINE
    assert 55 <= seen.claims["exp"] - seen.claims["iat"] <= 60
    assert len(seen.claims["jti"]) == 32
    assert seen.path == f"/xrpc/{TIMELINE}"
    assert seen.query == {"limit": ["5"], "algorithm": ["reverse-chronological"], "x": ["é"]}
    assert seen.headers["accept-language"] == "fr, en;q=0.5"
    assert seen.headers["atproto-accept-labelers"] == "did:plc:l1;redact"
    assert seen.headers["x-bsky-topics"] == "t1"
    assert "x-other" not in seen.headers
    # The caller's own token never goes upstream.
    assert auth["Authorization"] != seen.headers["authorization"]
    assert reports.received == []

    # The upstream's length comes back (no chunked re-encoding of a sized answer).
    from tests.test_raw_http import http_request, send_raw

    raw = await send_raw(pds.service.port.getHost().port, http_request(
        b"GET", f"/xrpc/{TIMELINE}".encode(), {b"authorization": auth["Authorization"].encode()}))
    assert raw.headers.get("content-length") == str(len(raw.body)) and "transfer-encoding" not in raw.headers


@pytest_twisted.ensureDeferred
async def test_a_post_body_goes_up_as_it_came(services):
    pds, appview, _ = services
    did, auth = await signed_in(pds)
    body = json.dumps({"actor": "did:plc:someone", "note": "é" * 1000}).encode()
    answer = await pds.request(
        "POST", "/xrpc/app.bsky.graph.muteActor", data=body,
        headers={**auth, "Content-Type": "application/json"},
    )
    assert answer.code == 200, answer.body
    (seen,) = appview.received
    assert seen.method == "POST" and seen.body == body
    assert seen.headers["content-type"] == "application/json"
    assert seen.claims["lxm"] == "app.bsky.graph.muteActor"


@pytest_twisted.ensureDeferred
async def test_the_proxy_header_routes_to_the_service_in_the_did_document(services):
    pds, appview, reports = services
    did, auth = await signed_in(pds)
    # The report service's stand-in also lists a #bsky_chat service: route there by header.
    answer = await pds.get(LIST_CONVOS, {"limit": "3"}, headers={**auth, "atproto-proxy": f"{reports.did}#bsky_chat"})
    assert answer.code == 200, answer.body
    assert answer.json()["standin"] == reports.did
    (seen,) = reports.received
    # The audience is the bare service DID.
    assert seen.claims["aud"] == reports.did and seen.claims["lxm"] == LIST_CONVOS
    assert appview.received == []


@pytest_twisted.ensureDeferred
async def test_reports_go_to_the_report_service(services):
    pds, appview, reports = services
    did, auth = await signed_in(pds)
    report = {"reasonType": "com.atproto.moderation.defs#reasonSpam", "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did}}
    answer = await pds.post(REPORT, report, headers=auth)
    assert answer.code == 200, answer.body
    (seen,) = reports.received
    assert seen.claims["aud"] == reports.did and json.loads(seen.body) == report
    assert appview.received == []


@pytest_twisted.ensureDeferred
async def test_a_large_answer_streams_through_whole(services):
    pds, appview, _ = services
    _, auth = await signed_in(pds)
    chunks = [bytes([i]) * 65536 for i in range(80)]  # 5 MB, no content-length
    appview.route("app.bsky.feed.getFeedSkeleton", chunks=chunks, headers={"content-type": "application/octet-stream"})
    response = await treq.get(f"{pds.url}/xrpc/app.bsky.feed.getFeedSkeleton", headers=auth)
    assert response.code == 200
    received = await response.content()
    assert received == b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_get_feed_asks_the_appview_for_the_generator_then_passes_a_token_for_it(services):
    pds, appview, _ = services
    did, auth = await signed_in(pds)
    feed = "at://did:plc:abcdefghijklmnopqrstuvwx/app.bsky.feed.generator/hot"
    generator = "did:web:feeds.example.com"
    appview.route("app.bsky.feed.getFeedGenerator", body={"view": {"did": generator, "uri": feed}})
    appview.route("app.bsky.feed.getFeed", body={"feed": [{"post": "at://x"}]}, aud=generator,
                  lxm="app.bsky.feed.getFeedSkeleton")
    answer = await pds.get("app.bsky.feed.getFeed", {"feed": feed, "limit": "10"}, headers=auth)
    assert answer.code == 200, [(r.nsid, r.error, r.headers.get("authorization")) for r in appview.received]
    assert answer.json() == {"feed": [{"post": "at://x"}]}
    lookup, call = appview.received
    assert lookup.nsid == "app.bsky.feed.getFeedGenerator" and lookup.query == {"feed": [feed]}
    assert lookup.claims["aud"] == appview.did
    assert call.nsid == "app.bsky.feed.getFeed" and call.query == {"feed": [feed], "limit": ["10"]}
    assert call.claims["aud"] == generator and call.claims["lxm"] == "app.bsky.feed.getFeedSkeleton"
    assert call.claims["iss"] == did

    # The AppView does not know the feed: its error, and no second call.
    appview.route("app.bsky.feed.getFeedGenerator", status=400, body={"error": "InvalidRequest", "message": "could not find feed"})
    answer = await pds.get("app.bsky.feed.getFeed", {"feed": feed}, headers=auth)
    assert (answer.code, answer.json()) == (400, {"error": "InvalidRequest", "message": "could not find feed"})
    assert len(appview.received) == 3


# Refusals: nothing is forwarded.


@pytest.mark.parametrize("header, message", [
    ("#bsky_appview", "no did specified in proxy header"),
    ("did:plc:abc", "no service id specified in proxy header"),
    ("did:plc:abc#", "no service id specified in proxy header"),
    ("did:plc:abc#a#b", "invalid proxy header format"),
    ("did:plc:abc #bsky_chat", "proxy header cannot contain spaces"),
    ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa#bsky_chat", "could not resolve proxy did"),
    ("did:web:localhost%3A1#bsky_chat", "could not resolve proxy did"),
    ("did:example:123#bsky_chat", "could not resolve proxy did"),
])
@pytest_twisted.ensureDeferred
async def test_bad_proxy_headers(services, header, message):
    pds, appview, reports = services
    _, auth = await signed_in(pds)
    answer = await pds.get(TIMELINE, headers={**auth, "atproto-proxy": header})
    assert answer.code == 400, answer.body
    assert answer.json() == {"error": "InvalidRequest", "message": message}
    assert appview.received == [] and reports.received == []


@pytest_twisted.ensureDeferred
async def test_hostile_bytes_in_forwarded_headers_are_refused_not_passed_on(services):
    from tests.test_raw_http import HOSTILE, http_request, send_raw

    pds, appview, _ = services
    _, auth = await signed_in(pds)
    port = pds.service.port.getHost().port
    for name in (b"atproto-proxy", b"accept-language", b"atproto-accept-labelers", b"x-bsky-topics"):
        for value in HOSTILE:
            request = http_request(
                b"GET", f"/xrpc/{TIMELINE}".encode(), {b"authorization": auth["Authorization"].encode(), name: value}
            )
            answer = await send_raw(port, request)
            assert (answer.code, answer.error()) == (400, ("InvalidRequest", f"Invalid {name.decode()} header"))
    assert appview.received == []


@pytest_twisted.ensureDeferred
async def test_a_did_document_without_the_service(services):
    pds, appview, _ = services
    _, auth = await signed_in(pds)
    answer = await pds.get(TIMELINE, headers={**auth, "atproto-proxy": f"{appview.did}#bsky_nothing"})
    assert answer.code == 400
    assert answer.json() == {"error": "InvalidRequest", "message": "could not resolve proxy did service url"}
    assert appview.received == []


@pytest_twisted.ensureDeferred
async def test_only_an_authenticated_account_is_proxied_for(services):
    pds, appview, _ = services
    did, auth = await signed_in(pds)
    answer = await pds.get(TIMELINE)
    assert (answer.code, answer.json()["error"]) == (401, "AuthMissing")
    answer = await pds.get(TIMELINE, headers={"Authorization": "Bearer nonsense"})
    assert answer.code in (400, 401) and answer.json()["error"] in ("InvalidToken", "AuthenticationRequired")
    # Account management is never proxied, whoever asks.
    answer = await pds.get("com.atproto.server.getAccountInviteCodes", headers=auth)
    assert (answer.code, answer.json()) == (400, {"error": "InvalidToken", "message": "Bad token method"})
    assert appview.received == []


@pytest_twisted.ensureDeferred
async def test_app_passwords_reach_chat_only_when_privileged(services):
    pds, appview, _ = services
    did, full = await signed_in(pds)
    plain = await app_password_session(pds, full, "alice.test")
    privileged = await app_password_session(pds, full, "alice.test", privileged=True)
    answer = await pds.get(LIST_CONVOS, headers=plain)
    assert (answer.code, answer.json()) == (400, {"error": "InvalidToken", "message": "Bad token method"})
    assert appview.received == []
    # A plain app password still reaches the AppView.
    assert (await pds.get(TIMELINE, headers=plain)).code == 200
    assert (await pds.get(LIST_CONVOS, headers=privileged)).code == 200
    assert [seen.claims["lxm"] for seen in appview.received] == [TIMELINE, LIST_CONVOS]


# Upstream errors, failures and time-outs.


@pytest_twisted.ensureDeferred
async def test_upstream_errors_are_remade(services):
    pds, appview, _ = services
    _, auth = await signed_in(pds)
    cases = [
        ("app.bsky.a.one", 400, {"error": "NotFound", "message": "Actor not found", "extra": 1}, {},
         400, {"error": "NotFound", "message": "Actor not found"}),
        ("app.bsky.a.two", 500, {"error": "InternalServerError", "message": "boom"}, {},
         502, {"error": "InternalServerError", "message": "boom"}),
        ("app.bsky.a.three", 503, b"<html>down</html>", {"content-type": "text/html", "retry-after": "30"},
         503, {"error": "NotEnoughResources", "message": "Upstream service answered 503"}),
        ("app.bsky.a.four", 429, {"message": "slow down"}, {"retry-after": "5"},
         429, {"error": "RateLimitExceeded", "message": "slow down"}),
    ]
    for nsid, status, body, headers, want_status, want in cases:
        appview.route(nsid, status=status, body=body, headers=headers)
        answer = await pds.get(nsid, headers=auth)
        assert (answer.code, answer.json()) == (want_status, want), nsid
        assert answer.header("retry-after") == headers.get("retry-after")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_an_unreachable_or_silent_upstream_is_a_502(tmp_path):
    port = closed_port()
    pds = await start_pds(make_settings(
        tmp_path / "data", appview_url=f"http://127.0.0.1:{port}", appview_did="did:web:nowhere.test",
    ))
    try:
        _, auth = await signed_in(pds)
        answer = await pds.get(TIMELINE, headers=auth)
        assert (answer.code, answer.json()) == (502, {"error": "UpstreamFailure", "message": "Upstream service unreachable"})

        appview = await StandInAppView.start(pds.service.app.plc.base_url)
        try:
            proxy = pds.service.xrpc.proxy
            proxy.appview = type(proxy.appview)(appview.url, appview.did, untrusted=False)
            proxy.headers_timeout = 0.5
            appview.route(TIMELINE, delay=3.0)
            answer = await pds.get(TIMELINE, headers=auth)
            assert (answer.code, answer.json()["error"]) == (502, "UpstreamFailure")

            # An upstream that stops sending part-way: the answer is cut short.
            proxy.idle_timeout = 0.5
            stalled = await listen_stalling()
            proxy.appview = type(proxy.appview)(
                f"http://127.0.0.1:{stalled.getHost().port}", appview.did, untrusted=False
            )
            response = await treq.get(f"{pds.url}/xrpc/{TIMELINE}", headers=auth)
            assert response.code == 200
            with pytest.raises(ResponseFailed):
                await response.content()
            await stalled.stopListening()
        finally:
            await appview.stop()
        assert (await pds.get("_health")).code == 200
    finally:
        await pds.service.stopService()


class Stalling(Protocol):
    """An HTTP server that sends a head and the start of a body, then nothing."""

    def dataReceived(self, data):
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)


async def listen_stalling():
    return await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Stalling))


# SSRF: targets named by a header must be public, unless allowed.


@pytest_twisted.ensureDeferred
async def test_private_targets_named_by_a_header_are_refused(tmp_path):
    appview = await StandInAppView.start()
    pds = await start_pds(make_settings(
        tmp_path / "data", appview_url=appview.url, appview_did=appview.did,
    ))
    try:
        appview.plc_url = pds.service.app.plc.base_url
        _, auth = await signed_in(pds)
        # A did:web on loopback: its document is not even fetched.
        answer = await pds.get(TIMELINE, headers={**auth, "atproto-proxy": f"{appview.did}#bsky_chat"})
        assert (answer.code, answer.json()["message"]) == (400, "could not resolve proxy did")

        # A did:plc whose document names a loopback endpoint.
        key = crypto.K256Keypair.generate()
        op = plc.build_operation(
            rotation_keys=[key.did()], signing_key=key.did(), handle="evil.test",
            pds_endpoint="https://pds.example.com", prev=None,
        )
        op["services"]["bsky_chat"] = {"type": "BskyChatService", "endpoint": appview.url}
        signed = plc.sign_operation(op, key)
        did = plc.did_for_genesis(signed)
        await pds.service.app.plc.submit(did, signed)
        answer = await pds.get(TIMELINE, headers={**auth, "atproto-proxy": f"{did}#bsky_chat"})
        assert (answer.code, answer.json()["message"]) == (400, "proxy service endpoint is not on a public address")
        assert appview.received == []

        # The configured AppView is the operator's choice: reached wherever it is.
        assert (await pds.get(TIMELINE, headers=auth)).code == 200
        assert len(appview.received) == 1
    finally:
        await pds.service.stopService()
        await appview.stop()


# A third-party client.


@pytest_twisted.ensureDeferred
async def test_the_python_sdk_client_lives_on_leafpds(services):
    from atproto import Client

    pds, appview, _ = services
    did, _auth = await signed_in(pds)
    profile = {"did": did, "handle": "alice.test", "displayName": "Alice", "followersCount": 3}
    appview.route("app.bsky.actor.getProfile", body=profile)
    post = {
        "post": {
            "uri": f"at://{did}/app.bsky.feed.post/3kabc", "cid": "bafyreib2rxk3rh6kzwq",
            "author": {"did": did, "handle": "alice.test"},
            "record": {"$type": "app.bsky.feed.post", "text": "hello", "createdAt": "2024-01-01T00:00:00.000Z"},
            "indexedAt": "2024-01-01T00:00:00.000Z",
        }
    }
    appview.route(TIMELINE, body={"feed": [post], "cursor": "next"})

    def session():
        client = Client(base_url=pds.url)
        me = client.login("alice.test", PASSWORD)  # fetches the profile through the proxy
        timeline = client.get_timeline(limit=1)
        client.app.bsky.actor.put_preferences(
            {"preferences": [{"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False}]}
        )
        preferences = client.app.bsky.actor.get_preferences()
        return me, timeline, preferences

    me, timeline, preferences = await deferToThread(session)
    assert me.display_name == "Alice" and me.followers_count == 3
    assert timeline.cursor == "next" and timeline.feed[0].post.record.text == "hello"
    assert [p.py_type for p in preferences.preferences] == ["app.bsky.actor.defs#adultContentPref"]
    assert [seen.nsid for seen in appview.received] == ["app.bsky.actor.getProfile", TIMELINE]
    assert all(seen.claims["iss"] == did for seen in appview.received)
