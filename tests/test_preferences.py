"""app.bsky.actor.getPreferences / putPreferences, served here, over HTTP."""

import json
from datetime import datetime, timezone

import pytest
import pytest_twisted
from twisted.internet import defer

from leafpds.accounts.preferences import _age
from leafpds.lexicon import validate_output
from tests.harness import ServerProcess
from tests.test_accounts import PASSWORD, assert_error, bearer, create
from tests.test_service_auth import _app_password_session

GET = "app.bsky.actor.getPreferences"
PUT = "app.bsky.actor.putPreferences"
DEFS = "app.bsky.actor.defs"
ADULT = {"$type": f"{DEFS}#adultContentPref", "enabled": True}
LABEL = {"$type": f"{DEFS}#contentLabelPref", "label": "nsfw", "visibility": "warn"}
FEEDS = {
    "$type": f"{DEFS}#savedFeedsPrefV2",
    "items": [{"id": "3l6", "type": "timeline", "value": "following", "pinned": True}],
}
THREADS = {"$type": f"{DEFS}#threadViewPref", "sort": "oldest"}
# An app.bsky type the lexicons do not know: kept as it is.
UNKNOWN = {"$type": "app.bsky.future.defs#shinyPref", "nested": {"list": [1, "two", None]}}


def born_years_ago(years: int) -> str:
    """A birthDate ``years`` years before today (UTC): that is the age today."""
    today = datetime.now(timezone.utc)
    return f"{today.year - years:04d}-{today.month:02d}-{min(today.day, 28):02d}T00:00:00.000Z"


def personal(birth_date: str) -> dict:
    return {"$type": f"{DEFS}#personalDetailsPref", "birthDate": birth_date}


def declared(age13: bool, age16: bool, age18: bool) -> dict:
    return {"$type": f"{DEFS}#declaredAgePref", "isOverAge13": age13, "isOverAge16": age16, "isOverAge18": age18}


async def prefs_of(pds, headers) -> list:
    answer = await pds.get(GET, headers=headers)
    assert answer.code == 200, answer.body
    validate_output(pds.service.app.lexicons, GET, answer.json())
    return answer.json()["preferences"]


async def put(pds, headers, prefs) -> None:
    answer = await pds.post(PUT, {"preferences": prefs}, headers=headers)
    assert (answer.code, answer.body) == (200, b""), answer.body


@pytest_twisted.ensureDeferred
async def test_preferences_round_trip_in_the_order_put(pds):
    alice = bearer((await create(pds)).json()["accessJwt"])
    bob = bearer((await create(pds, name="bobby")).json()["accessJwt"])
    assert await prefs_of(pds, alice) == []

    await put(pds, alice, [THREADS, UNKNOWN, ADULT, LABEL, FEEDS])
    assert await prefs_of(pds, alice) == [THREADS, UNKNOWN, ADULT, LABEL, FEEDS]
    # A put replaces the whole set: new order, one gone.
    await put(pds, alice, [FEEDS, ADULT, THREADS])
    assert await prefs_of(pds, alice) == [FEEDS, ADULT, THREADS]
    # Two of one type are kept as they came.
    second_label = dict(LABEL, label="gore")
    await put(pds, alice, [LABEL, second_label])
    assert await prefs_of(pds, alice) == [LABEL, second_label]
    # Each account has its own.
    assert await prefs_of(pds, bob) == []
    await put(pds, bob, [ADULT])
    assert await prefs_of(pds, alice) == [LABEL, second_label]
    await put(pds, alice, [])
    assert await prefs_of(pds, alice) == [] and await prefs_of(pds, bob) == [ADULT]


@pytest_twisted.ensureDeferred
async def test_concurrent_puts_leave_one_whole_set(pds):
    alice = bearer((await create(pds)).json()["accessJwt"])
    sets = [[dict(LABEL, label=f"l{i}-{j}") for j in range(5)] for i in range(6)]
    answers = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(pds.post(PUT, {"preferences": s}, headers=alice)) for s in sets]
    )
    assert [a.code for a in answers] == [200] * 6
    assert await prefs_of(pds, alice) in sets


