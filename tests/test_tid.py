"""Tests for leafpds.tid."""

import random

import pytest

from leafpds.syntax import InvalidSyntax, validate_tid
from leafpds.tid import TIDClock, tid_clock_id, tid_from_parts, tid_timestamp

MAX_MICROS = (1 << 53) - 1


class FakeTime:
    """A ``now`` callable that returns the seconds it is told to."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self) -> float:
        return self.seconds


@pytest.mark.parametrize(
    ("micros", "clock_id", "tid"),
    [
        (0, 0, "2222222222222"),
        (0, 1, "2222222222223"),
        (1, 0, "2222222222322"),  # 1 << 10 = 32 * 32
        (MAX_MICROS, 1023, "bzzzzzzzzzzzz"),
    ],
)
def test_known_encodings(micros: int, clock_id: int, tid: str) -> None:
    assert tid_from_parts(micros, clock_id) == tid
    assert tid_timestamp(tid) == micros
    assert tid_clock_id(tid) == clock_id


def test_spec_example_decodes() -> None:
    # 3jzfcijpj2z2a, the spec's example, is from 2023.
    micros = tid_timestamp("3jzfcijpj2z2a")
    assert 1_672_531_200_000_000 <= micros < 1_704_067_200_000_000
    assert tid_from_parts(micros, tid_clock_id("3jzfcijpj2z2a")) == "3jzfcijpj2z2a"


def test_round_trip_random() -> None:
    rng = random.Random(1234)
    for _ in range(1000):
        micros = rng.randrange(1 << 53)
        clock_id = rng.randrange(1024)
        tid = tid_from_parts(micros, clock_id)
        validate_tid(tid)
        assert (tid_timestamp(tid), tid_clock_id(tid)) == (micros, clock_id)


def test_string_order_is_numeric_order() -> None:
    rng = random.Random(5678)
    parts = [(rng.randrange(1 << 53), rng.randrange(1024)) for _ in range(500)]
    # Include neighbours that differ only in the lowest bits.
    parts += [(1000, 0), (1000, 1), (1000, 1023), (1001, 0)]
    tids = [tid_from_parts(*p) for p in parts]
    assert sorted(tids) == [tid_from_parts(*p) for p in sorted(parts)]


@pytest.mark.parametrize(
    ("micros", "clock_id"), [(-1, 0), (1 << 53, 0), (0, -1), (0, 1024)]
)
def test_from_parts_out_of_range(micros: int, clock_id: int) -> None:
    with pytest.raises(ValueError):
        tid_from_parts(micros, clock_id)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "3jzfcijpj2z2",  # too short
        "3jzfcijpj2z2aa",  # too long
        "3JZFCIJPJ2Z2A",  # upper case
        "3jzfcijpj2z21",  # not base32-sortable
        "kjzfcijpj2z2a",  # more than 64 bits
    ],
)
def test_parse_errors(bad: str) -> None:
    with pytest.raises(InvalidSyntax):
        tid_timestamp(bad)
    with pytest.raises(InvalidSyntax):
        tid_clock_id(bad)


def test_top_bit_set_is_rejected() -> None:
    """``c``-``j`` first characters fit the syntax but set the reserved bit."""
    validate_tid("c222222222222")
    with pytest.raises(InvalidSyntax, match="top bit"):
        tid_timestamp("c222222222222")


def test_clock_uses_now_and_clock_id() -> None:
    clock = TIDClock(now=FakeTime(1_700_000_000.5), clock_id=42)
    tid = clock.next()
    assert tid_timestamp(tid) == 1_700_000_000_500_000
    assert tid_clock_id(tid) == 42


def test_clock_id_defaults_to_a_valid_random_one() -> None:
    ids = {tid_clock_id(TIDClock(now=FakeTime(1.0)).next()) for _ in range(50)}
    assert all(0 <= i < 1024 for i in ids)
    assert len(ids) > 1


def test_clock_rejects_bad_clock_id() -> None:
    with pytest.raises(ValueError):
        TIDClock(clock_id=1024)


def test_many_calls_within_one_microsecond() -> None:
    clock = TIDClock(now=FakeTime(1_700_000_000.0), clock_id=7)
    tids = [clock.next() for _ in range(1000)]
    assert tids == sorted(tids)
    assert len(set(tids)) == len(tids)
    # Each one borrows the next microsecond.
    assert tid_timestamp(tids[-1]) == 1_700_000_000_000_000 + 999


def test_monotonic_when_clock_goes_backwards() -> None:
    now = FakeTime(1_700_000_000.0)
    clock = TIDClock(now=now, clock_id=7)
    first = clock.next()
    now.seconds -= 3600
    second = clock.next()
    third = clock.next()
    assert first < second < third
    assert tid_timestamp(second) == tid_timestamp(first) + 1
    # Once real time passes the last issued timestamp, it is used again.
    now.seconds = 1_700_000_100.0
    assert tid_timestamp(clock.next()) == 1_700_000_100_000_000


def test_next_after_none_is_next() -> None:
    clock = TIDClock(now=FakeTime(1_700_000_000.0), clock_id=7)
    assert tid_timestamp(clock.next_after(None)) == 1_700_000_000_000_000


def test_next_after_previous_from_the_future() -> None:
    clock = TIDClock(now=FakeTime(1_700_000_000.0), clock_id=0)
    # Stored by an earlier run whose clock was a day ahead, with a higher
    # clock id than ours.
    previous = tid_from_parts(1_700_086_400_000_000, 1023)
    rev = clock.next_after(previous)
    assert rev > previous
    assert tid_timestamp(rev) == 1_700_086_400_000_001
    # And the clock keeps going from there.
    assert clock.next() > rev


def test_next_after_previous_from_the_past() -> None:
    clock = TIDClock(now=FakeTime(1_700_000_000.0), clock_id=7)
    previous = tid_from_parts(1_600_000_000_000_000, 1023)
    rev = clock.next_after(previous)
    assert rev > previous
    assert tid_timestamp(rev) == 1_700_000_000_000_000


def test_next_after_equal_timestamp_higher_clock_id() -> None:
    clock = TIDClock(now=FakeTime(1_700_000_000.0), clock_id=0)
    previous = tid_from_parts(1_700_000_000_000_000, 1023)
    assert clock.next_after(previous) > previous


def test_next_after_rejects_bad_previous() -> None:
    clock = TIDClock(now=FakeTime(1_700_000_000.0))
    with pytest.raises(InvalidSyntax):
        clock.next_after("not-a-tid")


def test_real_clock_is_monotonic() -> None:
    clock = TIDClock()
    tids = [clock.next() for _ in range(2000)]
    assert tids == sorted(set(tids))
