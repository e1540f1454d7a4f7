"""
Service JWTs: minting (ServiceAuth), the method lists the proxy shares,
getServiceAuth over HTTP, and the stand-in AppView that checks the tokens
with the atproto SDK (no leafpds code).
"""

import base64
import json

import pytest
import pytest_twisted
import treq
from atproto_crypto.verify import verify_signature as sdk_verify_signature
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from leafpds import crypto
from leafpds.accounts.service_auth import (
    ServiceAuth,
    check_proxied_method,
    is_privileged,
    is_protected,
    is_service_audience,
)
from leafpds.accounts.sessions import ACCESS, APP_PASS, APP_PASS_PRIVILEGED, AccessCredentials
from leafpds.errors import InvalidToken
from tests.appview_standin import StandInAppView
from tests.test_accounts import assert_error, bearer, create

TIMELINE = "app.bsky.feed.getTimeline"


def _segments(token: str) -> tuple[dict, dict, bytes, bytes]:
    """(header, claims, signature, signing input) of a JWT, decoded by hand."""
    header, claims, signature = token.split(".")
    decode = lambda part: base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))  # noqa: E731
    return json.loads(decode(header)), json.loads(decode(claims)), decode(signature), f"{header}.{claims}".encode()


class _Keys:
    """AccountKeys' one method ServiceAuth uses, for one account."""

    def __init__(self, did: str, key: crypto.Keypair) -> None:
        self.did, self.key = did, key

    async def signing_key(self, did: str) -> crypto.Keypair:
        assert did == self.did
        return self.key


@pytest_twisted.ensureDeferred
async def test_a_token_is_an_es256k_jwt_signed_by_the_account_key():
    key = crypto.K256Keypair.generate()
    clock = Clock()
    clock.advance(1_700_000_000.7)
    auth = ServiceAuth(_Keys("did:plc:alice", key), clock)

    token = await auth.token("did:plc:alice", "did:web:api.example#bsky_appview", TIMELINE)
    header, claims, signature, signed = _segments(token)
    assert header == {"typ": "JWT", "alg": "ES256K"}
    jti = claims.pop("jti")
    assert len(jti) == 32 and int(jti, 16) >= 0
    assert claims == {
        "iss": "did:plc:alice",
        "aud": "did:web:api.example#bsky_appview",  # verbatim
        "lxm": TIMELINE,
        "iat": 1_700_000_000,
        "exp": 1_700_000_060,
    }
    # The SDK's verifier (its own low-S check included) accepts the signature.
    assert sdk_verify_signature(key.did(), signed, signature)
    assert not sdk_verify_signature(crypto.K256Keypair.generate().did(), signed, signature)

    unbound = await auth.token("did:plc:alice", "did:web:api.example", None, exp=1_700_000_030)
    _, claims, _, _ = _segments(unbound)
    assert "lxm" not in claims and claims["exp"] == 1_700_000_030
    assert claims["jti"] != jti  # every token its own


def test_protected_and_privileged_methods():
    assert is_protected("com.atproto.server.createAppPassword")
    assert is_protected("COM.atproto.server.getSession")  # NSIDs compare case-insensitively
    assert not is_protected("app.bsky.feed.getTimeline")
    assert is_privileged("chat.bsky.convo.sendMessage")
    assert is_privileged("chat.bsky.convo.addReaction")  # the whole namespace
    assert is_privileged("com.atproto.server.createAccount")
    assert not is_privileged("app.bsky.actor.getProfile")
    assert not is_privileged("chat.bskyx.foo")

    full = AccessCredentials("did:plc:a", ACCESS, "s")
    plain = AccessCredentials("did:plc:a", APP_PASS, "s")
    privileged = AccessCredentials("did:plc:a", APP_PASS_PRIVILEGED, "s")
    for credentials in (full, plain, privileged):
        check_proxied_method(credentials, TIMELINE)
        with pytest.raises(InvalidToken, match="Bad token method"):
            check_proxied_method(credentials, "com.atproto.server.updateEmail")
    for credentials in (full, privileged):
        check_proxied_method(credentials, "chat.bsky.convo.listConvos")
    with pytest.raises(InvalidToken, match="Bad token method"):
        check_proxied_method(plain, "chat.bsky.convo.listConvos")


