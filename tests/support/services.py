"""Run a ``wxkf`` service as a real child process, for crash and restart tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx

from tests.support.corp import Corp
from wxkf.settings import Settings


def service_env(settings: Settings, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a child service on the test's database server, database and secret key."""
    assert settings.mongo_uri is not None and settings.wxkf_secret_key is not None
    return {
        "MONGO_URI": settings.mongo_uri,
        "WXKF_DB_NAME": settings.wxkf_db_name,
        "WXKF_SECRET_KEY": settings.wxkf_secret_key.get_secret_value(),
        "WXKF_DATA_DIR": str(data_dir),
        **{name.upper(): value for name, value in extra.items()},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """``python -m hub <command>`` with the given environment; its log goes to ``log_path``."""

    command: str
    env: Mapping[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    ready_path: ClassVar[str] = "/healthz"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "hub", self.command]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, **self.env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; readiness is awaited below
            self.argv(), env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        await self._wait_ready(timeout)

    async def _wait_ready(self, timeout: float) -> None:
        """Poll ``ready_path``: the child offers no other readiness signal across the process boundary."""
        assert self.process is not None
        async with httpx.AsyncClient() as http, asyncio.timeout(timeout):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.command} exited early:\n{self.log_path.read_text()[-3000:]}")
                try:
                    if (await http.get(self.url + self.ready_path)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def discard(self) -> None:
        """SIGKILL if it still runs: a fixture's teardown, once the test has seen all it needs (an
        orderly stop there would only cost time)."""
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def stop(self) -> None:
        """SIGTERM, and wait for the orderly stop (SIGKILL after 15 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def puppet_info(hub: ServiceProcess, corp: Corp, bearer: str | None = None) -> dict[str, Any]:
    """What ``hub``'s ``puppetWxkfInfo`` says of ``corp``'s account, asked as its puppet (the app
    secret is the bearer: only the puppet or the admin may ask) or with ``bearer``."""
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{hub.url}/puppetWxkfManager/puppetWxkfInfo/{corp.kf}",
            headers={"authorization": f"Bearer {bearer or corp.secret}"},
        )
    result: dict[str, Any] = response.json()
    return result
