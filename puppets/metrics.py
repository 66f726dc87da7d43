"""Prometheus metrics of the puppet runtime (served at ``/metrics``). No per-account labels: a process
may serve thousands of accounts; the logs and the store say which one."""

from __future__ import annotations

from prometheus_client import Counter

PULLS = Counter("wxkf_puppet_pulls_total", "kf/sync_msg calls, by kind: token, tokenless", ["kind"])
PULL_FAILURES = Counter("wxkf_puppet_pull_failures_total", "Failed pulls, by reason", ["reason"])
RECORDED = Counter("wxkf_puppet_messages_recorded_total", "Items pulled and recorded for the first time")
HANDLED = Counter(
    "wxkf_puppet_messages_handled_total", "Handler outcomes: done, failed, redelivered", ["outcome"]
)
SENDS = Counter("wxkf_puppet_sends_total", "Sends: sent, already_sent, refused", ["outcome"])
REFUSED = Counter("wxkf_puppet_callbacks_refused_total", "Callbacks refused, by reason", ["reason"])
