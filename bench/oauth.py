"""
The server's cost of authenticating one XRPC call: a session JWT (as today)
against an OAuth DPoP call (a fresh proof to verify, its jti to remember, the
access token to check).  Proofs are signed beforehand: signing is the
client's cost.  Prints calls per second and microseconds per call.

    .venv/bin/python bench/oauth.py
"""

import secrets
import time

from leafpds.accounts.sessions import TokenIssuer
from leafpds.oauth.access import check_dpop_call
from leafpds.oauth.dpop import DpopVerifier
from leafpds.oauth.jwk import thumbprint
from leafpds.oauth.nonces import DpopNonces
from leafpds.oauth.replay import ReplayCache
from leafpds.oauth.tokens import AccessTokens, Grant
from tests.oauth_keys import ClientKey

URL = "https://pds.test/xrpc/com.atproto.repo.getRecord"
CALLS = 3000


class WallClock:
    def seconds(self) -> float:
        return time.time()


def timed(label: str, fn, items) -> None:
    start = time.perf_counter()
    for item in items:
        fn(item)
    elapsed = time.perf_counter() - start
    print(f"{label:<44} {len(items) / elapsed:>10,.0f} calls/s  {elapsed / len(items) * 1e6:>7.0f} µs/call")


def main() -> None:
    clock = WallClock()
    sessions = TokenIssuer(secrets.token_bytes(32), "did:web:pds.test", clock.seconds)
    session_token = sessions.access_token("did:plc:alice", "session-1")
    timed("session JWT (verified-token cache)", lambda _: sessions.verify_access(session_token), range(CALLS))

    nonces = DpopNonces(secrets.token_bytes(32), clock)
    verifier = DpopVerifier(clock, nonces, ReplayCache(clock, capacity=10 * CALLS))
    tokens = AccessTokens(secrets.token_bytes(32), "https://pds.test", "did:web:pds.test", clock, {})
    key = ClientKey()
    grant = Grant("grt-1", "did:plc:alice", "https://app.example.com/m.json", "none",
                  "atproto transition:generic", thumbprint(key.jwk))
    token, _ = tokens.issue(grant, grant.scope)
    nonce = nonces.next()
    proofs = [key.proof("GET", URL, nonce=nonce, access_token=token) for _ in range(CALLS)]
    timed("OAuth access token (verified-token cache)", lambda _: tokens.verify(token), range(CALLS))
    timed("DPoP call: proof + jti + access token", lambda p: check_dpop_call(tokens, verifier, token, p, "GET", URL),
          proofs)


if __name__ == "__main__":
    main()
