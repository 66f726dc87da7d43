"""A stand-in for the platforms wxkf-hub talks to, for development and tests (``wxkf sim``).

Today it simulates WeCom: the ``/cgi-bin`` APIs a kf integration uses, with WeCom's errcodes and
limits, and the customer's side, which sends encrypted callbacks. The layout keeps each platform in
its own subpackage (``simulator.wecom``; Feishu and DingTalk to follow), with the rules in plain
classes and the HTTP routes beside them. See docs/simulator.md.
"""

from simulator.app import create_app, serve
from simulator.clock import OffsetClock
from simulator.config import Rate, SimConfig
from simulator.state import SeedError, SimState

__all__ = ["OffsetClock", "Rate", "SeedError", "SimConfig", "SimState", "create_app", "serve"]
