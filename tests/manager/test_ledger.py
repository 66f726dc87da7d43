"""The ledger: which events only this process knows it must deliver, and the checkpoint it allows."""

from __future__ import annotations

from manager.ledger import Ledger
from manager.mailbox import DECRYPTED, Latest


def owe(ledger: Ledger, key: str, event_id: str, now: float = 100.0) -> Latest:
    latest = Latest(event_id, ledger.mint(now, event_id), DECRYPTED, token=event_id)
    ledger.owe(key, latest)
    return latest


def test_arrivals_increase_even_when_the_clock_does_not() -> None:
    ledger = Ledger()
    first = ledger.mint(100.0, "b")
    second = ledger.mint(100.0, "a")  # same instant, smaller id
    third = ledger.mint(99.0, "c")  # the wall clock stepped back
    assert first < second < third


def test_the_checkpoint_stays_before_the_oldest_debt_until_it_is_settled() -> None:
    ledger = Ledger()
    a1 = owe(ledger, "corp/A", "a1")
    b1 = owe(ledger, "corp/B", "b1")
    a2 = owe(ledger, "corp/A", "a2")
    assert ledger.settled_before(200.0) == a1.arrival
    ledger.settle("corp/A", a1.arrival)
    assert ledger.settled_before(200.0) == b1.arrival  # B is still owed, though A's first is paid
    ledger.settle("corp/B", b1.arrival)
    assert ledger.settled_before(200.0) == a2.arrival
    assert ledger.newest("corp/A") == a2 and ledger.owes("corp/A")
    ledger.settle("corp/A", a2.arrival)
    assert not ledger.owes("corp/A") and len(ledger) == 0
    # nothing owed: the checkpoint is "now", and later events still sort after it
    checkpoint = ledger.settled_before(200.0)
    assert checkpoint > a2.arrival and owe(ledger, "corp/A", "a3", now=150.0).arrival > checkpoint


def test_a_newer_delivery_settles_every_older_debt_of_its_account_only() -> None:
    ledger = Ledger()
    for n in range(5):
        owe(ledger, "corp/A", f"a{n}")
    b = owe(ledger, "corp/B", "b")
    ledger.settle("corp/A", ledger.newest("corp/A").arrival)  # type: ignore[union-attr]
    assert list(ledger.accounts()) == ["corp/B"] and ledger.settled_before(200.0) == b.arrival


def test_cancel_forgets_an_event_that_was_not_written() -> None:
    ledger = Ledger()
    a1 = owe(ledger, "corp/A", "a1")
    a2 = owe(ledger, "corp/A", "a2")
    ledger.cancel("corp/A", a1)
    assert ledger.settled_before(200.0) == a2.arrival
    ledger.cancel("corp/A", a2)
    ledger.cancel("corp/A", a2)  # twice is harmless
    assert not ledger.owes("corp/A")
