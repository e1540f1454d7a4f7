"""
Sign-in with GitHub or Google end to end: a running leafpds pointed at local
stand-ins for both providers, driven over HTTP by treq, following every
redirect by hand (and carrying the sign-in cookie as a browser would).
"""

import re

import pytest
import pytest_twisted
import treq

from leafpds.accounts.oauth import Expiring, HandOffCodes, PKCE, handle_hint
from tests.oauth_standins import CLIENT_ID
from tests.signin import (  # noqa: F401 (world is a fixture)
    APP,
    OTHER_APP,
    Browser,
    auth_pages,
    back_at_app,
    exchange,
    first_sign_in,
    local,
    query,
    treq_query,
    world,
)

@pytest.mark.parametrize(
    ("provider", "handle"), [("github", "octo-cat.test"), ("google", "ada-lovelace.test")]
)
@pytest_twisted.ensureDeferred
async def test_first_sign_in_provisions_then_later_sign_ins_find_the_same_did(world, provider, handle):
    pds, _github, _google = world
    session, _code = await first_sign_in(pds, provider, handle)
    did = session["did"]
    assert did.startswith("did:plc:") and session["handle"] == handle

    # The JWTs are ordinary session tokens.
    me = await pds.get(
        "com.atproto.server.getSession", headers={"Authorization": f"Bearer {session['accessJwt']}"}
    )
    assert me.code == 200 and me.json()["did"] == did
    # The provider verified the address: it starts confirmed.
    assert me.json()["emailConfirmed"] is True
    refreshed = await pds.post(
        "com.atproto.server.refreshSession",
        headers={"Authorization": f"Bearer {session['refreshJwt']}"},
    )
    assert refreshed.code == 200, refreshed.body

    # The DID is published and names this handle.
    response = await treq.get(f"{pds.service.app.plc.base_url}/{did}")
    assert response.code == 200
    assert (await response.json())["alsoKnownAs"] == [f"at://{handle}"]

    # A second sign-in skips the chooser and lands on the same account.
    again = back_at_app(await Browser(pds).sign_in(provider))
    second = await exchange(pds, again["code"])
    assert second.code == 200 and second.json()["did"] == did


@pytest_twisted.ensureDeferred
async def test_the_two_providers_are_distinct_identities(world):
    pds, _github, google = world
    google.sub = "583231"  # the same subject string as the GitHub user's id
    first, _ = await first_sign_in(pds, "github", "octo-cat.test")
    second, _ = await first_sign_in(pds, "google", "ada-lovelace.test")
    assert first["did"] != second["did"]


@pytest_twisted.ensureDeferred
async def test_state_is_single_use_and_bound_to_the_browser(world):
    pds, _github, _google = world
    browser = Browser(pds)
    callback = await browser.approve(await browser.to_provider("github"))
    # Another browser (no cookie) cannot finish this sign-in...
    stranger = await Browser(pds).get(local(callback))
    assert stranger.code == 400 and b"expired or was already used" in stranger.body
    # ...and the state is spent either way.
    replayed = await browser.get(local(callback))
    assert replayed.code == 400

    browser = Browser(pds)
    callback = await browser.approve(await browser.to_provider("google"))
    assert (await browser.get(local(callback))).code == 200
    assert (await browser.get(local(callback))).code == 400
    # A state for one provider is not accepted on another's callback.
    callback = await browser.approve(await browser.to_provider("google"))
    assert (await browser.get(local(callback).replace("/google/", "/github/"))).code == 400


@pytest_twisted.ensureDeferred
async def test_expired_state_is_refused(world):
    pds, _github, _google = world
    pages = auth_pages(pds)
    browser = Browser(pds)
    callback = await browser.approve(await browser.to_provider("github"))
    real = pages.pending.now
    pages.pending.now = lambda: real() + 10 * 60 + 1
    try:
        answer = await browser.get(local(callback))
    finally:
        pages.pending.now = real
    assert answer.code == 400 and b"expired" in answer.body