@pytest_twisted.ensureDeferred
async def test_bad_puts_are_refused_and_change_nothing(pds):
    alice = bearer((await create(pds)).json()["accessJwt"])
    await put(pds, alice, [ADULT, THREADS])
    bad_bodies = {
        "not app.bsky": {"preferences": [ADULT, {"$type": "com.example.pref", "x": 1}]},
        "missing $type": {"preferences": [ADULT, {"enabled": True}]},
        "$type not a string": {"preferences": [{"$type": 7}]},
        "not an object": {"preferences": ["adult"]},
        "lexicon type error": {"preferences": [{"$type": f"{DEFS}#adultContentPref", "enabled": "yes"}]},
        "missing required field": {"preferences": [{"$type": f"{DEFS}#adultContentPref"}]},
        "bad birthDate": {"preferences": [personal("last spring")]},
        "no preferences key": {"prefs": [ADULT]},
        "preferences not a list": {"preferences": ADULT},
    }
    for case, body in bad_bodies.items():
        answer = await pds.post(PUT, body, headers=alice)
        assert_error(answer, 400, "InvalidRequest")
        assert await prefs_of(pds, alice) == [ADULT, THREADS], case
    not_json = await pds.request(
        "POST", f"/xrpc/{PUT}", data=b"{preferences: [", headers={**alice, "Content-Type": "application/json"}
    )
    assert_error(not_json, 400, "InvalidRequest")
    wrong_type = await pds.request(
        "POST", f"/xrpc/{PUT}", data=json.dumps({"preferences": []}).encode(),
        headers={**alice, "Content-Type": "text/plain"},
    )
    assert_error(wrong_type, 400, "InvalidRequest")
    assert_error(await pds.post(PUT, {"preferences": []}), 401, "AuthMissing")
    assert_error(await pds.get(GET), 401, "AuthMissing")
    assert_error(await pds.get(GET, headers=bearer("garbage")), 400, "InvalidToken")
    assert await prefs_of(pds, alice) == [ADULT, THREADS]


@pytest_twisted.ensureDeferred
async def test_personal_details_are_for_full_sessions_and_the_age_is_derived(pds):
    full = bearer((await create(pds)).json()["accessJwt"])
    plain = await _app_password_session(pds, full, "alice.test")
    privileged = await _app_password_session(pds, full, "alice.test", privileged=True)
    details = personal(born_years_ago(17))
    # A stored age declaration is dropped; one is derived from the birth date.
    await put(pds, full, [ADULT, details, declared(True, True, True), THREADS])
    assert await prefs_of(pds, full) == [ADULT, details, THREADS, declared(True, True, False)]
    for app in (plain, privileged):
        # App passwords see the age, not the birth date ...
        assert await prefs_of(pds, app) == [ADULT, THREADS, declared(True, True, False)]
        # ... may not set it ...
        refused = await pds.post(PUT, {"preferences": [LABEL, personal(born_years_ago(30))]}, headers=app)
        assert_error(refused, 400, "InvalidRequest")
        assert f"{DEFS}#personalDetailsPref" in refused.json()["message"]
        assert await prefs_of(pds, full) == [ADULT, details, THREADS, declared(True, True, False)]
    # ... and their puts leave it where it is.
    await put(pds, plain, [LABEL])
    assert await prefs_of(pds, full) == [details, LABEL, declared(True, True, False)]
    assert await prefs_of(pds, plain) == [LABEL, declared(True, True, False)]
    # Without personal details there is no declaration.
    await put(pds, full, [LABEL])
    assert await prefs_of(pds, full) == [LABEL]
    await put(pds, full, [{"$type": f"{DEFS}#personalDetailsPref"}])
    assert await prefs_of(pds, full) == [{"$type": f"{DEFS}#personalDetailsPref"}]


@pytest.mark.parametrize(
    "birth_date, age",
    [
        ("2000-06-15T00:00:00.000Z", 25),
        ("2000-06-16T00:00:00Z", 25),  # the birthday itself
        ("2000-06-17T00:00:00.000Z", 24),  # tomorrow
        ("2000-06-17T01:00:00+02:00", 25),  # that is still the 16th in UTC
        ("2000-06-16T23:30:00-01:00", 24),  # the 17th in UTC
        ("2012-06-16T00:00:00.123456789Z", 13),
        ("0000-01-01T00:00:00Z", None),  # outside Python's calendar
        ("not a date", None),
        (19900101, None),
    ],
)
def test_ages_by_the_utc_calendar(birth_date, age):
    now = datetime(2025, 6, 16, 12, tzinfo=timezone.utc).timestamp()
    assert _age(birth_date, now) == age


@pytest_twisted.ensureDeferred
async def test_preferences_survive_a_restart(tmp_path):
    server = ServerProcess(tmp_path / "data")
    await server.start()
    try:
        code, made = await server.call(
            "com.atproto.server.createAccount",
            {"handle": "alice.test", "email": "alice@example.com", "password": PASSWORD},
        )
        assert code == 200, made
        assert await server.call(PUT, {"preferences": [FEEDS, ADULT, UNKNOWN]}, made["accessJwt"]) == (200, {})
        server.kill()
        await server.start()
        code, answer = await server.call(GET, token=made["accessJwt"])
        assert (code, answer) == (200, {"preferences": [FEEDS, ADULT, UNKNOWN]})
    finally:
        server.kill()
