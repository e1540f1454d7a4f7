"""
Read-after-write over real HTTP: the stand-in AppView answers with a repo
rev older than what the caller has written, and leafpds merges the caller's
newer records into the proxied answer.
"""

import pytest_twisted

from tests.test_proxy import TIMELINE, services, signed_in  # noqa: F401 (a fixture)

PROFILE = "app.bsky.actor.getProfile"
AUTHOR_FEED = "app.bsky.feed.getAuthorFeed"
THREAD = "app.bsky.feed.getPostThread"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def head_rev(pds, did):
    answer = await pds.get("com.atproto.sync.getLatestCommit", {"did": did})
    return answer.json()["rev"]


async def write(pds, auth, did, collection, record, rkey=None):
    body = {"repo": did, "collection": collection, "record": record}
    if rkey is not None:
        body["rkey"] = rkey
    answer = await pds.post("com.atproto.repo.createRecord", body, headers=auth)
    assert answer.code == 200, answer.body
    return answer.json()


def post(text, **extra):
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-12-06T00:00:00.000Z", **extra}


def old_item(uri="at://did:plc:other/app.bsky.feed.post/1", author="did:plc:other"):
    return {"post": {"uri": uri, "cid": "bafyreib", "author": {"did": author, "handle": "other.test"},
                     "record": post("old"), "indexedAt": "2020-01-01T00:00:00.000Z"}}


@pytest_twisted.ensureDeferred
async def test_new_posts_top_the_timeline_until_the_appview_catches_up(services):
    pds, appview, _ = services
    did, auth = await signed_in(pds)
    seen_rev = await head_rev(pds, did)
    first = await write(pds, auth, did, "app.bsky.feed.post", post("first"))
    second = await write(pds, auth, did, "app.bsky.feed.post", post("second"))
    appview.route(TIMELINE, body={"feed": [old_item()], "cursor": "c"}, headers={"atproto-repo-rev": seen_rev})

    answer = await pds.get(TIMELINE, headers=auth)
    assert answer.code == 200, answer.body
    feed = answer.json()["feed"]
    assert [item["post"]["uri"] for item in feed] == [second["uri"], first["uri"], old_item()["post"]["uri"]]
    newest = feed[0]["post"]
    assert newest["cid"] == second["cid"] and newest["record"]["text"] == "second"
    assert newest["author"] == {"did": did, "handle": "alice.test"}
    assert newest["likeCount"] == 0 and newest["indexedAt"] > "2026"
    assert answer.json()["cursor"] == "c"
    assert answer.header("atproto-repo-rev") is None
    assert int(answer.header("atproto-upstream-lag")) >= 0

    # Caught up: the answer passes as it came.
    appview.route(TIMELINE, body={"feed": [], "cursor": "d"}, headers={"atproto-repo-rev": await head_rev(pds, did)})
    answer = await pds.get(TIMELINE, headers=auth)
    assert answer.json() == {"feed": [], "cursor": "d"}
    assert answer.header("atproto-repo-rev") == await head_rev(pds, did)
    assert answer.header("atproto-upstream-lag") is None


@pytest_twisted.ensureDeferred
async def test_a_rev_from_before_the_repo_merges_nothing(services):
    pds, appview, _ = services
    did, auth = await signed_in(pds)
    await write(pds, auth, did, "app.bsky.feed.post", post("mine"))
    # Older than every record here (a migrated account's old AppView state).
    appview.route(TIMELINE, body={"feed": []}, headers={"atproto-repo-rev": "2222222222222"})
    answer = await pds.get(TIMELINE, headers=auth)
    assert answer.json() == {"feed": []} and answer.header("atproto-repo-rev") == "2222222222222"