@pytest_twisted.ensureDeferred
async def test_hand_off_code_is_single_use_and_bound_to_its_redirect_uri(world):
    pds, _github, _google = world
    _session, code = await first_sign_in(pds, "github", "octo-cat.test")
    replay = await exchange(pds, code)
    assert replay.code == 400 and replay.json()["error"] == "InvalidGrant"

    params = back_at_app(await Browser(pds).sign_in("github"))
    wrong = await exchange(pds, params["code"], OTHER_APP)
    assert wrong.code == 400 and wrong.json()["error"] == "InvalidGrant"
    # Presented with the wrong redirect_uri, the code is spent.
    assert (await exchange(pds, params["code"])).code == 400

    bad = await pds.request("POST", "/auth/exchange", data=b"not json")
    assert bad.code == 400 and bad.json()["error"] == "InvalidRequest"


@pytest_twisted.ensureDeferred
async def test_redirect_uri_must_be_allow_listed(world):
    pds, github, _google = world
    # (No redirect_uri at all means leafpds's own account page: see test_account_pages.)
    for uri in ["https://evil.example/steal", APP + "&more=1"]:
        answer = await Browser(pds).get(
            "/auth/github/login?" + treq_query({"redirect_uri": uri, "state": "s"})
        )
        assert answer.code == 400 and answer.header("location") is None
        assert b"does not allow" in answer.body
    assert github.authorize_requests == []
    unknown = await Browser(pds).get("/auth/myspace/login?" + treq_query({"redirect_uri": APP}))
    assert unknown.code == 404


@pytest_twisted.ensureDeferred
async def test_authorize_request_carries_state_pkce_and_nonce(world):
    pds, _github, _google = world
    browser = Browser(pds)
    asked = {provider: query(await browser.to_provider(provider)) for provider in ["github", "google"]}
    for provider, fields in asked.items():
        assert fields["client_id"] == CLIENT_ID
        assert fields["code_challenge_method"] == "S256" and len(fields["code_challenge"]) == 43
        assert fields["state"] != "app-state" and len(fields["state"]) >= 32
        assert fields["redirect_uri"].endswith(f"/auth/{provider}/callback")
    assert len(asked["google"]["nonce"]) >= 32
    assert asked["google"]["scope"] == "openid email"


@pytest_twisted.ensureDeferred
async def test_denied_consent_goes_back_to_the_app_with_an_error(world):
    pds, _github, _google = world
    browser = Browser(pds)
    callback = await browser.approve(await browser.to_provider("github"), decision="deny")
    params = back_at_app(await browser.get(local(callback)))
    assert params == {"from": "leafpds", "error": "access_denied", "state": "app-state"}


