"""The redirect back to the client and the consent screen's words (leafpds.oauth.responses)."""

from urllib.parse import parse_qs, urlsplit

import pytest

from leafpds.oauth.par import AuthorizationRequest
from leafpds.oauth.responses import describe_scope, redirect_to_client

ISSUER = "https://pds.example.com"


def request(**changes):
    values = dict(client_id="https://app.example.com/m.json", redirect_uri="https://app.example.com/cb?keep=1",
                  scope="atproto", state="st&=1", code_challenge="c" * 43)
    values.update(changes)
    return AuthorizationRequest(**values)


def test_a_code_goes_back_in_the_query_with_state_and_iss():
    url = urlsplit(redirect_to_client(request(), ISSUER, code="cod-1"))
    assert url.netloc == "app.example.com" and url.path == "/cb" and not url.fragment
    assert parse_qs(url.query) == {"keep": ["1"], "code": ["cod-1"], "state": ["st&=1"], "iss": [ISSUER]}


def test_fragment_mode_and_errors():
    url = urlsplit(redirect_to_client(request(response_mode="fragment"), ISSUER, error="access_denied",
                                      description="The user said no"))
    assert url.query == "keep=1"
    assert parse_qs(url.fragment) == {"error": ["access_denied"], "error_description": ["The user said no"],
                                      "state": ["st&=1"], "iss": [ISSUER]}
    with pytest.raises(ValueError):
        redirect_to_client(request(), ISSUER)


def test_scopes_in_words():
    lines = describe_scope("atproto transition:generic repo:app.bsky.feed.post?action=create&action=delete "
                           "rpc:app.bsky.feed.getTimeline?aud=did:web:api.bsky.app%23bsky_appview blob:image/* "
                           "account:email?action=manage identity:handle identity:* transition:email repo:*")
    assert lines == [
        "Know your account's identity (its DID and handle)",
        "Read and write everything in your account that an app password can, except private messages",
        "Create and delete records of kind app.bsky.feed.post in your repository",
        "Call app.bsky.feed.getTimeline on did:web:api.bsky.app#bsky_appview in your name",
        "Upload files (image/*)",
        "Change your account's email",
        "Change your handle",
        "Change your identity (handle, keys and services in your DID document)",
        "See your email address",
        "Create, change and delete records of any kind in your repository",
    ]
