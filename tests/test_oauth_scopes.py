"""atproto OAuth scopes and permissions (leafpds.oauth.scopes), from the specs' examples."""

import pytest

from leafpds.oauth.errors import InvalidScope
from leafpds.oauth.scopes import (
    AccountPermission,
    BlobPermission,
    Permissions,
    IdentityPermission,
    RepoPermission,
    RpcPermission,
    check_request,
    is_known,
    parse_permission,
)

APPVIEW = "did:web:api.bsky.app#bsky_appview"


@pytest.mark.parametrize(
    "scope, permission",
    [
        ("repo:app.bsky.feed.post", RepoPermission(("app.bsky.feed.post",), ("create", "update", "delete"))),
        ("repo:app.bsky.feed.post?action=create", RepoPermission(("app.bsky.feed.post",), ("create",))),
        ("repo:*?action=delete&action=create", RepoPermission(("*",), ("create", "delete"))),
        ("repo?collection=app.bsky.feed.post&collection=app.bsky.feed.like",
         RepoPermission(("app.bsky.feed.like", "app.bsky.feed.post"), ("create", "update", "delete"))),
        ("rpc:app.bsky.feed.getTimeline?aud=did:web:api.bsky.app%23bsky_appview",
         RpcPermission(("app.bsky.feed.getTimeline",), APPVIEW)),
        ("rpc:app.bsky.feed.getTimeline?aud=" + APPVIEW, RpcPermission(("app.bsky.feed.getTimeline",), APPVIEW)),
        ("rpc:*?aud=" + APPVIEW, RpcPermission(("*",), APPVIEW)),
        ("rpc:com.atproto.moderation.createReport?aud=*",
         RpcPermission(("com.atproto.moderation.createReport",), "*")),
        ("rpc?lxm=app.bsky.feed.getFeed&lxm=app.bsky.actor.getProfile&aud=" + APPVIEW.replace("#", "%23"),
         RpcPermission(("app.bsky.actor.getProfile", "app.bsky.feed.getFeed"), APPVIEW)),
        ("blob:*/*", BlobPermission(("*/*",))),
        ("blob:image/*", BlobPermission(("image/*",))),
        ("blob?accept=video/*&accept=image/png", BlobPermission(("image/png", "video/*"))),
        ("account:email", AccountPermission("email", "read")),
        ("account:email?action=manage", AccountPermission("email", "manage")),
        ("account:repo?action=manage", AccountPermission("repo", "manage")),
        ("account:status", AccountPermission("status", "read")),
        ("identity:handle", IdentityPermission("handle")),
        ("identity:*", IdentityPermission("*")),
    ],
)
def test_permissions_parse(scope, permission):
    assert parse_permission(scope) == permission
    assert is_known(scope)


@pytest.mark.parametrize(
    "scope",
    [
        "repo", "repo:", "repo:not an nsid", "repo:app.bsky.feed.post?action=read",
        "repo:app.bsky.feed.post?collection=app.bsky.feed.like",  # positional given twice
        "repo:app.bsky.feed.post?color=blue",
        "rpc:app.bsky.feed.getTimeline", "rpc:*?aud=*", "rpc:app.bsky.feed.getTimeline?aud=did:web:x",
        "rpc:app.bsky.feed.getTimeline?aud=" + APPVIEW + "&aud=*",
        "blob", "blob:image", "blob:*/png", "blob:Image/PNG",
        "account", "account:password", "account:email?action=delete", "account:email?action=read&action=manage",
        "identity", "identity:did",
        "include:app.bsky.authFullApp", "transition:everything", "email", "openid", "",
    ],
)
def test_malformed_or_unknown_scopes_are_not_permissions(scope):
    assert parse_permission(scope) is None
    assert not is_known(scope)


def test_the_static_scopes_are_known():
    for scope in ("atproto", "transition:generic", "transition:chat.bsky", "transition:email"):
        assert is_known(scope)


def test_atproto_alone_grants_nothing():
    grant = Permissions("atproto")
    assert not grant.allows_repo("app.bsky.feed.post", "create")
    assert not grant.allows_rpc("app.bsky.feed.getTimeline", APPVIEW)
    assert not grant.allows_blob("image/png")
    assert not grant.allows_account("email", "read")
    assert not grant.allows_identity("handle")


