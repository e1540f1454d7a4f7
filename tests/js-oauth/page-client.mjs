// An atproto app as it signs people in: the official OAuth client
// (@atproto/oauth-client-node) as a loopback development client, and
// `Agent` from @atproto/api (the test copies the bundle tests/jsbundle.py
// builds next to this script as ./atproto-api.js).  Run twice by
// tests/test_oauth_official_page.py, with a browser playing the person in
// between; its stores are a JSON file, as an app keeps them across requests.
//
//   node page-client.mjs authorize <store.json> <handle resolver> <plc url> <handle or server URL>
//     prints {step: "authorize", url}: where the app sends the browser.
//   node page-client.mjs finish <store.json> <handle resolver> <plc url> <callback query>
//     the callback (code exchange), a record created with DPoP, a forced
//     refresh and a record with the new token, the token and DPoP key the
//     app holds (for the test to try once revoked), then sign-out (revocation).
import { readFileSync, writeFileSync, existsSync } from 'node:fs'
import { NodeOAuthClient } from '@atproto/oauth-client-node'
import { requestLocalLock } from '@atproto/oauth-client'
import { Agent } from './atproto-api.js'

const [mode, storePath, handleResolver, plcDirectoryUrl, input] = process.argv.slice(2)
const redirect = 'http://127.0.0.1/callback'
const scope = 'atproto transition:generic'
const clientId = `http://localhost?redirect_uri=${encodeURIComponent(redirect)}&scope=${encodeURIComponent(scope)}`

const load = () => (existsSync(storePath) ? JSON.parse(readFileSync(storePath, 'utf8')) : {})
const fileStore = (name) => ({
  get: async (key) => load()[name]?.[key],
  set: async (key, value) => {
    const all = load()
    all[name] = { ...all[name], [key]: value }
    writeFileSync(storePath, JSON.stringify(all))
  },
  del: async (key) => {
    const all = load()
    if (all[name]) delete all[name][key]
    writeFileSync(storePath, JSON.stringify(all))
  },
})
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
  stateStore: fileStore('state'),
  sessionStore: fileStore('session'),
  // Handles resolve through the PDS's resolveHandle, DIDs through its PLC directory.
  handleResolver,
  plcDirectoryUrl,
  // The test server is http on loopback.
  allowHttp: true,
  // One process at a time here.
  requestLock: requestLocalLock,
})

const post = async (agent, did, text) => {
  const created = await agent.com.atproto.repo.createRecord({
    repo: did,
    collection: 'app.bsky.feed.post',
    record: { $type: 'app.bsky.feed.post', text, createdAt: new Date().toISOString() },
  })
  return created.data.uri
}

if (mode === 'authorize') {
  const url = await client.authorize(input, { scope })
  step('authorize', { url: url.toString() })
} else if (mode === 'finish') {
  const { session } = await client.callback(new URLSearchParams(input))
  const info = await session.getTokenInfo(false)
  step('signed in', { did: session.did, sub: info.sub, scope: info.scope, aud: info.aud })
  const agent = new Agent(session)
  step('posted', { uri: await post(agent, session.did, 'Hello through atproto OAuth') })
  const refreshed = await client.restore(session.did, true)
  const after = await refreshed.getTokenInfo(false)
  step('refreshed', { expiresAt: after.expiresAt, changed: after.expiresAt !== info.expiresAt })
  step('posted again', { uri: await post(new Agent(refreshed), session.did, 'Hello after a refresh') })
  // What the app holds now (for the test to try after the revocation).
  const saved = load().session[session.did]
  step('held', { accessToken: saved.tokenSet.access_token, dpopJwk: saved.dpopJwk })
  await refreshed.signOut()
  step('signed out', {})
} else {
  throw new Error(`unknown mode ${mode}`)
}
