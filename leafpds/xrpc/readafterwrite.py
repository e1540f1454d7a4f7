"""
Read-after-write: a post shows up in its author's feeds the moment it is
acknowledged, before the AppView has indexed it.

A proxied answer of the methods below carries the AppView's
``atproto-repo-rev``: how far it has read the caller's repo.  When the repo
is past it, the caller's newest records (at most ten, as the official PDS
takes) are merged into the answer — new posts on top of the timeline and the
author feed, replies in the thread, the new profile fields — and the answer
says how far behind the AppView was with ``Atproto-Upstream-Lag`` (ms) in
place of the rev.  Nothing is read from the database while the AppView is
caught up with a repo written through this process.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from leafpds.ipld import atjson, codec
from leafpds.repo.reads import LocalRecord, WrittenSince
from leafpds.timestamps import epoch_from_iso

PROFILE = "app.bsky.actor.profile"
POST = "app.bsky.feed.post"
LIMIT = 10
# Bigger answers are passed on as they are (the official PDS's bound).
MAX_BUFFERED = 10 * 1024 * 1024


@dataclass
class Local:
    """The caller's records since the AppView's rev, as views are made of them."""

    did: str
    handle: str
    public_url: str
    posts: list[tuple[LocalRecord, dict[str, Any]]]
    #: The profile record's value if it is among the new records.
    profile: dict[str, Any] | None
    #: The profile record's value, new or not (for the author of new posts).
    current_profile: dict[str, Any] | None
    oldest: str

    def image_url(self, blob: Any) -> str | None:
        try:
            cid = blob["ref"]["$link"]
        except (TypeError, KeyError):
            return None
        return f"{self.public_url}/xrpc/com.atproto.sync.getBlob?did={quote(self.did)}&cid={quote(cid)}"

    def author(self) -> dict[str, Any]:
        view: dict[str, Any] = {"did": self.did, "handle": self.handle}
        return self.with_profile(view, self.current_profile, basic=True)

    def with_profile(self, view: dict[str, Any], record: dict[str, Any] | None, basic: bool = False) -> dict[str, Any]:
        """``view`` of the caller with the profile ``record``'s fields (a profileView* of any depth)."""
        if record is None:
            return view
        view = dict(view)
        fields = [("displayName", record.get("displayName")), ("avatar", self.image_url(record.get("avatar")))]
        if not basic:
            fields.append(("description", record.get("description")))
            if "banner" in view or record.get("banner") is not None:
                fields.append(("banner", self.image_url(record.get("banner"))))
        for name, value in fields:
            if value is None:
                view.pop(name, None)
            else:
                view[name] = value
        return view

    def post_view(self, record: LocalRecord, value: dict[str, Any]) -> dict[str, Any]:
        view: dict[str, Any] = {
            "uri": f"at://{self.did}/{record.collection}/{record.rkey}",
            "cid": record.cid.encode(),
            "author": self.author(),
            "record": value,
            # Counts are presumed nought right after posting.
            "replyCount": 0,
            "repostCount": 0,
            "likeCount": 0,
            "quoteCount": 0,
            "indexedAt": record.indexed_at,
            "labels": [],
        }
        embed = self.embed_view(value.get("embed"))
        if embed is not None:
            view["embed"] = embed
        return view

    def embed_view(self, embed: Any) -> dict[str, Any] | None:
        """Images and external links as their views; what needs the AppView is left out."""
        if not isinstance(embed, dict):
            return None
        kind = embed.get("$type")
        if kind == "app.bsky.embed.images":
            images = []
            for image in embed.get("images") or []:
                url = self.image_url(image.get("image"))
                if url is None:
                    return None
                item = {"thumb": url, "fullsize": url, "alt": image.get("alt", "")}
                if image.get("aspectRatio") is not None:
                    item["aspectRatio"] = image["aspectRatio"]
                images.append(item)
            return {"$type": "app.bsky.embed.images#view", "images": images}
        if kind == "app.bsky.embed.external" and isinstance(embed.get("external"), dict):
            external = embed["external"]
            view = {key: external[key] for key in ("uri", "title", "description") if key in external}
            thumb = self.image_url(external.get("thumb"))
            if thumb is not None:
                view["thumb"] = thumb
            return {"$type": "app.bsky.embed.external#view", "external": view}
        return None


def local_view(found: WrittenSince, did: str, public_url: str) -> Local:
    posts, profile = [], None
    for record in found.records:
        value = atjson.to_json(codec.decode(record.data))
        if record.collection == POST:
            posts.append((record, value))
        elif record.collection == PROFILE and record.rkey == "self":
            profile = value
    current = atjson.to_json(codec.decode(found.profile.data)) if found.profile is not None else None
    oldest = min(record.indexed_at for record in found.records)
    return Local(did, found.handle, public_url, posts, profile, current, oldest)


# Merging, one function per method: (answer, local, params) -> answer.


