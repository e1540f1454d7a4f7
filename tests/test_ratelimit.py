"""Rate limits: the counters, and 429 answers over HTTP."""

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from leafpds.errors import RateLimitExceeded
from leafpds.xrpc.ratelimit import Limit, RateLimiter
from tests.harness import make_settings, start_pds
from tests.test_accounts import assert_error, bearer, create


def test_fixed_windows_and_the_tightest_limit():
    clock = Clock()
    limiter = RateLimiter([Limit.parse("5/10"), Limit.parse("8/100")], clock.seconds)
    for _ in range(5):
        limiter.consume("k", 1)
    with pytest.raises(RateLimitExceeded):
        limiter.consume("k", 1)
    limiter.consume("other", 5)  # keys are independent
    clock.advance(10)
    for _ in range(3):
        limiter.consume("k", 1)
    with pytest.raises(RateLimitExceeded):  # the 100 s window is now full (8)
        limiter.consume("k", 1)
    clock.advance(90)
    limiter.consume("k", 5)


def test_a_refused_request_counts_nothing():
    clock = Clock()
    limiter = RateLimiter([Limit.parse("5/10")], clock.seconds)
    limiter.consume("k", 3)
    with pytest.raises(RateLimitExceeded):
        limiter.consume("k", 3)
    limiter.consume("k", 2)


def test_bad_specs():
    for text in ["", "x/1", "0/10", "5/0", "5"]:
        with pytest.raises(ValueError):
            Limit.parse(text)


@pytest_twisted.ensureDeferred
async def test_requests_per_ip_over_http(tmp_path):
    running = await start_pds(make_settings(tmp_path, rate_limit_requests="4/60"))
    try:
        for _ in range(4):
            ok = await running.get("com.atproto.server.describeServer")
            assert ok.code == 200
        assert ok.header("ratelimit-remaining") == "0" and ok.header("ratelimit-limit") == "4"
        refused = await running.get("com.atproto.server.describeServer")
        assert_error(refused, 429, "RateLimitExceeded")
        assert refused.header("ratelimit-policy") == "4;w=60"
        assert int(refused.header("ratelimit-reset")) > 0
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_write_points_per_account(tmp_path):
    running = await start_pds(make_settings(tmp_path, rate_limit_writes="7/3600"))
    try:
        created = (await create(running)).json()
        did, auth = created["did"], bearer(created["accessJwt"])
        body = {"repo": did, "collection": "com.example.thing", "record": {"n": 1}}
        for _ in range(2):  # 3 points each
            assert (await running.post("com.atproto.repo.createRecord", body, headers=auth)).code == 200
        before = (await running.get("com.atproto.sync.getLatestCommit", {"did": did})).json()
        refused = await running.post("com.atproto.repo.createRecord", body, headers=auth)
        assert_error(refused, 429, "RateLimitExceeded")
        assert (await running.get("com.atproto.sync.getLatestCommit", {"did": did})).json() == before
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_no_rate_limits_flag(tmp_path):
    running = await start_pds(make_settings(tmp_path, rate_limit_requests="1/60", no_rate_limits=True))
    try:
        for _ in range(3):
            assert (await running.get("com.atproto.server.describeServer")).code == 200
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_sign_in_pages_and_firehose_count_too(tmp_path):
    running = await start_pds(make_settings(tmp_path, rate_limit_requests="2/60"))
    try:
        for _ in range(2):
            page = await running.request("POST", "/auth/exchange", data=b"{}")
            assert page.code == 400  # counted, then refused for its content
        assert_error(await running.request("POST", "/auth/exchange", data=b"{}"), 429, "RateLimitExceeded")
        assert_error(await running.get("com.atproto.sync.subscribeRepos"), 429, "RateLimitExceeded")
    finally:
        await running.service.stopService()