@pytest.mark.parametrize(
    ("claims", "header"),
    [
        ({"email_verified": False}, {}),
        ({"aud": "someone-else"}, {}),
        ({"iss": "https://accounts.example"}, {}),
        ({"exp": 1000}, {}),
        ({"nonce": "not-the-one"}, {}),
        ({}, {"kid": "a-key-google-never-had"}),
        ({}, {"kid": ["not", "a", "string"]}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_google_id_tokens_create_nothing(world, claims, header):
    pds, _github, google = world
    google.claims = claims
    google.header = header
    answer = await Browser(pds).sign_in("google")
    assert answer.code == 502 and b"Sign-in failed" in answer.body
    assert await pds.service.app.db.read(_account_count) == 0


@pytest_twisted.ensureDeferred
async def test_github_without_a_verified_primary_email_creates_nothing(world):
    pds, github, _google = world
    github.emails = [{"email": "octo@example.com", "primary": True, "verified": False}]
    answer = await Browser(pds).sign_in("github")
    assert answer.code == 502 and b"verified primary email" in answer.body
    assert await pds.service.app.db.read(_account_count) == 0


@pytest_twisted.ensureDeferred
async def test_handle_chooser_refuses_bad_or_taken_handles_and_keeps_the_form(world):
    pds, _github, _google = world
    await first_sign_in(pds, "google", "ada-lovelace.test")
    browser = Browser(pds)
    chooser = await browser.sign_in("github")
    taken = await browser.choose_handle(chooser, "ada-lovelace")
    assert taken.code == 400 and b"Handle already taken" in taken.body and b'role=alert' in taken.body
    invalid = await browser.choose_handle(chooser, "no")
    assert invalid.code == 400
    params = back_at_app(await browser.choose_handle(chooser, "octo"))
    assert (await exchange(pds, params["code"])).json()["handle"] == "octo.test"
    # The chooser's ticket is spent once the account exists.
    assert (await browser.choose_handle(chooser, "octo2")).code == 400


def _account_count(conn):
    return conn.execute("SELECT count(*) FROM accounts").fetchone()[0]


# -- the pieces, with a clock under the test's control -------------------------


def test_expiring_values_are_single_use_and_expire():
    clock = [1000.0]
    store: Expiring[str] = Expiring(600, lambda: clock[0])
    token = store.add("value")
    assert store.get(token) == "value"
    assert store.take(token) == "value"
    assert store.take(token) is None
    token = store.add("later")
    clock[0] += 600
    assert store.get(token) is None


def test_hand_off_codes():
    clock = [0.0]
    codes = HandOffCodes(lambda: clock[0])
    code = codes.issue("did:plc:abc", APP)
    assert codes.redeem(code, APP) == "did:plc:abc"
    assert codes.redeem(code, APP) is None
    code = codes.issue("did:plc:abc", APP)
    clock[0] += 60
    assert codes.redeem(code, APP) is None


def test_pkce_s256_and_handle_hints():
    import base64
    import hashlib

    pkce = PKCE.generate()
    digest = hashlib.sha256(pkce.verifier.encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == pkce.challenge
    assert 43 <= len(pkce.verifier) <= 128
    assert handle_hint("Octo_Cat") == "octo-cat"
    assert handle_hint("ada.lovelace+x") == "ada-lovelace-x"


@pytest_twisted.ensureDeferred
async def test_plc_failure_during_sign_up_creates_nothing_and_the_form_can_be_sent_again(world):
    pds, _github, _google = world
    browser = Browser(pds)
    chooser = await browser.sign_in("github")
    plc = pds.service.app.plc
    real = plc.base_url
    plc.base_url = "http://127.0.0.1:9"  # nothing listens there
    try:
        failed = await browser.choose_handle(chooser)
    finally:
        plc.base_url = real
    assert failed.code == 400 and b"PLC directory" in failed.body
    assert await pds.service.app.db.read(_account_count) == 0
    params = back_at_app(await browser.choose_handle(chooser))
    assert (await exchange(pds, params["code"])).json()["handle"] == "octo-cat.test"


@pytest_twisted.ensureDeferred
async def test_google_keys_are_cached_and_fetched_again_for_a_new_key_id(world):
    pds, _github, google = world
    await first_sign_in(pds, "google", "ada-lovelace.test")
    back_at_app(await Browser(pds).sign_in("google"))
    assert google.jwks_fetches == 1

    # Google rotates its keys: a token signed with a key id not yet seen.
    google.rotate_key()
    back_at_app(await Browser(pds).sign_in("google"))
    assert google.jwks_fetches == 2


@pytest.mark.parametrize("provider", ["github", "google"])
@pytest_twisted.ensureDeferred
async def test_provider_failures_land_on_an_error_page_and_create_nothing(world, provider):
    pds, github, google = world
    # The provider refuses the code (here: one it never issued).
    browser = Browser(pds)
    callback = await browser.approve(await browser.to_provider(provider, redirect_uri=None))
    tampered = re.sub(r"code=[^&]+", "code=never-issued", local(callback))
    refused = await browser.get(tampered)
    assert refused.code == 502 and b"Sign-in failed" in refused.body, refused.body

    # The provider cannot be reached when leafpds trades the code.
    browser = Browser(pds)
    callback = await browser.approve(await browser.to_provider(provider, redirect_uri=None))
    await (github if provider == "github" else google).go_down()
    unreachable = await browser.get(local(callback))
    assert unreachable.code == 502 and b"could not be reached" in unreachable.body, unreachable.body
    assert "leafpds_account" not in browser.cookies
    assert await pds.service.app.db.read(_account_count) == 0


@pytest_twisted.ensureDeferred
async def test_google_unreachable_at_the_start_is_an_error_page(tmp_path):
    from tests.signin import start_world, stop_world

    started = await start_world(tmp_path / "data")
    pds, _github, google = started
    await google.go_down()
    try:
        answer = await Browser(pds).get("/auth/google/login")
        assert answer.code == 502 and b"could not be reached" in answer.body
        assert answer.header("location") is None
    finally:
        await stop_world(started)
