"""Prometheus metrics of the gateway (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLBACKS = Counter("wxkf_gateway_callbacks_total", "Callbacks accepted", ["result"])
REJECTED = Counter("wxkf_gateway_rejected_total", "Callbacks refused, by reason", ["reason"])
ACK_SECONDS = Histogram(
    "wxkf_gateway_ack_seconds",
    "Time from request to acknowledgement of an accepted callback",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
FORWARDS = Counter("wxkf_gateway_forwards_total", "Forward outcomes by target kind", ["target", "result"])
BACKLOG = Gauge("wxkf_gateway_forward_backlog", "Stored events not yet forwarded to every target")
