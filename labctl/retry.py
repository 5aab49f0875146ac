"""One policy for optimistic-concurrency conflicts: look again and retry, then give up with one error.

A decision made from the read models is appended expecting the versions it
read; when someone else wrote first the append raises ConcurrencyError and
the whole decision is made again from fresh state. (Transient database
failures are a different matter, retried inside ``Database.run``.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import tenacity

from events import ConcurrencyError
from labctl.errors import UserError

T = TypeVar("T")

#: how many times a contended decision is made before giving up
ATTEMPTS = 20


class Contended(UserError):
    """Others kept changing what this command decides on; nothing was recorded and trying again is safe."""

    exit_code = 1


def retry_on_conflict(
    attempt: Callable[[], T],
    *,
    what: str,
    only: Callable[[ConcurrencyError], bool] = lambda exc: True,
) -> T:
    """``attempt()`` until it does not lose a race; ``only`` picks the conflicts worth retrying (others propagate).

    After ``ATTEMPTS`` lost races: ``Contended`` naming ``what`` ("could not <what>: ...").
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, ConcurrencyError) and only(exc)),
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        reraise=False,
    )
    try:
        return retrying(attempt)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        raise Contended(f"could not {what}: others kept changing it ({last}); try again") from last
