"""Attacks on the listeners ``wxkf puppet`` and ``wxkf up --puppets`` open, as real processes.

Both served uvicorn with its defaults rather than :func:`wxkf.server.uvicorn_config`: no header
size bound (a 5 MB header was buffered whole and answered), no header deadline (a connection that
sends nothing is held forever) and ``X-Forwarded-For`` believed from 127.0.0.1 — on the puppet's
public ``/callback`` and, under ``wxkf up --puppets``, on the hub's own public port.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.puppets.conftest import Corp, PuppetProcess, corp, make_puppet, puppet_env, sim, sim_config
from tests.puppets.test_inhub import READY, HubProcess, hub_env, make_hub
from tests.support.raw_http import answer_to

__all__ = ["corp", "hub_env", "make_hub", "make_puppet", "puppet_env", "sim", "sim_config"]

HUGE_HEADER = b"POST /callback HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 5_000_000 + b"\r\n\r\n"


def cut_off(answer: bytes) -> bool:
    return answer in (b"", b"reset") or answer.startswith(b"HTTP/1.1 431")


async def test_wxkf_puppet_cuts_off_a_huge_header_instead_of_buffering_it(
    make_puppet: Callable[..., PuppetProcess],
) -> None:
    puppet = make_puppet()
    await puppet.start()
    answer = await answer_to(puppet.url, HUGE_HEADER)
    assert cut_off(answer), answer  # before: buffered whole, then answered 400 missing_parameter
    # an ordinary request is still answered
    ok = await answer_to(puppet.url, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok


async def test_wxkf_up_with_puppets_hardens_the_hubs_public_port_as_wxkf_up_does(
    corp: Corp, make_hub: Callable[..., HubProcess]
) -> None:
    hub = make_hub()
    await hub.start(READY)
    huge = HUGE_HEADER.replace(b"/callback ", f"/callback/{corp.corpid} ".encode())
    answer = await answer_to(hub.url, huge)
    assert cut_off(answer), answer  # before: buffered whole, then answered
    ok = await answer_to(hub.url, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok
