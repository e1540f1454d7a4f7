"""
An account's private preferences (``app.bsky.actor.getPreferences`` /
``putPreferences``), kept as the official PDS keeps them.

Preferences are stored one row each, in the order they were put, as the JSON
the client sent.  A put replaces the whole ``app.bsky`` set in one
transaction.  ``personalDetailsPref`` (the birth date) is for full sessions
only: app-password sessions neither see nor set it, and their puts leave the
stored one alone.  ``declaredAgePref`` is never stored: reads derive it from
the birth date, puts drop it.
"""

import re
from datetime import datetime, timezone
from typing import Any

from leafpds.errors import InvalidRequest
from leafpds.ipld import atjson

NAMESPACE = "app.bsky"
PERSONAL_DETAILS = "app.bsky.actor.defs#personalDetailsPref"
DECLARED_AGE = "app.bsky.actor.defs#declaredAgePref"

# An account's stored rows of the namespace (parameters: did, namespace, namespace).
_IN_NAMESPACE = "did = ? AND (name = ? OR name GLOB ? || '.*')"


def in_namespace(name: str, namespace: str = NAMESPACE) -> bool:
    return name == namespace or name.startswith(namespace + ".")


def read_unit(conn: Any, did: str) -> list[tuple[str, str]]:
    """The account's stored ``(name, JSON)`` rows in the namespace, in put order."""
    return conn.execute(
        f"SELECT name, value FROM account_prefs WHERE {_IN_NAMESPACE} ORDER BY id",
        (did, NAMESPACE, NAMESPACE),
    ).fetchall()


def visible(rows: list[tuple[str, str]], full_access: bool, now: float) -> list[dict[str, Any]]:
    """What a session sees of the stored rows, the derived age declaration included."""
    prefs = [atjson.loads(value) for _name, value in rows]
    details = next((pref for pref in prefs if pref["$type"] == PERSONAL_DETAILS), None)
    age = _age(details.get("birthDate"), now) if details else None
    if age is not None:
        prefs.append(
            {"$type": DECLARED_AGE, "isOverAge13": age >= 13, "isOverAge16": age >= 16, "isOverAge18": age >= 18}
        )
    if full_access:
        return prefs
    return [pref for pref in prefs if pref["$type"] != PERSONAL_DETAILS]


def rows_to_store(prefs: list[dict[str, Any]], full_access: bool) -> list[tuple[str, str]]:
    """
    The ``(name, JSON)`` rows a put of ``prefs`` (lexicon-checked already)
    stores; ``InvalidRequest`` for preferences outside the namespace or
    ones the session may not set.
    """
    if not all(in_namespace(pref["$type"]) for pref in prefs):
        raise InvalidRequest(f"Some preferences are not in the {NAMESPACE} namespace")
    forbidden = [pref["$type"] for pref in prefs if pref["$type"] == PERSONAL_DETAILS]
    if forbidden and not full_access:
        raise InvalidRequest(f"Do not have authorization to set preferences: {', '.join(forbidden)}")
    return [
        (pref["$type"], atjson.dumps(pref).decode("utf-8"))
        for pref in prefs
        if pref["$type"] != DECLARED_AGE
    ]


def replace_unit(conn: Any, did: str, rows: list[tuple[str, str]], full_access: bool) -> None:
    """Replace the namespace's rows the session may set with ``rows``, in one transaction."""
    condition, args = _IN_NAMESPACE, [did, NAMESPACE, NAMESPACE]
    if not full_access:
        condition, args = condition + " AND name != ?", args + [PERSONAL_DETAILS]
    conn.execute(f"DELETE FROM account_prefs WHERE {condition}", args)
    conn.executemany(
        "INSERT INTO account_prefs (did, name, value) VALUES (?, ?, ?)",
        [(did, name, value) for name, value in rows],
    )


# The date and the zone of a lexicon datetime; the fraction plays no part in an age.
_DATETIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})")


def _age(birth_date: Any, now: float) -> int | None:
    """Whole years from ``birth_date`` to ``now``, by the UTC calendar; None if it cannot be read."""
    match = _DATETIME.fullmatch(birth_date) if isinstance(birth_date, str) else None
    if match is None:
        return None
    try:
        born = datetime.fromisoformat(match[1] + match[2].replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:  # year 0, valid in atproto, is outside Python's calendar
        return None
    today = datetime.fromtimestamp(now, timezone.utc)
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))