def test_transition_generic_grants_what_an_app_password_does_except_chat():
    grant = Permissions("atproto transition:generic")
    assert grant.allows_repo("any.collection.here", "delete")
    assert grant.allows_blob("video/mp4")
    assert grant.allows_rpc("app.bsky.feed.getTimeline", APPVIEW)
    assert not grant.allows_rpc("chat.bsky.convo.listConvos", "did:web:api.bsky.chat#bsky_chat")
    assert not grant.allows_account("email", "read")
    assert not grant.allows_identity("handle")


def test_transition_chat_grants_chat_methods_only():
    grant = Permissions("atproto transition:chat.bsky")
    assert grant.allows_rpc("chat.bsky.convo.listConvos", "did:web:api.bsky.chat#bsky_chat")
    assert not grant.allows_rpc("app.bsky.feed.getTimeline", APPVIEW)
    assert not grant.allows_repo("app.bsky.feed.post", "create")


def test_transition_email_grants_reading_the_email_only():
    grant = Permissions("atproto transition:email")
    assert grant.allows_account("email", "read")
    assert not grant.allows_account("email", "manage")


def test_repo_permissions_check_collection_and_action():
    grant = Permissions("atproto repo:app.bsky.feed.post?action=create repo:app.bsky.feed.like")
    assert grant.allows_repo("app.bsky.feed.post", "create")
    assert not grant.allows_repo("app.bsky.feed.post", "update")
    assert not grant.allows_repo("app.bsky.feed.post", "delete")
    assert grant.allows_repo("app.bsky.feed.like", "delete")
    assert not grant.allows_repo("app.bsky.graph.follow", "create")
    assert Permissions("atproto repo:*?action=update").allows_repo("x.y.z", "update")


def test_rpc_permissions_check_method_and_audience():
    grant = Permissions(f"atproto rpc:app.bsky.feed.getTimeline?aud={APPVIEW} rpc:com.atproto.moderation.createReport?aud=*")
    assert grant.allows_rpc("app.bsky.feed.getTimeline", APPVIEW)
    assert not grant.allows_rpc("app.bsky.feed.getTimeline", "did:web:evil.test#bsky_appview")
    assert not grant.allows_rpc("app.bsky.feed.getFeed", APPVIEW)
    assert grant.allows_rpc("com.atproto.moderation.createReport", "did:web:mod.test#atproto_labeler")
    assert Permissions(f"atproto rpc:*?aud={APPVIEW}").allows_rpc("app.bsky.feed.getFeed", APPVIEW)


def test_blob_permissions_match_mime_patterns():
    grant = Permissions("atproto blob:image/* blob?accept=video/mp4")
    assert grant.allows_blob("image/png") and grant.allows_blob("IMAGE/JPEG")
    assert grant.allows_blob("video/mp4")
    assert not grant.allows_blob("video/webm")
    assert not grant.allows_blob("application/json")
    assert Permissions("atproto blob:*/*").allows_blob("application/octet-stream")


def test_account_manage_includes_read_and_identity_star_includes_handle():
    grant = Permissions("atproto account:email?action=manage identity:*")
    assert grant.allows_account("email", "read") and grant.allows_account("email", "manage")
    assert not grant.allows_account("status", "read")
    assert grant.allows_identity("handle") and grant.allows_identity("*")
    assert not Permissions("atproto identity:handle").allows_identity("*")


def test_a_request_must_include_atproto_and_only_declared_known_scopes():
    declared = "atproto transition:generic repo:app.bsky.feed.post include:app.bsky.authFullApp"
    assert check_request("atproto repo:app.bsky.feed.post", declared) == "atproto repo:app.bsky.feed.post"
    assert check_request(None, "atproto transition:generic") == "atproto transition:generic"
    assert check_request("atproto  atproto transition:generic", declared) == "atproto transition:generic"
    for requested, reason in [
        ("transition:generic", "atproto"),
        ("", "atproto"),
        ("atproto transition:email", "not declared"),
        ("atproto include:app.bsky.authFullApp", "Unsupported"),
        ("atproto repo:nope", "Unsupported"),
        ("atproto " + "x" * 5000, "too long"),
    ]:
        with pytest.raises(InvalidScope, match=reason) as refused:
            check_request(requested, declared)
        assert refused.value.name == "invalid_scope"
