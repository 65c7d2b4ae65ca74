"""Group commit and pacing of the controller's scheduling passes.

Writes are numbered as they commit (an insert hands over its lease with its number, for the
controller's live set); a pass records the number it started at; a write covered by a pass that
started after it committed does not start another, so N concurrent writes cost one pass (like a
database's group commit) and each still answers with its lease as a pass that saw it left it.

Under a stream of writes the passes are paced (:meth:`GroupCommit.room_wait`): more writes join
each pass, and the server's event loop gets the interpreter between passes. Measured effect and
the rule's reasons: docs/design/control-plane.md ("Pacing the passes").
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from fastgpu.domain.lease import Lease

#: The most room left after a pass for writes to gather (see :meth:`GroupCommit.room_wait`).
PASS_GAP_MAX_S = 0.05


class GroupCommit:
    """Numbers committed writes and times passes; thread-safe. ``nap`` is the seam a paced
    write sleeps through (tests record it)."""

    def __init__(self, pass_share: float, nap: Callable[[float], None] = time.sleep) -> None:
        self._share = pass_share
        self.nap = nap
        self._mu = threading.Lock()
        self._written = 0
        self._covered = 0
        #: Leases inserted but not yet taken by a pass, with the numbers of their writes.
        self._inbox: list[Lease] = []
        #: When the last pass started and how long it took (monotonic seconds).
        self._pass_at = -1e18
        self._pass_took = 0.0

    def wrote(self, inserted: Lease | None = None) -> int:
        """Number a committed write (call after the commit), with the lease it inserted."""
        with self._mu:
            self._written += 1
            if inserted is not None:
                self._inbox.append(inserted)
            return self._written

    def take(self) -> tuple[int, list[Lease]]:
        """The number of the last write so far and the leases inserted since the last take."""
        with self._mu:
            inbox, self._inbox = self._inbox, []
            return self._written, inbox

    def cover(self, upto: int) -> None:
        """A pass that started after write ``upto`` committed is running (caller holds the
        controller's lock): it covers every write up to there."""
        with self._mu:
            self._covered = max(self._covered, upto)

    def covered(self, write: int) -> bool:
        with self._mu:
            return self._covered >= write

    def settled(self) -> bool:
        """Every write so far is covered by a pass."""
        with self._mu:
            return self._covered >= self._written

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Time a pass (its start and duration set the room before the next one)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self._pass_at, self._pass_took = start, time.monotonic() - start

    def room_wait(self) -> float:
        """How long a write should wait before it starts a pass (0 or less: start now).

        When writes other than this one also wait for a pass, the next pass starts no sooner
        than the last one's duration divided by ``pass_share`` after that one started, and
        never more than ``PASS_GAP_MAX_S`` after it ended (a pass slowed down by Ray does not
        hold writes back longer): the writes arriving meanwhile join it, and the event loop's
        reads get the interpreter in between. A lone write is never held back, so a quiet
        platform answers at once."""
        with self._mu:
            waiting = self._written - self._covered
        if waiting <= 1:
            return 0.0
        took = self._pass_took
        room = min(took / self._share - took, PASS_GAP_MAX_S)
        return self._pass_at + took + room - time.monotonic()
