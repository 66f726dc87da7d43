"""The attack tests run against the same real services the feature tests use."""

from tests.gateway.conftest import gw, keys, listener

__all__ = ["gw", "keys", "listener"]
