"""
The atproto OAuth authorization server (issue #15), built bottom-up.

Built and tested so far, not mounted anywhere (no endpoint, no
``/.well-known/oauth-*`` document is served until the whole flow works):
``errors`` (the RFC error names), ``jwk`` (public JWKs, RFC 7638
thumbprints), ``replay`` (single-use ids), ``nonces`` (rotating DPoP
nonces), ``dpop`` (RFC 9449 proofs), ``scopes`` (atproto scopes and
permissions), ``clients`` (client metadata documents), ``metadata`` (the
discovery documents), ``par`` (pushed authorization requests),
``assertions`` (``private_key_jwt``) and ``tokens`` (codes and tokens).
"""
