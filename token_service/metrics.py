"""Prometheus metrics of the token service (served at ``/metrics``).

``wxkf_token_upstream_calls_total{reason, result}`` is the one to watch against WeCom's gettoken limit:
``reason`` says why the call was made (``first``: proving a pair, ``renewal``: at expiry, ``forced``:
an invalidation report), ``result`` what came back (``new``, ``same``: the current token again, i.e. a
wasted call, ``refused``: an errcode, ``unreachable``). A healthy deployment shows one ``renewal/new``
per app per token lifetime and no ``same``.
"""

from __future__ import annotations

from prometheus_client import Counter

UPSTREAM_CALLS = Counter(
    "wxkf_token_upstream_calls_total",
    "gettoken calls made upstream, by reason and result",
    ["reason", "result"],
)
REFUSED_LOCALLY = Counter(
    "wxkf_token_refused_locally_total",
    "gettoken answered with an errcode without asking upstream: cached_refusal or over_budget",
    ["reason"],
)
