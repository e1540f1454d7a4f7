"""Pushed authorization requests (leafpds.oauth.par): every refusal with its RFC error name, and request_uri's life."""

import base64
import hashlib

import pytest
from twisted.internet.task import Clock

from leafpds.oauth.clients import Client, loopback_client
from leafpds.oauth.errors import InvalidRequest, InvalidScope
from leafpds.oauth.par import (
    REQUEST_URI_PREFIX,
    PendingRequests,
    TemporarilyUnavailable,
    parse_request,
)

CLIENT = Client(
    "https://app.example.com/client-metadata.json",
    ("https://app.example.com/callback", "http://127.0.0.1/loopback"),
    "atproto transition:generic",
)
VERIFIER = "v" * 64
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()


def params(**changes):
    values = {
        "client_id": CLIENT.client_id,
        "response_type": "code",
        "redirect_uri": "https://app.example.com/callback",
        "scope": "atproto transition:generic",
        "state": "s-123",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    }
    values.update(changes)
    return {k: v if isinstance(v, list) else [v] for k, v in values.items() if v is not None}


def test_a_good_request_is_parsed():
    request = parse_request(params(login_hint="@Alice.Test", response_mode="fragment"), CLIENT, "jkt-1")
    assert request.client_id == CLIENT.client_id and request.state == "s-123"
    assert request.code_challenge == CHALLENGE and request.scope == "atproto transition:generic"
    assert request.login_hint == "alice.test" and request.response_mode == "fragment"
    assert request.dpop_jkt == "jkt-1"
    assert parse_request(params(login_hint="did:plc:abc234"), CLIENT, None).login_hint == "did:plc:abc234"


def test_scope_defaults_to_the_clients_declared_scope_and_unknown_parameters_are_ignored():
    request = parse_request(params(scope=None, ui_locales="en", extra="x"), CLIENT, None)
    assert request.scope == "atproto transition:generic" and request.response_mode == "query"


def test_a_loopback_redirect_uri_matches_with_any_port():
    assert parse_request(params(redirect_uri="http://127.0.0.1:5555/loopback"), CLIENT, None)
    client = loopback_client("http://localhost?redirect_uri=http%3A%2F%2F127.0.0.1%2Fcb")
    request = parse_request(params(client_id=client.client_id, redirect_uri="http://127.0.0.1:4321/cb",
                                   scope="atproto"), client, None)
    assert request.redirect_uri == "http://127.0.0.1:4321/cb"


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"code_challenge": None, "code_challenge_method": None}, "code_challenge is required"),
        ({"code_challenge": None}, "code_challenge is required"),
        ({"code_challenge_method": "plain"}, "S256"),
        ({"code_challenge_method": None}, "S256"),
        ({"code_challenge": "short"}, "code_challenge"),
        ({"response_type": "token"}, "response_type"),
        ({"response_type": None}, "response_type"),
        ({"state": None}, "state"),
        ({"state": "x" * 2000}, "state"),
        ({"redirect_uri": None}, "redirect_uri"),
        ({"redirect_uri": "https://evil.example.com/callback"}, "redirect_uri"),
        ({"redirect_uri": "https://app.example.com/callback/"}, "redirect_uri"),
        ({"client_id": "https://other.example.com/client-metadata.json"}, "client_id"),
        ({"nonce": "n"}, "nonce"),
        ({"claims": "{}"}, "claims"),
        ({"request": "eyJ..."}, "request"),
        ({"state": ["a", "b"]}, "once"),
        ({"login_hint": "not a handle"}, "login_hint"),
        ({"login_hint": "did:nope"}, "login_hint"),
        ({"response_mode": "form_post"}, "response_mode"),
        ({"prompt": "everything"}, "prompt"),
        ({"dpop_jkt": "another-key"}, "dpop_jkt"),
    ],
)
def test_faulty_requests_are_refused_as_invalid_request(changes, reason):
    with pytest.raises(InvalidRequest, match=reason) as refused:
        parse_request(params(**changes), CLIENT, "jkt-1")
    assert refused.value.name == "invalid_request" and refused.value.status == 400


@pytest.mark.parametrize(
    "scope, reason",
    [("transition:generic", "atproto"), ("atproto transition:email", "not declared"),
     ("atproto repo:*?action=nothing", "Unsupported")],
)
def test_scopes_without_atproto_or_undeclared_are_refused_as_invalid_scope(scope, reason):
    with pytest.raises(InvalidScope, match=reason) as refused:
        parse_request(params(scope=scope), CLIENT, None)
    assert refused.value.name == "invalid_scope"


@pytest.fixture
def clock():
    return Clock()


def test_a_request_uri_opens_once_for_its_client_only(clock):
    pending = PendingRequests(clock)
    request = parse_request(params(), CLIENT, None)
    uri = pending.push(request)
    assert uri.startswith(REQUEST_URI_PREFIX)
    with pytest.raises(InvalidRequest):
        pending.open(uri, "https://other.example.com/client-metadata.json")
    request_id, opened = pending.open(uri, CLIENT.client_id)
    assert opened == request
    with pytest.raises(InvalidRequest, match="already used"):
        pending.open(uri, CLIENT.client_id)
    assert pending.get(request_id) == request
    assert pending.finish(request_id) == request
    assert pending.get(request_id) is None and pending.finish(request_id) is None
    for bad in ("", request_id, REQUEST_URI_PREFIX + "made-up"):
        with pytest.raises(InvalidRequest):
            pending.open(bad, CLIENT.client_id)


def test_a_request_lives_five_minutes(clock):
    pending = PendingRequests(clock)
    request = parse_request(params(), CLIENT, None)
    uri = pending.push(request)
    request_id, _ = pending.open(uri, CLIENT.client_id)
    clock.advance(299)
    assert pending.get(request_id) == request
    clock.advance(1)
    assert pending.get(request_id) is None
    clock.advance(1)
    with pytest.raises(InvalidRequest):
        pending.open(pending.push(request) and uri, CLIENT.client_id)
    unopened = pending.push(request)
    clock.advance(300)
    with pytest.raises(InvalidRequest):
        pending.open(unopened, CLIENT.client_id)
    # An unopened request is not usable by id alone.
    fresh = pending.push(request)
    assert pending.get(fresh.removeprefix(REQUEST_URI_PREFIX)) is None


def test_pending_requests_are_bounded(clock):
    pending = PendingRequests(clock, capacity=2)
    request = parse_request(params(), CLIENT, None)
    pending.push(request)
    pending.push(request)
    with pytest.raises(TemporarilyUnavailable) as refused:
        pending.push(request)
    assert refused.value.name == "temporarily_unavailable"
    clock.advance(300)
    pending.push(request)
