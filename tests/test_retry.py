"""One retry policy for lost optimistic-concurrency races: decide again, then give up with one error."""

from __future__ import annotations

import pytest

from events import ConcurrencyError
from labctl.errors import UserError
from labctl.retry import ATTEMPTS, Contended, retry_on_conflict


def test_a_decision_that_loses_races_is_made_again_until_it_wins() -> None:
    tries: list[int] = []

    def attempt() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConcurrencyError("cache-k", 1, 2)
        return "recorded"

    assert retry_on_conflict(attempt, what="record it") == "recorded"
    assert len(tries) == 3


def test_a_decision_that_always_loses_gives_up_with_one_readable_error() -> None:
    tries: list[int] = []

    def attempt() -> None:
        tries.append(1)
        raise ConcurrencyError("run-r", 3, 4)

    with pytest.raises(Contended, match=r"^could not cancel run_r: others kept changing it .*; try again$") as info:
        retry_on_conflict(attempt, what="cancel run_r")
    assert len(tries) == ATTEMPTS
    assert isinstance(info.value, UserError)  # the CLI prints one line, no traceback


def test_a_conflict_the_caller_did_not_ask_to_retry_propagates_at_once() -> None:
    tries: list[int] = []

    def attempt() -> None:
        tries.append(1)
        raise ConcurrencyError("run-r", 0, 1)

    with pytest.raises(ConcurrencyError):
        retry_on_conflict(attempt, what="submit", only=lambda exc: exc.stream.startswith("cache-"))
    assert len(tries) == 1
