"""
Rate limits as the reference PDS applies them: fixed windows of points per
key (an IP address, or a DID for repo writes), answered 429
``RateLimitExceeded`` with ``ratelimit-*`` headers.  Counters live in memory:
a restart forgives everyone, which is the reference's behaviour too.
"""

from collections.abc import Callable
from dataclasses import dataclass

from twisted.web.iweb import IRequest

from leafpds.errors import RateLimitExceeded

# Repo writes cost points, as the reference counts them.
WRITE_POINTS = {"create": 3, "update": 2, "put": 2, "delete": 1}

# Methods the reference limits on their own (points/seconds windows): the ones
# that send mail per account, and password resets per client IP.
METHOD_LIMITS = {
    "com.atproto.server.requestEmailConfirmation": "5/3600,15/86400",
    "com.atproto.server.requestEmailUpdate": "5/3600,15/86400",
    "com.atproto.server.requestPasswordReset": "15/3600,50/86400",
    "com.atproto.server.resetPassword": "50/300",
    "com.atproto.server.requestAccountDelete": "5/3600,15/86400",
    "com.atproto.server.deleteAccount": "50/300",
    "com.atproto.identity.requestPlcOperationSignature": "5/3600,15/86400",
    # Not the reference's (it does not serve it): anyone may ask, so each
    # account's refreshes (a document fetch and an #identity event) are few.
    "com.atproto.identity.refreshIdentity": "5/300,50/86400",
}


def client_ip(request: IRequest) -> str:
    """The address a request came from (the key of per-IP limits)."""
    address = request.getClientAddress()
    return getattr(address, "host", "") or "unknown"


@dataclass(frozen=True)
class Limit:
    points: int
    window: float  # seconds

    @classmethod
    def parse(cls, text: str) -> "Limit":
        """``"3000/300"``: 3000 points per 300 seconds."""
        points, _, window = text.partition("/")
        limit = cls(int(points), float(window))
        if limit.points <= 0 or limit.window <= 0:
            raise ValueError(f"invalid rate limit {text!r}")
        return limit

    def policy(self) -> str:
        return f"{self.points};w={int(self.window)}"


class RateLimiter:
    """Fixed-window counters for one or more limits sharing the same keys."""

    # Expired windows are dropped when the table grows past this many keys.
    PRUNE_AT = 50_000

    def __init__(self, limits: list[Limit], now: Callable[[], float]) -> None:
        self.limits = limits
        self.now = now
        # key -> [(window start, points used)] per limit
        self._used: dict[str, list[tuple[float, int]]] = {}

    def consume(self, key: str, points: int, request: IRequest | None = None) -> None:
        """Count ``points`` for ``key``, or raise RateLimitExceeded (counting nothing)."""
        if not self.limits:
            return
        now = self.now()
        windows = self._used.get(key)
        if windows is None:
            if len(self._used) >= self.PRUNE_AT:
                self._prune(now)
            windows = self._used[key] = [(now, 0)] * len(self.limits)
        fresh = []
        for limit, (start, used) in zip(self.limits, windows):
            if now - start >= limit.window:
                start, used = now, 0
            fresh.append((start, used))
        # The tightest limit decides the headers.
        tightest = min(
            range(len(self.limits)),
            key=lambda i: self.limits[i].points - fresh[i][1],
        )
        over = [
            i for i, (limit, (_, used)) in enumerate(zip(self.limits, fresh)) if used + points > limit.points
        ]
        shown = over[0] if over else tightest
        limit, (start, used) = self.limits[shown], fresh[shown]
        if not over:
            fresh = [(start_i, used_i + points) for start_i, used_i in fresh]
            used += points
        self._used[key] = fresh
        if request is not None:
            request.setHeader("ratelimit-limit", str(limit.points))
            request.setHeader("ratelimit-remaining", str(max(0, limit.points - used)))
            request.setHeader("ratelimit-reset", str(int(start + limit.window)))
            request.setHeader("ratelimit-policy", limit.policy())
        if over:
            raise RateLimitExceeded("Rate Limit Exceeded")

    def _prune(self, now: float) -> None:
        longest = max(limit.window for limit in self.limits)
        for key in [k for k, windows in self._used.items() if all(now - s >= longest for s, _ in windows)]:
            del self._used[key]
