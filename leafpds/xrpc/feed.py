"""
``app.bsky.feed.getFeed``, served here as the official PDS serves it: the
AppView says which service generates the feed, then the call goes on to the
AppView with a service JWT for that generator (``aud`` its DID, ``lxm``
``getFeedSkeleton``), which the AppView presents to it on the user's behalf.
"""

from leafpds.errors import UpstreamFailure
from leafpds.xrpc import auth
from leafpds.xrpc.registry import Answered, XRPCContext, xrpc

GET_FEED_GENERATOR = "app.bsky.feed.getFeedGenerator"
GET_FEED_SKELETON = "app.bsky.feed.getFeedSkeleton"


@xrpc.query("app.bsky.feed.getFeed", auth=auth.access)
async def get_feed(ctx: XRPCContext) -> Answered:
    proxy = ctx.app.proxy
    target = await proxy.target(ctx.request, ctx.nsid)
    proxy.authorize(ctx.auth, ctx.nsid, target)
    answer = await proxy.query(ctx.auth.did, target, GET_FEED_GENERATOR, {"feed": ctx.params["feed"]})
    view = answer.get("view") if isinstance(answer, dict) else None
    generator = view.get("did") if isinstance(view, dict) else None
    if not isinstance(generator, str) or not generator.startswith("did:"):
        raise UpstreamFailure("The AppView named no feed generator for this feed")
    return await proxy.forward(ctx, aud=generator, lxm=GET_FEED_SKELETON)
