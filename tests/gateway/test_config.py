"""The gateway's configuration as ``wxkf gateway`` and ``wxkf up`` build it from the settings."""

from __future__ import annotations

import dataclasses

from gateway.app import gateway_config
from wxkf.runtime import Runtime


async def test_heartbeats_come_several_times_per_replica_timeout(runtime: Runtime) -> None:
    # a 5 s heartbeat with WXKF_REPLICA_TIMEOUT=3 made every live gateway look dead to the others
    for timeout in (3.0, 8.0, 30.0):
        settings = runtime.settings.model_copy(update={"wxkf_replica_timeout": timeout})
        config = gateway_config(dataclasses.replace(runtime, settings=settings))
        assert config.heartbeat_interval <= timeout / 4
        assert config.heartbeat_interval <= 5.0
