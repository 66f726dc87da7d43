"""A hung test fails alone: nothing of it runs on into the next test (tests/support/deadlines.py).

An inner pytest session, as this suite runs (one event loop for every test, pytest-timeout), with a
test that hangs, one that hangs after absorbing its cancellation (as 3.11's ``asyncio.wait_for`` can),
and a test after them that looks for anything of theirs still running. Without the plugin, the timeout
left each hung test's task pending in the shared loop, running on inside the next test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.puppet_process import REPO

INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
timeout = 3
"""

TESTS = """\
import asyncio


async def test_hangs():
    await asyncio.Event().wait()


async def test_hangs_after_absorbing_its_cancellation():
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        pass
    await asyncio.Event().wait()  # only the timeout's signal ends this


async def test_runs_alone_after_them():
    others = [task.get_coro().__qualname__ for task in asyncio.all_tasks()]
    assert [name for name in others if name.startswith("test_")] == ["test_runs_alone_after_them"], others
"""


def test_a_hung_test_fails_and_the_next_test_runs_alone(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_inner.py").write_text(TESTS)
    inner = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.support.deadlines",
            "-p",
            "no:cacheprovider",
            "-rA",
            "--tb=line",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = inner.stdout + inner.stderr
    assert "FAILED test_inner.py::test_hangs - Failed: the test did not finish within 2.4 s" in report, report
    assert "FAILED test_inner.py::test_hangs_after_absorbing_its_cancellation" in report, report
    assert "PASSED test_inner.py::test_runs_alone_after_them" in report, report
