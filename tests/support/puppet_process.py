"""``wxkf puppet`` (``python -m hub puppet``) as a real child process, for tests that kill it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.waiting import wait_until
from wxkf.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def puppet_env(settings: Settings, wecom_api_base: str, secret: str) -> dict[str, str]:
    """The child's environment: the test's database, WeCom at ``wecom_api_base``, the app secret in
    ``TEST_KF_SECRET`` (what :meth:`tests.support.corp.Corp.config_toml` points the config at)."""
    assert settings.mongo_uri is not None
    return {
        "MONGO_URI": settings.mongo_uri,
        "WXKF_DB_NAME": settings.wxkf_db_name,
        "WECOM_API_BASE": wecom_api_base,
        "TEST_KF_SECRET": secret,
        "WXKF_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(REPO),
    }


@dataclass
class PuppetProcess:
    """``python -m hub puppet --bot ... --config ...`` in the repository, its log in ``log_path``."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "puppet", *self.args],
                env={**os.environ, **self.env},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self, ready: str = "puppet listening", timeout: float = 30.0) -> None:
        """Spawn and wait for the log line saying every account is being served."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.spawn()

        async def started() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the puppet exited early:\n{self.log()[-3000:]}")
            return ready in self.log_path.read_text(errors="replace")[offset:]

        await wait_until(started, timeout, "the puppet to start")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit without blocking the loop (a simulator may run in it)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