@pytest.mark.parametrize(
    "aud, ok",
    [
        ("did:plc:ewvi7nxzyoun6zhxrhs64oiz", True),
        ("did:plc:ewvi7nxzyoun6zhxrhs64oiz#atproto_labeler", True),
        ("did:web:api.bsky.app", True),
        ("did:web:api.bsky.app#bsky_appview", True),
        ("did:web:localhost%3A2583", True),
        ("did:web:localhost%3A2583#bsky_chat", True),
        ("did:web:api.bsky.app%3A443", False),  # a port only on localhost
        ("did:web:example.com:path", False),
        ("did:plc:short", False),
        ("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme", False),
        ("did:web:api.bsky.app#", False),
        ("did:web:api.bsky.app#a#b", False),
        ("did:web:api.bsky.app#a b", False),
        ("https://api.bsky.app", False),
        ("", False),
    ],
)
def test_service_audiences(aud, ok):
    assert is_service_audience(aud) is ok


async def _signed_in(pds, name="alice"):
    made = (await create(pds, name=name)).json()
    return made["did"], bearer(made["accessJwt"])


async def _app_password_session(pds, full, handle, privileged=False):
    made = await pds.post(
        "com.atproto.server.createAppPassword",
        {"name": f"app {privileged}", "privileged": privileged},
        headers=full,
    )
    assert made.code == 200, made.body
    login = await pds.post(
        "com.atproto.server.createSession", {"identifier": handle, "password": made.json()["password"]}
    )
    assert login.code == 200, login.body
    return bearer(login.json()["accessJwt"])


async def _service_token(pds, headers, **params):
    answer = await pds.get("com.atproto.server.getServiceAuth", params, headers=headers)
    assert answer.code == 200, answer.body
    return answer.json()["token"]


