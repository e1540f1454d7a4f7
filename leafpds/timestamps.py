"""Timestamps as atproto writes them: ISO 8601, UTC, millisecond precision, ``Z``."""

import math
from datetime import datetime
import time

# (whole second, its "YYYY-MM-DDTHH:MM:SS." text) for the last second
# formatted: a busy server formats many times a second, and strftime costs
# several times the rest.  One tuple, replaced whole, so threads may share it.
_last_second: tuple[float, str] = (math.nan, "")


def iso_from_epoch(seconds: float) -> str:
    # Rounded to the microsecond first, as datetime.fromtimestamp does.
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    global _last_second
    second, prefix = _last_second
    if second != whole:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole))
        _last_second = (whole, prefix)
    return f"{prefix}{micros // 1000:03d}Z"


def now_iso() -> str:
    return iso_from_epoch(time.time())


def epoch_from_iso(text: str) -> float:
    """Seconds since the epoch of a timestamp as :func:`iso_from_epoch` writes it."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