def _insert_posts(feed: list[Any], local: Local) -> list[Any]:
    """New posts into a feed of feedViewPosts, newest first, by indexedAt, not before its end."""
    if not local.posts:
        return feed
    feed = list(feed)
    last = feed[-1].get("post", {}).get("indexedAt", "") if feed else ""
    present = {item.get("post", {}).get("uri") for item in feed}
    for record, value in local.posts:  # oldest first: each lands above the older
        view = local.post_view(record, value)
        if view["indexedAt"] <= last or view["uri"] in present:
            continue
        at = next((i for i, item in enumerate(feed) if item.get("post", {}).get("indexedAt", "") < view["indexedAt"]), len(feed))
        feed.insert(at, {"post": view})
    return feed


def _update_authors(feed: list[Any], local: Local) -> list[Any]:
    """The caller's own profile fields in a feed's post authors."""
    if local.profile is None:
        return feed
    for item in feed:
        post = item.get("post") if isinstance(item, dict) else None
        if isinstance(post, dict) and isinstance(post.get("author"), dict) and post["author"].get("did") == local.did:
            post["author"] = local.with_profile(post["author"], local.profile, basic=True)
    return feed


def _timeline(answer: dict[str, Any], local: Local, params: dict[str, list[str]]) -> dict[str, Any]:
    answer["feed"] = _update_authors(_insert_posts(answer.get("feed") or [], local), local)
    return answer


def _is_caller(actor: str | None, local: Local) -> bool:
    return actor is not None and actor.lower() in (local.did, local.handle)


def _author_feed(answer: dict[str, Any], local: Local, params: dict[str, list[str]]) -> dict[str, Any]:
    if not _is_caller(_first(params, "actor"), local):
        return answer
    feed = answer.get("feed") or []
    # Replies are not in a posts_no_replies feed; media only in posts_with_media.
    filter_ = _first(params, "filter")
    if filter_ in ("posts_no_replies", "posts_and_author_threads"):
        local.posts = [(r, v) for r, v in local.posts if "reply" not in v]
    elif filter_ == "posts_with_media":
        local.posts = [(r, v) for r, v in local.posts if isinstance(v.get("embed"), dict)]
    answer["feed"] = _update_authors(_insert_posts(feed, local), local)
    return answer


def _actor_likes(answer: dict[str, Any], local: Local, params: dict[str, list[str]]) -> dict[str, Any]:
    answer["feed"] = _update_authors(answer.get("feed") or [], local)
    return answer


def _profile(answer: dict[str, Any], local: Local, params: dict[str, list[str]]) -> dict[str, Any]:
    if local.profile is None or answer.get("did") != local.did:
        return answer
    return local.with_profile(answer, local.profile)


def _profiles(answer: dict[str, Any], local: Local, params: dict[str, list[str]]) -> dict[str, Any]:
    answer["profiles"] = [_profile(p, local, params) if isinstance(p, dict) else p for p in answer.get("profiles") or []]
    return answer


def _post_thread(answer: dict[str, Any], local: Local, params: dict[str, list[str]]) -> dict[str, Any]:
    """The caller's new replies under the posts of the thread they answer."""
    nodes: dict[str, dict[str, Any]] = {}

    def index(node: Any) -> None:
        if isinstance(node, dict) and isinstance(node.get("post"), dict):
            nodes[node["post"].get("uri")] = node
            if local.profile is not None and node["post"].get("author", {}).get("did") == local.did:
                node["post"]["author"] = local.with_profile(node["post"]["author"], local.profile, basic=True)
            for reply in node.get("replies") or []:
                index(reply)

    index(answer.get("thread"))
    for record, value in local.posts:
        parent = (value.get("reply") or {}).get("parent", {}).get("uri")
        node = nodes.get(parent)
        if node is None:
            continue
        view = local.post_view(record, value)
        if any(isinstance(r, dict) and r.get("post", {}).get("uri") == view["uri"] for r in node.get("replies") or []):
            continue
        reply = {"$type": "app.bsky.feed.defs#threadViewPost", "post": view, "replies": []}
        node.setdefault("replies", []).insert(0, reply)
        nodes[view["uri"]] = reply
    return answer


MERGES: dict[str, Callable[[dict[str, Any], Local, dict[str, list[str]]], dict[str, Any]]] = {
    "app.bsky.actor.getProfile": _profile,
    "app.bsky.actor.getProfiles": _profiles,
    "app.bsky.feed.getAuthorFeed": _author_feed,
    "app.bsky.feed.getTimeline": _timeline,
    "app.bsky.feed.getPostThread": _post_thread,
    "app.bsky.feed.getActorLikes": _actor_likes,
}


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def merge(nsid: str, body: bytes, local: Local, params: dict[str, list[str]]) -> bytes | None:
    """The answer with the caller's records merged in; None if it is not JSON to merge into."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    return json.dumps(MERGES[nsid](answer, local, params), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def lag_ms(local: Local, now: float) -> int:
    """How far behind the AppView is: since the oldest record it has not seen."""
    return max(0, int((now - epoch_from_iso(local.oldest)) * 1000))

