"""What this manager process owes: events it logged whose delivery only it knows about.

For an account with a live puppet, intake writes the event log and nothing else (one batched insert):
the process that accepted the event delivers it from memory. Until it has, the event is *owed*. A debt
is *settled* once the account's puppet got that event or a newer one, or once the account's mailbox
durably holds it (parked, backing off, served by another replica), because from then on the database
alone says what to deliver.

If the process dies, its debts are found again from the log: every owed event was minted after
:meth:`Ledger.settled_before`, which the process records in its replica document every second
(:mod:`manager.recovery`). Arrival keys are minted here, strictly increasing within the process, so
"everything before this key is settled" is one comparison.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from manager.mailbox import Latest, arrival_key_ns


class Ledger:
    def __init__(self) -> None:
        self._last_ns = 0
        self._owed: dict[str, str] = {}  # arrival -> account, in minting (= arrival) order
        self._by_account: dict[str, deque[Latest]] = {}

    def mint(self, now: float, event_id: str) -> str:
        """A fresh arrival key, later than every key minted before by this process."""
        self._last_ns = max(int(now * 1e9), self._last_ns + 1)
        return arrival_key_ns(self._last_ns, event_id)

    def owe(self, key: str, latest: Latest) -> None:
        """Owe the delivery of an event about to be logged. Call it right after :meth:`mint`, before
        the write: a checkpoint taken while the write is in flight must not pass it."""
        assert latest.arrival > next(reversed(self._owed), ""), "owe() in minting order"
        self._owed[latest.arrival] = key
        self._by_account.setdefault(key, deque()).append(latest)

    def cancel(self, key: str, latest: Latest) -> None:
        """The write failed, or the event was logged before (a retry): nothing is owed for it."""
        if self._owed.pop(latest.arrival, None) is None:
            return
        owed = self._by_account[key]
        owed.remove(latest)
        if not owed:
            del self._by_account[key]

    def settle(self, key: str, through: str) -> None:
        """``key``'s events up to arrival ``through`` were delivered or are durably in its mailbox."""
        owed = self._by_account.get(key)
        if owed is None:
            return
        while owed and owed[0].arrival <= through:
            del self._owed[owed.popleft().arrival]
        if not owed:
            del self._by_account[key]

    def owes(self, key: str) -> bool:
        return key in self._by_account

    def newest(self, key: str) -> Latest | None:
        """The newest event owed for ``key`` (what a retry delivers)."""
        owed = self._by_account.get(key)
        return owed[-1] if owed else None

    def accounts(self) -> Iterator[str]:
        """Accounts with something owed (a snapshot: safe to settle while iterating)."""
        return iter(list(self._by_account))

    def settled_before(self, now: float) -> str:
        """An arrival key such that every event this process minted before it is settled."""
        for arrival in self._owed:
            return arrival
        return self.mint(now, "")  # nothing owed: "now", minted so that every later event sorts after it

    def __len__(self) -> int:
        return len(self._owed)
