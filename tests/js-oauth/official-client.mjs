// The official atproto OAuth client (@atproto/oauth-client-node) signing in
// to the authorization server at argv[2] as a loopback development client:
// authorize (metadata, PAR with DPoP and nonce), the authorization page
// (fetched: the test's stand-in consents at once), callback (code
// exchange, issuer check through the account's DID), a forced refresh,
// sign-out (revocation).  Prints one JSON line per step.
import { NodeOAuthClient } from '@atproto/oauth-client-node'

const issuer = process.argv[2]
const redirect = 'http://127.0.0.1/callback'
const scope = 'atproto transition:generic'
const clientId = `http://localhost?redirect_uri=${encodeURIComponent(redirect)}&scope=${encodeURIComponent(scope)}`
const memory = () => {
  const values = new Map()
  return {
    get: async (key) => values.get(key),
    set: async (key, value) => { values.set(key, value) },
    del: async (key) => { values.delete(key) },
  }
}
const step = (name, value) => console.log(JSON.stringify({ step: name, ...value }))

const client = new NodeOAuthClient({
  clientMetadata: {
    client_id: clientId,
    redirect_uris: [redirect],
    scope,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'none',
    application_type: 'native',
    dpop_bound_access_tokens: true,
  },
  stateStore: memory(),
  sessionStore: memory(),
  // The test server is http on loopback.
  allowHttp: true,
})

const url = await client.authorize(issuer, { scope })
step('authorize', { url: url.toString() })
const page = await fetch(url, { redirect: 'manual' })
const location = page.headers.get('location')
step('consented', { status: page.status, location })
const { session } = await client.callback(new URL(location).searchParams)
const info = await session.getTokenInfo(false)
step('signed in', { did: session.did, scope: info.scope, aud: info.aud, sub: info.sub })
const refreshed = await client.restore(session.did, true)
step('refreshed', { expiresAt: (await refreshed.getTokenInfo(false)).expiresAt })
await refreshed.signOut()
step('signed out', {})
