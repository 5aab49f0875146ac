"""What every reactor shares: one active instance per name, and a checkpoint in the log.

Leadership is a session advisory lock held on a dedicated connection: when
the active agent dies its connection drops, the lock is released, and a
standby agent's next ``try`` takes over from the stored checkpoint.

A ``LogReactor`` advances its checkpoint in the same transaction as the events
it appends for a page, so a crash leaves both or neither. Reactors whose
effects are outside the database (sbatch, scontrol, deleting files) keep no
checkpoint: they decide from the read models and the outside world on every
pass (DEVELOPERS.md, "Reactors: effects and checkpoints").
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import select
import time
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

import events
from events import StoredEvent
from events.queries import load_queries
from labctl.db import connect

QUERIES = load_queries("labctl", "queries.sql")

if TYPE_CHECKING:
    from labctl.app import App

log = logging.getLogger(__name__)


class Reactor(Protocol):
    """What the agent runs each tick; a reactor gets what it uses (the app, the holder id) when built."""

    name: str

    def step(self) -> bool:
        """Do one round of work; True when something changed (the agent ticks again soon)."""
        ...

    def close(self) -> None:
        """Give up leadership (the agent is stopping)."""
        ...


def lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"labctl-reactor-{name}".encode()).digest()[:8], "big", signed=True)


class Leadership:
    """Holds (or tries to take) the advisory lock that makes one agent the active reactor."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.conn: psycopg.Connection[Any] | None = None
        #: the lock was (re)taken since the reactor last looked: what it remembers of the log may be stale
        self.taken = False

    def held(self) -> bool:
        try:
            if self.conn is not None and not self.conn.closed and not self.conn.broken:
                # The lock lives as long as its session. An idle session's socket has nothing to read
                # unless the server closed it (or sent a notice): only then is a round trip needed to
                # tell, instead of one per reactor on every tick of a busy agent.
                readable, _, _ = select.select([self.conn.fileno()], [], [], 0)
                if not readable:
                    return True
                self.conn.execute("SELECT 1")
                return True
        except (psycopg.Error, OSError, ValueError):
            pass
        self.release()
        try:
            conn = connect(self.url, budget=0.5)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(self.name),)).fetchone()
            if row and row[0]:
                self.conn = conn
                self.taken = True
                log.info("reactor %s: this agent is now active", self.name)
                return True
            conn.close()
        except Exception:
            pass
        return False

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = None


def checkpoint(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(QUERIES["reactor_position"], {"name": name}).fetchone()
    return int(row[0]) if row else 0


def set_checkpoint(conn: psycopg.Connection[Any], name: str, position: int) -> None:
    conn.execute(QUERIES["set_reactor_position"], {"name": name, "position": position})


#: events read (and handled in one transaction) at a time
PAGE_SIZE = 500
#: seconds between writes of a checkpoint moved only past events of no interest, while the log is busy
CHECKPOINT_EVERY = 2.0


class LogReactor:
    """A reactor that handles new events after its checkpoint, plus a periodic full pass.

    ``handle`` runs inside the transaction that advances the checkpoint, so its appends must go
    through ``App.record`` (or ``projections.record``) on ``app.db.conn``; ``full_pass`` has no
    checkpoint and runs outside it, each of its appends atomic on its own.
    """

    name = "reactor"
    interested: frozenset[str] = frozenset()
    full_pass_every = 10.0

    def __init__(self, app: App, user: str | None = None) -> None:
        self.app = app
        #: whose runs it acts on (None: every user's); one active reactor and one checkpoint per user
        self.user = user
        self.name = type(self).name if user is None else f"{type(self).name}:{user}"
        self.leadership = Leadership(app.db.url, self.name)
        self.next_full_pass = 0.0
        self.read_to = 0  # how far this reactor has read (ahead of its stored checkpoint by skipped pages)
        self.next_checkpoint_write = 0.0
        #: its stored checkpoint, as it last read or wrote it; only the active reactor writes it, so it is
        #: read again only when this agent takes the lock (another may have moved it meanwhile)
        self.stored: int | None = None

    def step(self) -> bool:
        if not self.leadership.held():
            return False
        conn = self.app.db.conn
        changed = False
        now = time.monotonic()
        if now >= self.next_full_pass:
            self.next_full_pass = now + self.full_pass_every
            changed |= self.full_pass()
        if self.stored is None or self.leadership.taken:
            self.leadership.taken = False
            self.stored = None
            self.stored = checkpoint(conn, self.name)
        stored = self.stored
        done = max(stored, self.read_to)
        first = True
        while True:
            page = events.read_all(conn, done, PAGE_SIZE)
            if not page:
                break
            first = False
            relevant = [e for e in page if e.type in self.interested]
            if relevant:
                # One transaction per page: the events ``handle`` appends (through ``App.record``, which
                # joins it as a savepoint) and the checkpoint past the page commit together, or neither
                # does. A crash in between leaves the page to the next active reactor, which handles it
                # again; the files written on the way stay (a stage's run dir is written again in place).
                # A page whose handling appended nothing (its events' effects recorded already, as the
                # agent records the children its own jobs' ends release) moves the checkpoint in memory
                # only, as a page of no interest does: handling it again after a crash appends nothing.
                self.stored = None  # unknown until the transaction commits
                with conn.transaction():
                    acted = self.handle(relevant)
                    if acted:
                        set_checkpoint(conn, self.name, page[-1].position)
                changed |= acted
                if acted:
                    stored = page[-1].position
                self.stored = stored
            done = self.read_to = page[-1].position
            if len(page) < PAGE_SIZE:
                break  # the end of the log as it was: what came after (its own appends too) is next tick's
        # Pages with nothing of interest move the checkpoint only in memory while the log is busy (a
        # commit per reactor per tick would cost more than the work); it is written once the reactor
        # finds nothing new, or every few seconds. Losing it in a crash re-reads pages it ignores anyway.
        now = time.monotonic()
        if done > stored and (first or now >= self.next_checkpoint_write):
            self.stored = None
            set_checkpoint(conn, self.name, done)
            self.stored = done
            self.next_checkpoint_write = now + CHECKPOINT_EVERY
        return changed

    def handle(self, batch: list[StoredEvent]) -> bool:
        """Act on a page's events of interest; True if it appended anything (then the checkpoint past
        the page commits with those appends)."""
        raise NotImplementedError

    def close(self) -> None:
        self.leadership.release()

    def full_pass(self) -> bool:
        return False
