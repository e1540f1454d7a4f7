"""
The atproto OAuth authorization server (issue #15), built bottom-up.

Nothing here is mounted or advertised yet (no ``/oauth/*`` endpoint, no
``/.well-known/oauth-*`` document, no ``Authorization: DPoP`` at XRPC)
until the whole flow works end to end; docs/architecture.md ("OAuth (in
progress)") lists what each module holds and what is left.
"""
