"""
The atproto OAuth authorization server (issue #15).

Built in leafpds.service (``app.oauth``); leafpds.xrpc.resource serves
its ``/oauth/`` endpoints and the two ``/.well-known/oauth-*`` documents.
docs/architecture.md ("OAuth (in progress)") lists what each module holds
and what is left.
"""
