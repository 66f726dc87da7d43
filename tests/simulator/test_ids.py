"""The simulator's random identifiers have WeCom's shapes, whatever the source of their randomness."""

from __future__ import annotations

from collections import Counter

from simulator.wecom import ids


def test_alnum_ids_have_the_length_asked_and_use_every_letter_and_digit() -> None:
    made = [ids.alnum(n) for n in (1, 32, 44, 63) for _ in range(500)]
    assert [len(value) for value in made[::500]] == [1, 32, 44, 63]
    assert all(
        len(value) == n
        for value, n in zip(made, [1] * 500 + [32] * 500 + [44] * 500 + [63] * 500, strict=True)
    )
    seen = Counter("".join(made))
    assert set(seen) == set(ids.ALNUM)  # no character is out of the alphabet or never drawn


def test_msgids_and_callback_tokens_are_unique() -> None:
    assert len({ids.msgid() for _ in range(10_000)}) == 10_000
    token = ids.msg_token()
    assert token.startswith("ENC") and len(token) == 47 and token[3:].isalnum()
