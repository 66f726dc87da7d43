# ruff: noqa: F811 - fixtures are imported by name and then requested by name
"""``wxkf puppet --transport ws``'s life: the pull after every proof, the first one included, and the
stop order over the socket — finish what is being handled, then leave.

Every puppet here has a safety-net pull interval of a day, so an answer within the test's bounded
waits can only come from the path under test, never from that net.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from simulator.state import SimState
from tests.puppets.conftest import Corp, PuppetProcess, wait_until
from tests.puppets.test_lifecycle import (  # noqa: F401 - fixtures
    HELD,
    NO_SAFETY_NET,
    assert_the_stop_finishes_then_leaves,
    assert_what_wecom_gave_up_on_first_is_answered,
    held_handler,
    in_log,
    sim_config,
    unstarted_hub,
)
from tests.support.services import ServiceProcess


async def test_what_wecom_gave_up_on_before_the_first_connection_is_answered_once_proven(
    corp: Corp,
    sim: tuple[str, SimState],
    unstarted_hub: ServiceProcess,
    socket_puppet: Callable[..., PuppetProcess],
) -> None:
    await corp.set_callback(f"{unstarted_hub.url}/callback/{corp.corpid}")
    puppet = socket_puppet(unstarted_hub, [corp], safety_pull_interval=NO_SAFETY_NET)
    await assert_what_wecom_gave_up_on_first_is_answered(  # the first connection fails
        unstarted_hub, corp, sim, puppet, failed="reconnecting in", serving="over the manager's socket"
    )


async def test_a_handler_running_at_sigterm_finishes_and_replies_before_the_socket_puppet_leaves(
    corp: Corp,
    unstarted_hub: ServiceProcess,
    socket_puppet: Callable[..., PuppetProcess],
    puppet_env: dict[str, str],
    tmp_path: Path,
) -> None:
    journal, release = held_handler(tmp_path, puppet_env)
    puppet = socket_puppet(unstarted_hub, [corp], HELD, safety_pull_interval=NO_SAFETY_NET)
    await assert_the_stop_finishes_then_leaves(
        unstarted_hub, corp, puppet, journal, release, serving="registered over the manager's socket"
    )


async def test_what_wecom_gave_up_on_while_the_socket_was_down_is_answered_once_resumed(
    corp: Corp, unstarted_hub: ServiceProcess, socket_puppet: Callable[..., PuppetProcess]
) -> None:
    hub = unstarted_hub
    await hub.start()
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    puppet = socket_puppet(hub, [corp], safety_pull_interval=NO_SAFETY_NET)
    await puppet.start()
    await wait_until(in_log(puppet, "registered over the manager's socket"), what="the proof")
    hub.kill()
    await corp.says("while the socket was down", wait=True)  # every retry fails: WeCom gives up
    await wait_until(in_log(puppet, "reconnecting in"), what="the puppet noticing")
    await hub.start()
    resumed = in_log(puppet, "resumed over the manager's socket")
    await wait_until(resumed, timeout=90, what="the resumed proof")
    assert await corp.wait_received(1) == ["echo: while the socket was down"]  # nothing else said since