async def _call(appview, nsid, token, method="GET", **kwargs):
    response = await treq.request(
        method, f"{appview.url}/xrpc/{nsid}", headers={"Authorization": f"Bearer {token}"}, **kwargs
    )
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_get_service_auth_tokens_are_accepted_by_the_service(pds, appview):
    did, full = await _signed_in(pds)
    token = await _service_token(pds, full, aud=appview.did, lxm=TIMELINE)
    header, claims, _, _ = _segments(token)
    assert header == {"typ": "JWT", "alg": "ES256K"}
    assert claims["exp"] - claims["iat"] == 60

    code, echoed = await _call(appview, TIMELINE, token, params={"limit": "5"})
    assert code == 200, echoed
    assert (echoed["iss"], echoed["lxm"], echoed["query"]) == (did, TIMELINE, {"limit": ["5"]})
    (seen,) = appview.received
    assert seen.error is None and seen.nsid == TIMELINE
    assert seen.claims["iss"] == did and seen.claims["aud"] == appview.did

    # A POST's body reaches it as sent; a route answers what it was told to.
    appview.route("app.bsky.actor.putThing", status=202, body={"ok": 1}, headers={"atproto-repo-rev": "3l"})
    token = await _service_token(pds, full, aud=appview.did, lxm="app.bsky.actor.putThing")
    response = await treq.post(
        f"{appview.url}/xrpc/app.bsky.actor.putThing", b'{"x":1}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.code == 202 and json.loads(await response.content()) == {"ok": 1}
    assert response.headers.getRawHeaders("atproto-repo-rev") == ["3l"]
    assert appview.received[-1].body == b'{"x":1}'
    assert appview.received[-1].headers["content-type"] == "application/json"

    # Its DID document names it as both services.
    response = await treq.get(f"{appview.url}/.well-known/did.json")
    doc = json.loads(await response.content())
    assert doc["id"] == appview.did
    assert {(s["id"], s["type"]) for s in doc["service"]} == {
        ("#bsky_appview", "BskyAppView"), ("#bsky_chat", "BskyChatService"),
    }


@pytest_twisted.ensureDeferred
async def test_the_service_refuses_tokens_it_should(pds, appview):
    did, full = await _signed_in(pds)
    token = await _service_token(pds, full, aud=appview.did, lxm=TIMELINE)

    # Claims changed after signing: the signature no longer matches the DID's key.
    header, claims, signature = token.split(".")
    forged = dict(_segments(token)[1], iss=did, exp=_segments(token)[1]["exp"] + 3600)
    encoded = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    refusals = {"tampered": (TIMELINE, f"{header}.{encoded}.{signature}", "BadJwtSignature")}
    # Alice's claims, well formed, but signed with another account's key.
    bob, _ = await _signed_in(pds, "bobby")
    bob_key = await pds.service.app.keys.signing_key(bob)
    signed = f"{header}.{claims}".encode()
    bob_signature = base64.urlsafe_b64encode(bob_key.sign(signed)).rstrip(b"=").decode()
    refusals["another key"] = (TIMELINE, f"{header}.{claims}.{bob_signature}", "BadJwtSignature")
    other_aud = await _service_token(pds, full, aud="did:web:elsewhere.example", lxm=TIMELINE)
    refusals["wrong aud"] = (TIMELINE, other_aud, "BadJwtAudience")
    refusals["wrong lxm"] = (TIMELINE, await _service_token(pds, full, aud=appview.did, lxm="app.bsky.feed.getFeed"), "BadJwtLexiconMethod")
    refusals["no lxm"] = (TIMELINE, await _service_token(pds, full, aud=appview.did), "BadJwtLexiconMethod")
    # Minted by leafpds itself, correctly signed, but already expired.
    now = int(pds.service.app.reactor.seconds())
    expired = await pds.service.app.service_auth.token(did, appview.did, TIMELINE, exp=now - 5)
    refusals["expired"] = (TIMELINE, expired, "JwtExpired")
    refusals["garbage"] = (TIMELINE, "not.a.jwt", "BadJwt")

    for case, (nsid, bad, error) in refusals.items():
        code, answer = await _call(appview, nsid, bad)
        assert (code, answer["error"]) == (401, error), case
        assert appview.received[-1].error == error and appview.received[-1].claims is None, case
    response = await treq.get(f"{appview.url}/xrpc/{TIMELINE}")
    assert response.code == 401 and json.loads(await response.content())["error"] == "AuthMissing"
    # The genuine token still works.
    assert (await _call(appview, TIMELINE, token))[0] == 200


@pytest_twisted.ensureDeferred
async def test_get_service_auth_limits(pds, appview):
    did, full = await _signed_in(pds)
    now = int(pds.service.app.reactor.seconds())
    aud = appview.did
    bad = [
        ({"aud": aud, "exp": now - 10}, 400, "BadExpiration"),
        ({"aud": aud, "lxm": TIMELINE, "exp": now + 3700}, 400, "BadExpiration"),
        ({"aud": aud, "exp": now + 120}, 400, "BadExpiration"),  # no lxm: a minute at most
        ({"aud": aud, "lxm": "com.atproto.server.createAppPassword"}, 400, "InvalidRequest"),
        ({"aud": aud, "lxm": "com.atproto.identity.updateHandle", "exp": now + 30}, 400, "InvalidRequest"),
        ({"aud": "https://api.bsky.app"}, 400, "InvalidRequest"),
        ({"aud": "did:web:api.bsky.app#"}, 400, "InvalidRequest"),
        ({"aud": aud, "lxm": "not an nsid"}, 400, "InvalidRequest"),
        ({"aud": aud, "exp": "soon"}, 400, "InvalidRequest"),
        ({}, 400, "InvalidRequest"),  # aud is required
    ]
    for params, status, error in bad:
        assert_error(await pds.get("com.atproto.server.getServiceAuth", params, headers=full), status, error)
    assert_error(await pds.get("com.atproto.server.getServiceAuth", {"aud": aud}), 401, "AuthMissing")

    # Within the limits: the exp asked for, aud verbatim (with its fragment).
    token = await _service_token(pds, full, aud=aud, lxm=TIMELINE, exp=now + 3000)
    assert _segments(token)[1]["exp"] == now + 3000
    token = await _service_token(pds, full, aud=f"{aud}#bsky_appview", exp=now + 30)
    claims = _segments(token)[1]
    assert claims["aud"] == f"{aud}#bsky_appview" and "lxm" not in claims


@pytest_twisted.ensureDeferred
async def test_app_passwords_get_no_tokens_for_privileged_methods(pds, appview):
    did, full = await _signed_in(pds)
    plain = await _app_password_session(pds, full, "alice.test")
    privileged = await _app_password_session(pds, full, "alice.test", privileged=True)
    for lxm in ("chat.bsky.convo.listConvos", "chat.bsky.convo.sendMessage", "com.atproto.server.createAccount"):
        answer = await pds.get("com.atproto.server.getServiceAuth", {"aud": appview.did, "lxm": lxm}, headers=plain)
        assert_error(answer, 400, "InvalidRequest")
        assert lxm in answer.json()["message"]
        for headers in (full, privileged):
            token = await _service_token(pds, headers, aud=appview.did, lxm=lxm)
            assert _segments(token)[1]["lxm"] == lxm
    # Other methods are open to every session, and the service accepts the tokens.
    for headers in (plain, privileged):
        token = await _service_token(pds, headers, aud=appview.did, lxm=TIMELINE)
        assert (await _call(appview, TIMELINE, token))[0] == 200
    assert all(seen.claims["iss"] == did for seen in appview.received)


@pytest_twisted.ensureDeferred
async def test_the_standin_answers_slowly_streamed_and_with_errors(pds, appview):
    did, full = await _signed_in(pds)
    chunks = [bytes([i]) * 65536 for i in range(32)]  # 2 MiB
    appview.route(TIMELINE, chunks=iter(chunks), headers={"content-type": "application/octet-stream"})
    response = await treq.get(
        f"{appview.url}/xrpc/{TIMELINE}",
        headers={"Authorization": f"Bearer {await _service_token(pds, full, aud=appview.did, lxm=TIMELINE)}"},
    )
    assert response.code == 200 and await response.content() == b"".join(chunks)

    appview.route(TIMELINE, status=500, body={"error": "Boom", "message": "it broke"}, delay=0.3)
    started = reactor.seconds()
    code, answer = await _call(appview, TIMELINE, await _service_token(pds, full, aud=appview.did, lxm=TIMELINE))
    assert (code, answer) == (500, {"error": "Boom", "message": "it broke"})
    assert reactor.seconds() - started >= 0.3


@pytest_twisted.ensureDeferred
async def test_the_standin_sees_a_caller_go_away_and_may_learn_its_plc_late(pds):
    # Started before the directory is known (a leafpds may need the
    # stand-in's DID in its settings first): tokens are refused until it is.
    appview = await StandInAppView.start()
    try:
        did, full = await _signed_in(pds)
        token = await _service_token(pds, full, aud=appview.did, lxm=TIMELINE)
        assert await _call(appview, TIMELINE, token) == (
            401, {"error": "BadJwt", "message": "the stand-in was given no PLC directory to resolve issuers with"},
        )
        appview.plc_url = pds.service.app.plc.base_url
        assert (await _call(appview, TIMELINE, token))[0] == 200

        appview.route(TIMELINE, delay=30)
        with pytest.raises(Exception):
            await treq.get(f"{appview.url}/xrpc/{TIMELINE}", headers={"Authorization": f"Bearer {token}"}, timeout=0.5)
        seen = appview.received[-1]
        for _ in range(100):  # the server notices the closed connection a moment later
            if seen.disconnected:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert seen.claims["iss"] == did and seen.disconnected
    finally:
        await appview.stop()
