// What test pages use of @atproto/api. tests/jsbundle.py bundles this file
// with its dependencies into one browser ES module (no CDN, no network).
export { Agent, AtpAgent, CredentialSession, RichText } from '@atproto/api'
