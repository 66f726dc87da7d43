"""Fixtures of the token service tests (the database fixture ``db`` comes from tests/conftest.py)."""

from __future__ import annotations

import secrets

import pytest

from tests.support.clock import FakeClock
from tests.token_service.fakes import Upstream
from wxkf.secretbox import SecretBox


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(secrets.token_bytes(32))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def upstream(clock: FakeClock) -> Upstream:
    return Upstream(clock)
