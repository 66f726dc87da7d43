"""Every number the simulator enforces that a test or a developer may want to change.

The protocol reference confirms some limits (text 2048 bytes, 48 h window, 5 sends, 10-minute msg
token...) and marks others UNCONFIRMED (gettoken and token-less sync_msg rate limits, the retry
schedule of callbacks). Both live here so that a test can shrink a window or a timeout instead of
waiting for it; the defaults are WeCom's values where known and a plausible guess otherwise.

A seed file may carry a ``"config"`` object with any of these fields (see docs/simulator.md).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DAY = 24 * 3600.0
MB = 1024 * 1024


class Rate(BaseModel):
    """At most ``calls`` in any window of ``seconds``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    calls: int = Field(ge=1)
    seconds: float = Field(gt=0)


class SimConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- access tokens ----------------------------------------------------------------------
    token_ttl: int = Field(default=7200, ge=1, description="expires_in of a new access_token")
    token_reuse: bool = Field(
        default=True, description="gettoken returns the still-valid token instead of a new one, as WeCom does"
    )
    gettoken_rate: Rate | None = Field(
        default=Rate(calls=100, seconds=3600), description="per app; UNCONFIRMED; null disables"
    )
    api_rates: tuple[Rate, ...] = Field(
        default=(Rate(calls=10_000, seconds=60), Rate(calls=150_000, seconds=3600)),
        description="per corp and API path",
    )

    # -- kf messages ------------------------------------------------------------------------
    msg_token_ttl: float = Field(default=600.0, gt=0, description="validity of a callback's Token")
    sync_readable: float = Field(default=3 * DAY, gt=0, description="how far back sync_msg can read")
    sync_tokenless_rate: Rate | None = Field(
        default=Rate(calls=1, seconds=10), description="sync_msg without token, per account; UNCONFIRMED"
    )
    send_window: float = Field(
        default=2 * DAY, gt=0, description="send_msg allowed this long after the customer"
    )
    send_limit: int = Field(default=5, ge=1, description="send_msg calls until the customer writes again")
    welcome_code_ttl: float = Field(default=20.0, gt=0)
    welcome_quiet_period: float = Field(
        default=2 * DAY, ge=0, description="no welcome_code if one was used or a message sent this recently"
    )
    msg_code_ttl: float = Field(
        default=20.0, gt=0, description="msg_code from service_state/trans; UNCONFIRMED"
    )

    # -- media ------------------------------------------------------------------------------
    media_ttl: float = Field(default=3 * DAY, gt=0)
    media_min_size: int = Field(default=5, ge=0)
    media_max_size: dict[str, int] = Field(
        default_factory=lambda: {"image": 10 * MB, "voice": 2 * MB, "video": 10 * MB, "file": 20 * MB}
    )

    # -- group robots -----------------------------------------------------------------------
    robot_rate: Rate | None = Field(default=Rate(calls=20, seconds=60), description="messages per robot")
    robot_image_max: int = Field(default=2 * MB, ge=1)

    # -- callbacks --------------------------------------------------------------------------
    callback_timeout: float = Field(default=5.0, gt=0, description="how long WeCom waits for an answer")
    callback_retry_delays: tuple[float, ...] = Field(
        default=(1.0, 2.0, 4.0), description="pause before each retry; 3 retries; schedule UNCONFIRMED"
    )
    delivery_history: int = Field(default=1000, ge=1, description="deliveries kept for /sim/deliveries")
