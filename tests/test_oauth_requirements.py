"""What OAuth-authenticated calls need (leafpds.oauth.requirements)."""

import pytest

from leafpds.oauth.requirements import (
    OAuthForbidden,
    ScopeMissing,
    check_blob,
    check_call,
    check_rpc,
    names_grant_for,
    repo_writes,
)
from leafpds.oauth.scopes import Permissions

POST = "app.bsky.feed.post"
APPVIEW = "did:web:api.bsky.app#bsky_appview"


def refused(permissions, nsid, body=None):
    with pytest.raises(ScopeMissing) as refusal:
        check_call(Permissions(permissions), nsid, body)
    assert refusal.value.status == 403 and refusal.value.name == "ScopeMissingError"
    return refusal.value.scope


def test_record_writes_need_their_collection_and_action():
    create_only = Permissions(f"atproto repo:{POST}?action=create")
    check_call(create_only, "com.atproto.repo.createRecord", {"collection": POST})
    assert refused(f"atproto repo:{POST}?action=create", "com.atproto.repo.deleteRecord",
                   {"collection": POST}) == f"repo:{POST}?action=delete"
    assert refused(f"atproto repo:{POST}?action=create", "com.atproto.repo.putRecord",
                   {"collection": POST}) == f"repo:{POST}?action=update"
    check_call(Permissions(f"atproto repo:{POST}"), "com.atproto.repo.putRecord", {"collection": POST})
    assert refused(f"atproto repo:{POST}", "com.atproto.repo.createRecord",
                   {"collection": "app.bsky.feed.like"}) == "repo:app.bsky.feed.like?action=create"
    check_call(Permissions("atproto transition:generic"), "com.atproto.repo.deleteRecord", {"collection": POST})


def test_apply_writes_needs_every_write():
    body = {"writes": [
        {"$type": "com.atproto.repo.applyWrites#create", "collection": POST},
        {"$type": "com.atproto.repo.applyWrites#delete", "collection": "app.bsky.feed.like"},
    ]}
    assert repo_writes("com.atproto.repo.applyWrites", body) == [(POST, "create"), ("app.bsky.feed.like", "delete")]
    check_call(Permissions(f"atproto repo:{POST}?action=create repo:app.bsky.feed.like?action=delete"),
               "com.atproto.repo.applyWrites", body)
    assert refused(f"atproto repo:{POST}", "com.atproto.repo.applyWrites", body) == \
        "repo:app.bsky.feed.like?action=delete"
    assert repo_writes("com.atproto.repo.applyWrites", {"writes": "nope"}) == []
    assert repo_writes("com.atproto.repo.getRecord", {"collection": POST}) == []


def test_account_and_identity_methods():
    assert refused("atproto transition:generic", "com.atproto.server.requestEmailUpdate") == \
        "account:email?action=manage"
    check_call(Permissions("atproto account:email?action=manage"), "com.atproto.server.confirmEmail")
    assert refused("atproto account:email", "com.atproto.server.requestEmailConfirmation") == \
        "account:email?action=manage"
    assert refused("atproto", "com.atproto.repo.importRepo") == "account:repo?action=manage"
    check_call(Permissions("atproto identity:handle"), "com.atproto.identity.updateHandle")
    assert refused("atproto identity:handle", "com.atproto.identity.submitPlcOperation") == "identity:*"
    check_call(Permissions("atproto identity:*"), "com.atproto.identity.signPlcOperation")


def test_what_needs_the_password_is_never_allowed():
    everything = Permissions("atproto transition:generic identity:* account:status?action=manage "
                             "account:email?action=manage")
    for nsid in ("com.atproto.server.createAppPassword", "com.atproto.server.requestAccountDelete",
                 "com.atproto.server.updateEmail", "com.atproto.server.deactivateAccount",
                 "com.atproto.server.activateAccount", "com.atproto.server.listAppPasswords"):
        with pytest.raises(OAuthForbidden) as refusal:
            check_call(everything, nsid)
        assert (refusal.value.status, refusal.value.name) == (403, "Forbidden")


def test_privileged_methods_are_a_grants_only_where_a_scope_is_stated():
    assert names_grant_for("com.atproto.server.requestEmailUpdate")
    assert names_grant_for("com.atproto.identity.updateHandle")
    assert names_grant_for("com.atproto.identity.signPlcOperation")
    for nsid in ("com.atproto.server.createAppPassword", "com.atproto.server.updateEmail",
                 "com.atproto.server.listAppPasswords", "com.atproto.server.someFutureMethod"):
        assert not names_grant_for(nsid)


def test_preferences_need_the_appview():
    check_call(Permissions("atproto transition:generic"), "app.bsky.actor.getPreferences", appview=APPVIEW)
    check_call(Permissions(f"atproto rpc:app.bsky.actor.putPreferences?aud={APPVIEW}"),
               "app.bsky.actor.putPreferences", appview=APPVIEW)
    with pytest.raises(ScopeMissing, match="rpc:app.bsky.actor.getPreferences"):
        check_call(Permissions(f"atproto rpc:app.bsky.actor.putPreferences?aud={APPVIEW}"),
                   "app.bsky.actor.getPreferences", appview=APPVIEW)


def test_reads_need_only_atproto():
    check_call(Permissions("atproto"), "com.atproto.repo.getRecord", {"collection": POST})
    check_call(Permissions("atproto"), "com.atproto.server.getSession")


def test_blobs_and_rpc():
    check_blob(Permissions("atproto blob:image/*"), "image/png")
    with pytest.raises(ScopeMissing, match="blob:video/mp4"):
        check_blob(Permissions("atproto blob:image/*"), "video/mp4")
    check_rpc(Permissions(f"atproto rpc:app.bsky.feed.getTimeline?aud={APPVIEW}"), "app.bsky.feed.getTimeline", APPVIEW)
    with pytest.raises(ScopeMissing) as refusal:
        check_rpc(Permissions("atproto"), "app.bsky.feed.getTimeline", APPVIEW)
    assert refusal.value.scope == "rpc:app.bsky.feed.getTimeline?aud=did:web:api.bsky.app%23bsky_appview"
    check_rpc(Permissions("atproto transition:generic"), "app.bsky.feed.getTimeline", APPVIEW)