@pytest_twisted.ensureDeferred
async def test_the_new_profile_shows_in_get_profile_and_on_own_posts(services):
    pds, appview, _ = services
    did, auth = await signed_in(pds)
    seen_rev = await head_rev(pds, did)
    blob = (await pds.request("POST", "/xrpc/com.atproto.repo.uploadBlob", data=PNG,
                              headers={**auth, "Content-Type": "image/png"})).json()["blob"]
    await write(pds, auth, did, "app.bsky.actor.profile",
                {"$type": "app.bsky.actor.profile", "displayName": "New Alice", "description": "hi", "avatar": blob},
                rkey="self")
    stale = {"did": did, "handle": "alice.test", "displayName": "Old", "followersCount": 7}
    appview.route(PROFILE, body=stale, headers={"atproto-repo-rev": seen_rev})
    answer = await pds.get(PROFILE, {"actor": did}, headers=auth)
    profile = answer.json()
    assert profile["displayName"] == "New Alice" and profile["description"] == "hi"
    assert profile["followersCount"] == 7
    cid = blob["ref"]["$link"]
    assert profile["avatar"] == f"{pds.service.app.public_url}/xrpc/com.atproto.sync.getBlob?did={did.replace(':', '%3A')}&cid={cid}"

    # Someone else's profile is theirs.
    appview.route(PROFILE, body={**stale, "did": "did:plc:someoneelse"}, headers={"atproto-repo-rev": seen_rev})
    answer = await pds.get(PROFILE, {"actor": "did:plc:someoneelse"}, headers=auth)
    assert answer.json()["displayName"] == "Old"

    # The caller's posts already in a feed show the new name too.
    mine = old_item(uri=f"at://{did}/app.bsky.feed.post/3old", author=did)
    appview.route(AUTHOR_FEED, body={"feed": [mine]}, headers={"atproto-repo-rev": seen_rev})
    answer = await pds.get(AUTHOR_FEED, {"actor": "alice.test"}, headers=auth)
    assert answer.json()["feed"][0]["post"]["author"]["displayName"] == "New Alice"


@pytest_twisted.ensureDeferred
async def test_the_author_feed_of_the_caller_only_and_its_filters(services):
    pds, appview, _ = services
    did, auth = await signed_in(pds)
    seen_rev = await head_rev(pds, did)
    top = await write(pds, auth, did, "app.bsky.feed.post", post("top"))
    ref = {"uri": top["uri"], "cid": top["cid"]}
    reply = await write(pds, auth, did, "app.bsky.feed.post", post("reply", reply={"root": ref, "parent": ref}))
    appview.route(AUTHOR_FEED, body={"feed": []}, headers={"atproto-repo-rev": seen_rev})

    answer = await pds.get(AUTHOR_FEED, {"actor": did}, headers=auth)
    assert [i["post"]["uri"] for i in answer.json()["feed"]] == [reply["uri"], top["uri"]]
    answer = await pds.get(AUTHOR_FEED, {"actor": did, "filter": "posts_no_replies"}, headers=auth)
    assert [i["post"]["uri"] for i in answer.json()["feed"]] == [top["uri"]]
    answer = await pds.get(AUTHOR_FEED, {"actor": "did:plc:someoneelse"}, headers=auth)
    assert answer.json() == {"feed": []}


@pytest_twisted.ensureDeferred
async def test_a_new_reply_shows_in_the_thread_and_images_as_views(services):
    pds, appview, _ = services
    did, auth = await signed_in(pds)
    seen_rev = await head_rev(pds, did)
    parent = old_item()["post"]
    ref = {"uri": parent["uri"], "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"}
    blob = (await pds.request("POST", "/xrpc/com.atproto.repo.uploadBlob", data=PNG,
                              headers={**auth, "Content-Type": "image/png"})).json()["blob"]
    embed = {"$type": "app.bsky.embed.images", "images": [{"image": blob, "alt": "a square"}]}
    reply = await write(pds, auth, did, "app.bsky.feed.post", post("agreed", reply={"root": ref, "parent": ref}, embed=embed))
    thread = {"thread": {"$type": "app.bsky.feed.defs#threadViewPost", "post": parent, "replies": []}}
    appview.route(THREAD, body=thread, headers={"atproto-repo-rev": seen_rev})

    answer = await pds.get(THREAD, {"uri": parent["uri"]}, headers=auth)
    (added,) = answer.json()["thread"]["replies"]
    assert added["$type"] == "app.bsky.feed.defs#threadViewPost" and added["post"]["uri"] == reply["uri"]
    view = added["post"]["embed"]
    assert view["$type"] == "app.bsky.embed.images#view" and view["images"][0]["alt"] == "a square"
    assert view["images"][0]["fullsize"].endswith(f"&cid={blob['ref']['$link']}")


@pytest_twisted.ensureDeferred
async def test_an_answer_of_unknown_size_streams_through_unmerged(services):
    pds, appview, _ = services
    did, auth = await signed_in(pds)
    seen_rev = await head_rev(pds, did)
    await write(pds, auth, did, "app.bsky.feed.post", post("new"))
    # Chunked, no content-length: not read whole, passed as it came.
    appview.route(TIMELINE, chunks=[b'{"feed":', b' []}'],
                  headers={"atproto-repo-rev": seen_rev, "content-type": "application/json"})
    answer = await pds.get(TIMELINE, headers=auth)
    assert answer.code == 200 and answer.json() == {"feed": []}
    assert answer.header("atproto-repo-rev") == seen_rev and answer.header("atproto-upstream-lag") is None
