"""Timestamps as atproto writes them: ISO 8601, UTC, millisecond precision, ``Z``."""

import time
from datetime import datetime, timezone


def iso_from_epoch(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now_iso() -> str:
    return iso_from_epoch(time.time())
