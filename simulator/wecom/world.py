"""The simulated WeCom: one object holding every part, and the seed loader.

``WeCom`` is plain state plus rules, with no HTTP in it: the ``/cgi-bin`` routes
(:mod:`simulator.wecom.api`) and the ``/sim`` control routes (:mod:`simulator.wecom.control`) both
call into it, and unit tests can call it directly.
"""

from __future__ import annotations

from simulator.clock import Clock
from simulator.config import SimConfig
from simulator.ratelimit import Limits
from simulator.wecom import errcodes as E
from simulator.wecom.directory import Corp, Directory
from simulator.wecom.errcodes import ApiError
from simulator.wecom.kf import Kf
from simulator.wecom.media import MediaStore
from simulator.wecom.robots import Robots
from simulator.wecom.schemas import CorpIn, RobotIn
from simulator.wecom.tokens import AccessTokens


class WeCom:
    def __init__(self, config: SimConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.directory = Directory()
        self.media = MediaStore(config, clock)
        self.tokens = AccessTokens(self.directory, config, clock)
        self.kf = Kf(self.directory, self.media, config, clock)
        self.robots = Robots(self.media, config, clock)
        self._api_limits = Limits(config.api_rates, clock)

    def count_api_call(self, corp_id: str, api: str) -> None:
        """WeCom's per-corp, per-API frequency limits (45009)."""
        if not self._api_limits.hit((corp_id, api)):
            raise ApiError(E.RATE_LIMITED, f"api freq out of limit: {api}")

    def add_corp(self, spec: CorpIn) -> Corp:
        """Create a corp with the apps, accounts and customers ``spec`` lists (apps first)."""
        corp = self.directory.add_corp(spec.corpid, spec.name)
        try:
            for app in spec.apps:
                self.directory.add_app(corp, **app.model_dump())
            for account in spec.accounts:
                self.directory.add_account(corp, **account.model_dump())
            for customer in spec.customers:
                self.directory.add_customer(corp, **customer.model_dump())
        except Exception:
            del self.directory.corps[corp.corp_id]  # all or nothing
            raise
        return corp

    def add_robot(self, spec: RobotIn) -> None:
        self.robots.add(spec.key, spec.name)
