"""One event at a time per browser session, in the order the events arrived: the session's gate."""

from __future__ import annotations

import threading
import uuid
from typing import Any


class SessionGate:
    """A first-come, first-served lock (a ticket lock) that also names its session.

    `with gate:` waits until every event that arrived before has finished: a burst of clicks on one session is
    applied in arrival order, each to the state the one before left. `sid` is a random id that scopes the session's
    uploads in the embedding cache. A copy is a new gate with a new id (gradio deep-copies a session's first state).
    """

    def __init__(self) -> None:
        self.sid = uuid.uuid4().hex
        self._cond = threading.Condition()
        self._issued = 0  # tickets handed out
        self._serving = 0  # the ticket whose turn it is

    def __deepcopy__(self, memo: dict[int, Any]) -> SessionGate:
        return SessionGate()

    def __enter__(self) -> SessionGate:
        with self._cond:
            ticket = self._issued
            self._issued += 1
            self._cond.wait_for(lambda: self._serving == ticket)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Events holding a ticket: the one being served and those waiting behind it."""
        with self._cond:
            return self._issued - self._serving
