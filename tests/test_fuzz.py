"""
A seeded fuzz run: ~1,500 malformed requests across every served XRPC method.
Every answer must be a 4xx with an error JSON (never a 5xx, a traceback or a
file path), the server must stay healthy, and no repo may change.
"""

import base64
import json
import random

import jwt
import pytest_twisted

from leafpds.lexicon.schema import absolute_ref
from leafpds.xrpc import auth as verifiers
from leafpds.xrpc.registry import xrpc
from tests.test_accounts import bearer, create

SEED = 20261128
PER_METHOD = 50

BAD_STRINGS = [
    "", " ", "\u0000", "../../etc/passwd", "did:", "did:plc:", "at://", "not an nsid", "x" * 3000,
    "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpmZZ", "🙂" * 300, "-1", "1e309",
    "' OR 1=1 --", "%00", "\ud7ff", "3k", "..", ".", "a/b", "did:web:..", "javascript:alert(1)",
]
BAD_VALUES = [None, True, -1, 2**70, 1.5, [], {}, [1, 2], {"$link": "nope"}, {"$bytes": "***"}]


async def snapshot(pds, did: str) -> tuple:
    """What a refused request must leave as it was: the repo, and the rows of every kind of state."""
    latest = (await pds.get("com.atproto.sync.getLatestCommit", {"did": did})).json()
    records = (await pds.get("com.atproto.repo.listRecords", {"repo": did, "collection": "app.bsky.feed.post"})).json()

    def count(conn):
        return [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in STATE_TABLES]

    return latest, records, await pds.service.app.db.read(count)


STATE_TABLES = (
    "accounts", "records", "blocks", "fresh_blocks", "repo_seq", "app_passwords", "invite_codes",
    "refresh_tokens", "revoked_sessions", "blobs",
)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _jwt_variants(valid_access: str, valid_refresh: str) -> list[str]:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode()
    payload = valid_access.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return [
        "garbage",
        f"{header}.{payload}.",
        jwt.encode(claims, b"k" * 32, algorithm="HS256", headers={"typ": "at+jwt"}),
        valid_refresh,  # a refresh token where an access token is expected
        valid_access[:-4] + "AAAA",
        "a.b.c",
        "",
    ]


_BAD_FORMATS = {
    "did": "not-a-did", "cid": "bafynotacid", "at-identifier": "@@", "nsid": "not an nsid",
    "datetime": "yesterday", "record-key": "..", "handle": "-bad-.x", "tid": "zzz",
    "at-uri": "https://example.com", "uri": "no scheme", "language": "not a lang!",
}


def _definitely_bad(schema: dict) -> str | None:
    """A query-string value this parameter's schema refuses, if there is one."""
    kind = schema.get("type")
    if kind == "integer":
        return random.choice(["abc", "1.5", "99999999999999999999999", "0x10"])
    if kind == "boolean":
        return "yes"
    if kind == "string":
        if schema.get("format") in _BAD_FORMATS:
            return _BAD_FORMATS[schema["format"]]
        if "maxLength" in schema:
            return "x" * (schema["maxLength"] + 1)
    return None


def _wrong_type(schema: dict):
    """A JSON value of the wrong type for this property."""
    kind = schema.get("type")
    if kind in ("integer", "boolean"):
        return random.choice(["a string", [], {}])
    if kind in ("array",):
        return random.choice(["a string", 5, {}])
    if kind in ("string", "cid-link", "bytes", "blob", "ref", "union", "object", "unknown"):
        return random.choice([5, [], None, True])
    return None


