"""TokenIssuer: access tokens checked once are remembered, never trusted blindly."""

import time

import pytest

from leafpds.accounts import sessions
from leafpds.accounts.sessions import ACCESS_LIFETIME, TokenIssuer
from leafpds.errors import ExpiredToken, InvalidToken


class Clock:
    def __init__(self) -> None:
        # pyjwt compares iat with the real clock, so start from it.
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(clock: Clock) -> TokenIssuer:
    return TokenIssuer(b"k" * 32, "did:web:pds.test", clock)


def test_a_remembered_token_is_refused_once_its_session_is_revoked(issuer):
    token = issuer.access_token("did:plc:alice", "session-1")
    assert issuer.verify_access(token).did == "did:plc:alice"
    issuer.revoke(["session-1"])
    with pytest.raises(ExpiredToken, match="revoked"):
        issuer.verify_access(token)


def test_a_remembered_token_is_refused_once_it_expires(issuer, clock):
    token = issuer.access_token("did:plc:alice", "session-1")
    issuer.verify_access(token)
    clock.now += ACCESS_LIFETIME - 1
    assert issuer.verify_access(token).session_id == "session-1"
    clock.now += 1
    with pytest.raises(ExpiredToken, match="expired"):
        issuer.verify_access(token)


def test_a_tampered_copy_of_a_remembered_token_is_refused(issuer):
    token = issuer.access_token("did:plc:alice", "session-1")
    issuer.verify_access(token)
    head, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for forged in [f"{head}.{payload}.{flipped}", f"{head}.{payload}.", token + "x"]:
        with pytest.raises(InvalidToken):
            issuer.verify_access(forged)


def test_tokens_from_another_issuer_are_refused_even_for_the_same_session(issuer, clock):
    other = TokenIssuer(b"x" * 32, "did:web:pds.test", clock)
    issuer.verify_access(issuer.access_token("did:plc:alice", "session-1"))
    with pytest.raises(InvalidToken):
        issuer.verify_access(other.access_token("did:plc:alice", "session-1"))


def test_the_memory_of_verified_tokens_is_bounded(issuer, clock, monkeypatch):
    monkeypatch.setattr(sessions, "VERIFIED_CACHE_SIZE", 3)
    tokens = []
    for n in range(5):
        tokens.append(issuer.access_token("did:plc:alice", f"session-{n}"))
        issuer.verify_access(tokens[-1])
    assert len(issuer._verified) == 3
    # A forgotten token is simply checked again.
    assert issuer.verify_access(tokens[0]).session_id == "session-0"
