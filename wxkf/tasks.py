"""Running and stopping background tasks reliably.

:func:`run_every` is the one periodic loop every service uses.

Stopping: a single ``task.cancel()`` is not enough: a library may absorb the cancellation
(PyMongo's async I/O can finish the operation it was in and carry on), after which the task waits
forever and a shutdown that gathers it hangs. :func:`stop_tasks` cancels again until every task
has really finished.

Waiting with a deadline: Python 3.11's ``asyncio.wait_for`` absorbs a cancellation that arrives as
the awaited thing finishes (it returns the result instead; fixed in 3.12). In a loop that waits
again, that task never stops. :func:`finished_within` waits on ``asyncio.timeout``, which does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from pymongo.errors import PyMongoError

from wxkf.logging import warn_limited
from wxkf.retry import JITTER

log = logging.getLogger(__name__)


async def stop_tasks(
    tasks: Iterable[asyncio.Task[object]], *, interval: float = 0.2, attempts: int = 50
) -> None:
    """Cancel ``tasks`` and wait until all are done, re-cancelling any that absorbed a cancellation."""
    pending = {task for task in tasks if not task.done()}
    for _ in range(attempts):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=interval)
    if pending:
        log.warning(
            "%d background task(s) ignored cancellation: %s", len(pending), [t.get_name() for t in pending]
        )


async def finished_within(awaitable: Awaitable[object], timeout: float) -> bool:
    """Await ``awaitable`` for at most ``timeout`` seconds; whether it finished (it is cancelled if not).

    A cancellation of the caller always propagates. ``awaitable`` must not raise ``TimeoutError`` of
    its own (an event's or a process's ``wait()`` does not).
    """
    try:
        async with asyncio.timeout(timeout):
            await awaitable
    except TimeoutError:
        return False
    return True


async def run_every(
    step: Callable[[], Awaitable[object]], interval: float, what: str, *, jitter: float = 0.0
) -> None:
    """Run ``step`` every ``interval`` seconds (± ``jitter`` of it, so replicas spread out), logging
    rather than raising its failures: one bad pass must not end the loop. A database error is one
    rate-limited line, not a traceback a second while the database is down."""
    while True:
        await asyncio.sleep(interval * JITTER.uniform(1.0 - jitter, 1.0 + jitter))
        try:
            await step()
        except Exception as exc:
            log_failure(what, exc)


def log_failure(what: str, exc: Exception, logger: logging.Logger = log) -> None:
    """Log a failure of ``what``: a database error is one rate-limited line (the database's own
    supervision says what happened to it; a traceback per callback or per pass would bury that),
    anything else a traceback."""
    if isinstance(exc, PyMongoError):
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        warn_limited(logger, f"{what}: database", "%s failed: database unavailable (%s)", what, reason)
    else:
        logger.error("%s failed", what, exc_info=exc)
