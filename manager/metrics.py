"""Prometheus metrics of the manager (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

DISPATCHES = Counter(
    "wxkf_manager_dispatches_total",
    "Dispatch outcomes: delivered, failed (will retry), dead (dead-lettered), parked, offline, not_served",
    ["outcome"],
)
ACCEPTED = Counter("wxkf_manager_events_total", "Events accepted into mailboxes", ["result"])
