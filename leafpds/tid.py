"""
Timestamp identifiers (https://atproto.com/specs/tid).

A TID is a 64-bit integer, top bit 0, then 53 bits of microseconds since the
UNIX epoch and 10 bits of clock identifier, written as 13 characters of
base32-sortable.  Every character carries 5 bits and the alphabet is in ASCII
order, so comparing TID strings compares their integers.

TIDs name records and repository revisions; a revision must exceed the last
one stored, so :class:`TIDClock` never repeats itself or runs backwards.
"""

import secrets
import threading
import time
from typing import Callable

from leafpds.syntax import InvalidSyntax, validate_tid

_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_VALUES = {char: index for index, char in enumerate(_ALPHABET)}
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_MICROS_LIMIT = 1 << 53
_CLOCK_ID_LIMIT = 1 << 10


def tid_from_parts(micros: int, clock_id: int) -> str:
    """The TID for ``micros`` since the epoch and a 10-bit ``clock_id``."""
    if not 0 <= micros < _MICROS_LIMIT:
        raise ValueError(f"TID timestamp out of range: {micros}")
    if not 0 <= clock_id < _CLOCK_ID_LIMIT:
        raise ValueError(f"TID clock id out of range: {clock_id}")
    number = (micros << 10) | clock_id
    # The top character, then six pairs (10 bits each): a TID is drawn for
    # every record and every commit, and this is 3x a loop over characters.
    return (
        _ALPHABET[number >> 60]
        + _PAIRS[number >> 50 & 1023]
        + _PAIRS[number >> 40 & 1023]
        + _PAIRS[number >> 30 & 1023]
        + _PAIRS[number >> 20 & 1023]
        + _PAIRS[number >> 10 & 1023]
        + _PAIRS[number & 1023]
    )


def _decode(tid: str) -> int:
    validate_tid(tid)
    number = 0
    for char in tid:
        number = (number << 5) | _VALUES[char]
    # The syntax admits 64 bits; the layout reserves the top one.
    if number >> 63:
        raise InvalidSyntax(f"invalid tid {tid!r}: top bit is set")
    return number


def tid_timestamp(tid: str) -> int:
    """Microseconds since the epoch; raises InvalidSyntax on a bad TID."""
    return _decode(tid) >> 10


def tid_clock_id(tid: str) -> int:
    return _decode(tid) & (_CLOCK_ID_LIMIT - 1)


class TIDClock:
    """
    Issues strictly increasing TIDs from one clock identifier.

    When ``now()`` stalls or jumps back, the clock carries on from the last
    timestamp it issued, one microsecond at a time, until real time catches up.
    """

    def __init__(
        self, now: Callable[[], float] = time.time, clock_id: int | None = None
    ) -> None:
        if clock_id is None:
            # Random, so that separate processes rarely share one.
            clock_id = secrets.randbelow(_CLOCK_ID_LIMIT)
        elif not 0 <= clock_id < _CLOCK_ID_LIMIT:
            raise ValueError(f"TID clock id out of range: {clock_id}")
        self._now = now
        self._clock_id = clock_id
        self._last = -1
        # Database work may run in threads; two callers must never share a TID.
        self._lock = threading.Lock()

    def next(self) -> str:
        return self._issue(-1)

    def next_after(self, previous: str | None) -> str:
        """
        A new TID that is also greater than ``previous`` (for example the last
        stored revision), even if that came from a clock running ahead of ours.
        """
        if previous is None:
            return self.next()
        return self._issue(tid_timestamp(previous))

    def _issue(self, floor: int) -> str:
        with self._lock:
            micros = max(int(self._now() * 1_000_000), self._last + 1, floor + 1)
            self._last = micros
        return tid_from_parts(micros, self._clock_id)
