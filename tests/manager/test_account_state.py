"""An account's states and moves, and the events only this process knows it must still deliver."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.account_state import (
    TOKEN_REUSE,
    Account,
    Event,
    InvalidTransition,
    State,
    Undelivered,
    table_markdown,
)
from manager.mailbox import DECRYPTED, Latest, Mailbox


def add(undelivered: Undelivered, key: str, event_id: str, now: float = 100.0) -> Latest:
    latest = Latest(event_id, undelivered.mint(now, event_id), DECRYPTED, token=event_id)
    undelivered.add(key, latest)
    return latest


def test_arrivals_increase_even_when_the_clock_does_not() -> None:
    undelivered = Undelivered()
    first = undelivered.mint(100.0, "b")
    second = undelivered.mint(100.0, "a")  # same instant, smaller id
    third = undelivered.mint(99.0, "c")  # the wall clock stepped back
    assert first < second < third


def test_the_checkpoint_stays_before_the_oldest_undelivered_event_until_it_is_done() -> None:
    undelivered = Undelivered()
    a1 = add(undelivered, "corp/A", "a1")
    b1 = add(undelivered, "corp/B", "b1")
    a2 = add(undelivered, "corp/A", "a2")
    assert undelivered.checkpoint(200.0) == a1.arrival
    undelivered.done("corp/A", a1)
    assert undelivered.checkpoint(200.0) == b1.arrival  # B's is still undelivered, though A's first is done
    undelivered.done("corp/B", b1)
    assert undelivered.checkpoint(200.0) == a2.arrival
    assert undelivered.newest("corp/A") == a2 and undelivered.has("corp/A")
    undelivered.done("corp/A", a2)
    assert not undelivered.has("corp/A") and len(undelivered) == 0
    # nothing undelivered: the checkpoint is "now", and later events still sort after it
    checkpoint = undelivered.checkpoint(200.0)
    assert checkpoint > a2.arrival and add(undelivered, "corp/A", "a3", now=150.0).arrival > checkpoint


def test_a_newer_delivery_is_done_with_every_older_event_of_its_account_only() -> None:
    undelivered = Undelivered()
    for n in range(5):
        add(undelivered, "corp/A", f"a{n}")
    b = add(undelivered, "corp/B", "b")
    undelivered.done("corp/A", undelivered.newest("corp/A"))
    assert list(undelivered.accounts()) == ["corp/B"] and undelivered.checkpoint(200.0) == b.arrival


def test_discard_forgets_an_event_logged_before() -> None:
    undelivered = Undelivered()
    a1 = add(undelivered, "corp/A", "a1")
    a2 = add(undelivered, "corp/A", "a2")
    undelivered.discard("corp/A", a1)
    assert undelivered.checkpoint(200.0) == a2.arrival
    undelivered.discard("corp/A", a2)
    undelivered.discard("corp/A", a2)  # twice is harmless
    assert not undelivered.has("corp/A")


def test_every_move_in_the_table_is_shown_in_the_architecture_doc() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text()
    assert table_markdown() in doc


def test_a_move_the_table_does_not_have_is_refused() -> None:
    account = Account("corp/A", state=State.IDLE)
    with pytest.raises(InvalidTransition):
        account.apply(Event.DELIVERED)  # nothing was in flight
    assert account.state is State.IDLE


def test_work_offered_during_a_delivery_makes_another_one_even_with_an_older_arrival() -> None:
    account = Account("corp/A", state=State.IDLE)
    first, later = token("a", 2_000), token("b", 1_000)  # b came later, from a host whose clock is behind
    account.offer(first)
    account.apply(Event.WORK)
    assert account.start(now=0.0) == first and account.state is State.DELIVERING
    account.offer(later)
    assert account.apply(Event.DELIVERED) is State.PENDING  # b is not covered: deliver again
    assert account.start(now=1.0) == first  # never an older token after a newer one; a is still valid
    assert account.apply(Event.DELIVERED) is State.IDLE


def test_a_token_too_old_to_carry_again_gives_way_to_the_one_offered() -> None:
    account = Account("corp/A", state=State.IDLE)
    account.offer(token("a", 2_000))
    account.apply(Event.WORK)
    account.start(now=0.0)
    account.apply(Event.DELIVERED)
    account.offer(token("b", 1_000))  # WeCom's token "a" may have expired by now
    account.apply(Event.WORK)
    assert account.start(now=TOKEN_REUSE + 1).event_id == "b"


def test_a_delivery_carries_the_newest_token_offered_since_the_last_one_started() -> None:
    account = Account("corp/A", state=State.IDLE)
    for event_id, at in (("a", 2), ("c", 3), ("b", 1)):
        account.offer(token(event_id, at))
    account.apply(Event.WORK)
    assert account.start(now=0.0).event_id == "c"


def test_a_mailbox_write_not_seen_before_is_work_and_one_seen_is_not() -> None:
    account = Account("corp/A", state=State.IDLE)
    waiting = mailbox(seq=3, delivered_seq=2, latest=token("a", 5))
    account.take_in(waiting)
    assert account.has_work and account.mailbox_due
    account.apply(Event.WORK)
    account.start(now=0.0)
    account.apply(Event.DELIVERED)
    account.take_in(waiting)  # the same write, read again by the sweep
    assert not account.has_work


def token(event_id: str, at: int) -> Latest:
    return Latest(event_id, f"{at:020d}-{event_id}", DECRYPTED, token=f"token-{event_id}")


def mailbox(*, seq: int, delivered_seq: int, latest: Latest) -> Mailbox:
    return Mailbox.from_doc(
        {"_id": "corp/A", "corp_id": "corp", "open_kfid": "A", "latest": latest.to_doc()}
        | {"seq": seq, "delivered_seq": delivered_seq}
    )
