"""
Ids that may be used once within a window: DPoP proofs' and client
assertions' ``jti``.  In memory (a restart forgets them, but the proofs
they protect are seconds old and their nonces die with the process's
minute) and bounded: when full of unexpired ids, new ones are refused
rather than old ones forgotten, so a replay is never let through.
"""

from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

DEFAULT_CAPACITY = 100_000


class ReplayCache:
    def __init__(self, clock: IReactorTime, capacity: int = DEFAULT_CAPACITY) -> None:
        self._clock = clock
        self._capacity = capacity
        # id -> expiry, in insertion order, which is roughly expiry order.
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, key: str, until: float) -> bool:
        """
        Record ``key`` as used until ``until``; False if it already was (a
        replay) or if the cache is full of ids that have not expired.
        """
        now = self._clock.seconds()
        self._forget_expired(now)
        expiry = self._seen.get(key)
        if expiry is not None and expiry > now:
            return False
        if len(self._seen) >= self._capacity:
            # The cheap pruning stops at the first live id; look at them all.
            for old in [k for k, e in self._seen.items() if e <= now]:
                del self._seen[old]
            if len(self._seen) >= self._capacity:
                return False
        self._seen.pop(key, None)
        self._seen[key] = until
        return True

    def _forget_expired(self, now: float) -> None:
        while self._seen:
            key, expiry = next(iter(self._seen.items()))
            if expiry > now:
                return
            del self._seen[key]
