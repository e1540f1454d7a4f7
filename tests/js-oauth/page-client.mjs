// An atproto app as it signs people in: the official OAuth client
// (@atproto/oauth-client-node), and `Agent` from @atproto/api (the test
// copies the bundle tests/jsbundle.py builds next to this script as
// ./atproto-api.js).  Run step by step by the tests, with a browser
// playing the person in between; its stores are a JSON file, as an app
// keeps them across requests.  The app is a loopback development client
// (public), or, given <client.json> ({metadata, key}: the metadata
// document the test serves at metadata.client_id, and the private JWK it
// signs its client assertions with), a confidential web client.
//
//   node page-client.mjs authorize <store.json> <handle resolver> <plc url> <handle or server URL> [client.json]
//     prints {step: "authorize", url}: where the app sends the browser; or
//     {step: "refused", error, description} if the server refuses the app.
//   node page-client.mjs finish <store.json> <handle resolver> <plc url> <callback query> [client.json]
//     the callback (code exchange), a record created with DPoP, a forced
//     refresh and a record with the new token, and the token and DPoP key
//     the app holds (for the test to try once revoked).
//   node page-client.mjs sign-out <store.json> <handle resolver> <plc url> <did> [client.json]
//     sign-out (revocation).
import { readFileSync, writeFileSync, existsSync } from 'node:fs'
import { JoseKey, NodeOAuthClient, OAuthResponseError } from '@atproto/oauth-client-node'
import { requestLocalLock } from '@atproto/oauth-client'
import { Agent } from './atproto-api.js'

const [mode, storePath, handleResolver, plcDirectoryUrl, input, clientPath] = process.argv.slice(2)
const scope = 'atproto transition:generic'
const loopbackRedirect = 'http://127.0.0.1/callback'
const confidential = clientPath ? JSON.parse(readFileSync(clientPath, 'utf8')) : null
const clientMetadata = confidential
  ? confidential.metadata
  : {
      client_id: `http://localhost?redirect_uri=${encodeURIComponent(loopbackRedirect)}&scope=${encodeURIComponent(scope)}`,
      redirect_uris: [loopbackRedirect],
      scope,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      application_type: 'native',
      dpop_bound_access_tokens: true,
    }

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
  clientMetadata,
  // A confidential client signs its assertions with this key (its kid is in the JWK).
  keyset: confidential ? [await JoseKey.fromImportable(confidential.key)] : undefined,
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
  try {
    const url = await client.authorize(input, { scope })
    step('authorize', { url: url.toString() })
  } catch (e) {
    if (!(e instanceof OAuthResponseError)) throw e
    step('refused', { status: e.status, error: e.error, description: e.errorDescription })
  }
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
} else if (mode === 'sign-out') {
  const session = await client.restore(input, false)
  await session.signOut()
  step('signed out', {})
} else {
  throw new Error(`unknown mode ${mode}`)
}
