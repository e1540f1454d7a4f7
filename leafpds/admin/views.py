"""
What the admin reads: accounts as ``com.atproto.admin.defs#accountView``,
invite codes as ``com.atproto.server.defs#inviteCode``; and the invite
switches (disableInviteCodes, enable/disableAccountInvites).  Each function
is a unit of work for one database interaction.
"""

from typing import Any

from leafpds.errors import InvalidRequest, XRPCError

class AccountNotFound(XRPCError):
    """getAccountInfo's answer for a DID with no account here (the official PDS's)."""

    name = "NotFound"


def account_views(conn: Any, dids: list[str]) -> list[dict[str, Any]]:
    """The views of the accounts among ``dids`` that exist, in the order asked."""
    if not dids:
        return []
    marks = ",".join("?" * len(dids))
    rows = conn.execute(
        f"SELECT did, handle, email, created_at, invites_disabled, email_confirmed_at FROM accounts"
        f" WHERE did IN ({marks})",
        dids,
    ).fetchall()
    found = [row[0] for row in rows]
    invites: dict[str, list[dict[str, Any]]] = {did: [] for did in found}
    for code in _codes(conn, f"WHERE for_account IN ({marks})", dids):
        invites[code["forAccount"]].append(code)
    invited_by: dict[str, dict[str, Any]] = {}
    used = f"WHERE code IN (SELECT code FROM invite_code_uses WHERE used_by IN ({marks}))"
    for code in _codes(conn, used, dids):
        for use in code["uses"]:
            invited_by[use["usedBy"]] = code
    views = {}
    for did, handle, email, created_at, invites_disabled, confirmed_at in rows:
        view: dict[str, Any] = {
            "did": did,
            "handle": handle,
            "indexedAt": created_at,
            "invites": invites[did],
            "invitesDisabled": bool(invites_disabled),
        }
        if email:
            view["email"] = email
        if confirmed_at:
            view["emailConfirmedAt"] = confirmed_at
        if did in invited_by:
            view["invitedBy"] = invited_by[did]
        views[did] = view
    return [views[did] for did in dict.fromkeys(dids) if did in views]


def account_view(conn: Any, did: str) -> dict[str, Any]:
    views = account_views(conn, [did])
    if not views:
        raise AccountNotFound("Account not found")
    return views[0]


def search_accounts(
    conn: Any, email: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """
    Accounts whose email starts with ``email`` (every account without it),
    by DID; the cursor is the last DID of a full page.
    """
    where, args = "did > ?", [cursor or ""]
    if email:
        # Emails are stored lower-cased; LIKE's wildcards in the query are literal here.
        escaped = email.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where += " AND email LIKE ? ESCAPE '\\'"
        args.append(escaped + "%")
    dids = [
        row[0]
        for row in conn.execute(f"SELECT did FROM accounts WHERE {where} ORDER BY did LIMIT ?", (*args, limit))
    ]
    return account_views(conn, dids), (dids[-1] if len(dids) == limit else None)


# -- invite codes ---------------------------------------------------------------

_CODE_COLUMNS = (
    "c.code, c.available_uses, c.disabled, c.for_account, c.created_by, c.created_at,"
    " (SELECT count(*) FROM invite_code_uses u WHERE u.code = c.code) AS uses"
)


def _codes(conn: Any, where: str, args: list[Any], tail: str = "") -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {_CODE_COLUMNS} FROM invite_codes c {where} {tail}", args).fetchall()
    codes = [row[0] for row in rows]
    uses: dict[str, list[dict[str, str]]] = {code: [] for code in codes}
    if codes:
        marks = ",".join("?" * len(codes))
        for code, used_by, used_at in conn.execute(
            f"SELECT code, used_by, used_at FROM invite_code_uses WHERE code IN ({marks}) ORDER BY used_at DESC",
            codes,
        ):
            uses[code].append({"usedBy": used_by, "usedAt": used_at})
    return [
        {
            "code": code,
            "available": available,
            "disabled": bool(disabled),
            "forAccount": for_account,
            "createdBy": created_by,
            "createdAt": created_at,
            "uses": uses[code],
        }
        for code, available, disabled, for_account, created_by, created_at, _ in rows
    ]


# getInviteCodes' orders: the sort key, then the code, both descending.
_SORTS = {"recent": "c.created_at", "usage": "uses"}


def list_invite_codes(
    conn: Any, sort: str, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of invite codes, newest or most used first; the cursor is ``<key>::<code>``."""
    column = _SORTS.get(sort)
    if column is None:
        raise InvalidRequest(f"unknown sort method: {sort}")
    where, args = "", []
    if cursor is not None:
        key, sep, code = cursor.rpartition("::")
        if not sep or (sort == "usage" and not key.isdigit()):
            raise InvalidRequest("Malformed cursor")
        where = f"WHERE ({column}, c.code) < (?, ?)"
        args = [int(key) if sort == "usage" else key, code]
    # A subquery, so the cursor can compare with the counted uses.
    rows = _codes(
        conn,
        f"WHERE c.code IN (SELECT code FROM (SELECT {_CODE_COLUMNS} FROM invite_codes c) c {where}"
        f" ORDER BY {column} DESC, c.code DESC LIMIT ?)",
        [*args, limit],
    )
    rows.sort(key=lambda c: (c["createdAt"] if sort == "recent" else len(c["uses"]), c["code"]), reverse=True)
    if len(rows) < limit:
        return rows, None
    last = rows[-1]
    key = last["createdAt"] if sort == "recent" else str(len(last["uses"]))
    return rows, f"{key}::{last['code']}"


def disable_invite_codes(conn: Any, codes: list[str], accounts: list[str]) -> None:
    """Disable the codes named and every code of the accounts named."""
    if "admin" in accounts:
        # The official PDS's rule: the codes an admin made for no one stay.
        raise InvalidRequest("cannot disable admin invite codes")
    for column, values in (("code", codes), ("for_account", accounts)):
        if values:
            marks = ",".join("?" * len(values))
            conn.execute(f"UPDATE invite_codes SET disabled = 1 WHERE {column} IN ({marks})", values)


def set_invites_disabled(conn: Any, did: str, disabled: bool) -> None:
    updated = conn.execute(
        "UPDATE accounts SET invites_disabled = ? WHERE did = ?", (int(disabled), did)
    ).rowcount
    if not updated:
        raise InvalidRequest(f"Account not found: {did}")
