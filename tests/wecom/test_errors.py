"""errcode -> exception class, so callers react to named conditions rather than numbers."""

from __future__ import annotations

import pickle

import pytest

from wecom import errors
from wecom.errors import (
    TOKEN_ERRCODES,
    WeComError,
    WeComResponseError,
    error_for,
    raise_for_payload,
)

NAMED = {
    -1: errors.SystemBusy,
    40001: errors.InvalidCredential,
    40014: errors.InvalidAccessToken,
    41001: errors.MissingAccessToken,
    42001: errors.AccessTokenExpired,
    45009: errors.ApiRateLimited,
    45033: errors.ConcurrencyLimited,
    48002: errors.NoPermission,
    60020: errors.IpNotAllowed,
    93000: errors.RobotRemoved,
    95000: errors.InvalidOpenKfId,
    95001: errors.SendCountLimit,
    95002: errors.SendWindowExpired,
    95004: errors.OpenKfIdNotFound,
    95007: errors.InvalidMsgToken,
    95013: errors.SessionEnded,
    95016: errors.StateTransitionNotAllowed,
    95018: errors.StateForbidsSending,
}


@pytest.mark.parametrize(("errcode", "cls"), NAMED.items())
def test_named_errcodes(errcode: int, cls: type[WeComError]) -> None:
    error = error_for(errcode, "msg", "kf/send_msg")
    assert type(error) is cls
    assert isinstance(error, WeComError)
    assert (error.errcode, error.errmsg, error.api) == (errcode, "msg", "kf/send_msg")


def test_unknown_errcode_is_the_base_class() -> None:
    error = error_for(12345, "new in 2030", "kf/whatever")
    assert type(error) is WeComError
    assert error.errcode == 12345


def test_str_names_code_message_and_api() -> None:
    error = error_for(95001, "api send count limit", "kf/send_msg")
    assert str(error) == "errcode 95001 (api send count limit) from kf/send_msg"
    assert "SendCountLimit" in repr(error)


def test_errors_survive_pickling() -> None:
    error = pickle.loads(pickle.dumps(error_for(95002, "48h", "kf/send_msg")))
    assert type(error) is errors.SendWindowExpired
    assert (error.errcode, error.errmsg, error.api) == (95002, "48h", "kf/send_msg")


def test_token_errcodes() -> None:
    assert frozenset({40001, 40014, 42001}) == TOKEN_ERRCODES


@pytest.mark.parametrize("payload", [{"errcode": 0, "errmsg": "ok"}, {"msgid": "x"}, {"errcode": None}])
def test_success_payloads(payload: dict[str, object]) -> None:
    raise_for_payload(payload, "kf/send_msg")


def test_error_payload_raises_typed_error() -> None:
    with pytest.raises(errors.InvalidMsgToken) as exc:
        raise_for_payload({"errcode": 95007, "errmsg": "invalid msg token"}, "kf/sync_msg")
    assert exc.value.api == "kf/sync_msg"
    with pytest.raises(errors.InvalidAccessToken):
        raise_for_payload({"errcode": "40014"}, "x")  # numeric strings are still errcodes


@pytest.mark.parametrize("errcode", ["busy", True, 1.5, [1]])
def test_malformed_errcode(errcode: object) -> None:
    with pytest.raises(WeComResponseError):
        raise_for_payload({"errcode": errcode}, "x")