def _requests_for(rng: random.Random, lexicons, nsid: str, method, bad_auths: list[dict], good_auth: dict) -> list[tuple]:
    if method.auth is verifiers.refresh:
        # For these a refresh token is the right credential, not a bad one.
        bad_auths = [a for a in bad_auths if a.get("_kind") != "refresh"]
    bad_auths = [{k: v for k, v in a.items() if k != "_kind"} for a in bad_auths]
    definition = lexicons.get_def(nsid)
    params = (definition.get("parameters") or {}).get("properties", {})
    required = set((definition.get("parameters") or {}).get("required", []))
    input_schema = (definition.get("input") or {}).get("schema") or {}
    # A property that refers to another definition gets a value of the wrong
    # type for what it refers to (an empty list is right for a ref to an array).
    properties = {
        name: lexicons.get_def(absolute_ref(schema["ref"], nsid)) if schema.get("type") == "ref" else schema
        for name, schema in input_schema.get("properties", {}).items()
    }
    required_input = [n for n in input_schema.get("required", []) if _wrong_type(properties.get(n, {})) is not None]
    bad_params = {name: _definitely_bad(schema) for name, schema in params.items()}
    bad_params = {name: value for name, value in bad_params.items() if value is not None}
    out = []
    for _ in range(PER_METHOD):
        auth = dict(rng.choice([good_auth, *bad_auths]))
        # Each request carries at least one thing that must be refused.
        reasons = ["method"]
        if method.auth is not None:
            reasons.append("auth")
        if method.kind == "query" and (bad_params or required):
            reasons += ["params"] * 4
        if method.kind == "procedure" and not method.raw_input and definition.get("input"):
            reasons += ["body"] * 3
            if required_input:
                reasons += ["input"] * 4
        reason = rng.choice(reasons)
        if reason == "auth":
            auth = dict(rng.choice(bad_auths))
        if reason == "method":
            verb = "POST" if method.kind == "query" else "GET"
            out.append((verb, nsid, {}, None, auth))
            continue
        if method.kind == "query":
            query = {name: rng.choice(BAD_STRINGS[:12]) for name in params if rng.random() < 0.4}
            if reason == "params":
                if bad_params and (not required or rng.random() < 0.6):
                    name = rng.choice(sorted(bad_params))
                    query[name] = bad_params[name]
                else:
                    for name in required:
                        query.pop(name, None)
            out.append(("GET", nsid, query, None, auth))
            continue
        if method.raw_input:
            body = rng.choice([b"", b"\x00" * 64, b"garbage car", bytes(rng.getrandbits(8) for _ in range(300))])
            out.append(("POST", nsid, {}, body, {**dict(rng.choice(bad_auths)), "Content-Type": "application/octet-stream"}))
            continue
        content_type = "application/json"
        if reason == "input":
            value = {name: rng.choice(BAD_VALUES + BAD_STRINGS) for name in properties if rng.random() < 0.5}
            name = rng.choice(required_input)
            value[name] = _wrong_type(properties[name])
            body = json.dumps(value).encode()
        else:
            body, content_type = rng.choice([
                (b"{nope", "application/json"), (b"\xff\xfe", "application/json"), (b"[]", "application/json"),
                (b"12", "application/json"), (b"{" * 5000, "application/json"),
                (_deep(rng.choice([100, 1000, 20000])).encode(), "application/json"),
                (b'{"a": 1}', "text/plain"), (b'{"a": 1}', "application/x-www-form-urlencoded"),
                (b'{"record": {"a": 1.5}}', "application/json"),
            ])
        out.append(("POST", nsid, {}, body, {**auth, "Content-Type": content_type}))
    return out


@pytest_twisted.ensureDeferred
async def test_malformed_requests_are_refused_cleanly(pds):
    made = (await create(pds)).json()
    did = made["did"]
    victim_auth = bearer(made["accessJwt"])
    await pds.post(
        "com.atproto.repo.createRecord",
        {"repo": did, "collection": "app.bsky.feed.post", "record": {"text": "keep", "createdAt": "2026-11-28T00:00:00.000Z"}},
        headers=victim_auth,
    )

    before = await snapshot(pds, did)
    rng = random.Random(SEED)
    random.seed(SEED)
    bad_auths = [{}] + [
        {**bearer(t), "_kind": "refresh" if t == made["refreshJwt"] else "bad"}
        for t in _jwt_variants(made["accessJwt"], made["refreshJwt"])
    ]
    requests = []
    for nsid, method in sorted(xrpc.methods.items()):
        requests += _requests_for(rng, pds.service.app.lexicons, nsid, method, bad_auths, victim_auth)
    requests += [("GET", name, {}, None, {}) for name in ["com..bad", "-x.y.z", "a" * 300, "com.example.%00"]]
    assert len(requests) >= 1400

    failures = []
    for verb, nsid, params, body, headers in requests:
        answer = await pds.request(verb, "/xrpc/" + nsid, params=params or None, data=body, headers=headers)
        problem = None
        if not 400 <= answer.code < 500:
            problem = f"status {answer.code}"
        else:
            try:
                error = answer.json()
                assert isinstance(error.get("error"), str) and isinstance(error.get("message"), str)
            except Exception:
                problem = "no error JSON"
        text = answer.body.decode("utf-8", "replace")
        if "Traceback" in text or "/leafpds/" in text or ".py" in text:
            problem = "leaks internals"
        if problem:
            failures.append((problem, verb, nsid, params, body[:200] if body else None, answer.code, text[:300]))
    assert failures == [], failures[:10]
    assert (await pds.get("_health")).code == 200
    assert await snapshot(pds, did) == before
