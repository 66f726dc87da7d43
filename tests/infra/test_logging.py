"""Log output: one line per record with its traceback indented below it, secrets masked even when code
logs them by mistake, and repeated warnings rate-limited."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from wxkf.logging import CONTINUATION, WarningLimiter, configure_logging, redact, warn_limited


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Tests configure logging as a service does; the previous setup comes back after each."""
    loggers = [logging.getLogger(name) for name in ("", "httpx", "httpcore")]
    saved = [(logger, logger.handlers[:], logger.level) for logger in loggers]
    yield
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET https://qyapi/cgi-bin/gettoken?corpid=ww1&corpsecret=S3CRET-x_1 200", "S3CRET-x_1"),
        ("POST /cgi-bin/kf/sync_msg?access_token=AT0ken.123 failed", "AT0ken.123"),
        ('register {"kfId": "wk1", "corpSecret": "S3CRET", "encodingAESKey": "AESKEY"}', "S3CRET"),
        ('register {"kfId": "wk1", "corpSecret": "S3CRET", "encodingAESKey": "AESKEY"}', "AESKEY"),
        ("payload {'token': 'CB-T0KEN', 'openKfId': 'wk1'}", "CB-T0KEN"),
        ("<xml><Token><![CDATA[ENCApHxnG]]></Token></xml>", "ENCApHxnG"),
        ("headers Authorization: Bearer eyJhbGciOi.J9", "eyJhbGciOi.J9"),
        ("connecting to mongodb://wxkf:pa55word@db:27017/wxkf", "pa55word"),
    ],
)
def test_redact_masks_known_secret_shapes(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert "***" in redacted


def test_redact_keeps_ordinary_text() -> None:
    text = 'callback ?msg_signature=abc&timestamp=1&nonce=x {"openKfId": "wk1", "next_cursor": "4"}'
    assert redact(text) == text


def test_secrets_in_args_and_tracebacks_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    log = logging.getLogger("wxkf.test")
    log.warning("calling %s", "https://qyapi/cgi-bin/gettoken?corpid=ww1&corpsecret=ARG-SECRET")
    try:
        raise RuntimeError("request to /send?access_token=EXC-SECRET failed")
    except RuntimeError:
        log.exception("send failed")
    err = capsys.readouterr().err
    assert "ARG-SECRET" not in err
    assert "EXC-SECRET" not in err
    assert "corpsecret=***" in err
    assert "access_token=***" in err


def test_one_line_per_record(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    logging.getLogger("wxkf.test").warning("first\nWARNING forged: second")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert " WARNING wxkf.test: first\\nWARNING forged: second" in lines[0]


def test_httpx_request_lines_are_not_logged(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    logging.getLogger("httpx").info('HTTP Request: GET https://qyapi/cgi-bin/gettoken?corpsecret=X "200 OK"')
    assert capsys.readouterr().err == ""


def test_configure_twice_does_not_double_output(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    configure_logging("INFO")
    logging.getLogger("wxkf.test").info("once")
    assert capsys.readouterr().err.count("once") == 1


def test_tracebacks_are_real_lines_below_their_record(capsys: pytest.CaptureFixture[str]) -> None:
    """Readable, and still parseable: only a record's first line starts without indentation, even when
    the exception's own text holds a line break and something that looks like a record."""
    configure_logging("INFO")
    try:
        raise ValueError("bad input\n2026-01-01 00:00:00,000 WARNING forged: record")
    except ValueError:
        logging.getLogger("wxkf.test").exception("handling failed")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(" ERROR wxkf.test: handling failed")
    below = lines[1:]
    assert below[0] == CONTINUATION + "Traceback (most recent call last):"
    assert all(line.startswith(CONTINUATION) for line in below)
    assert any(line.strip().startswith('raise ValueError("bad input') for line in below)
    assert below[-1] == CONTINUATION + "2026-01-01 00:00:00,000 WARNING forged: record"
    assert below[-2] == CONTINUATION + "ValueError: bad input"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_warnings_are_limited_with_a_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = WarningLimiter(burst=3, interval=60.0, clock=clock)
    log = logging.getLogger("wxkf.test.refusals")
    with caplog.at_level(logging.WARNING, logger="wxkf.test.refusals"):
        for n in range(300):
            limiter.warn(log, "bad_signature", "refused POST /callback/ww%d: bad signature", n)
        limiter.warn(log, "too_large", "refused POST /callback/x: too large")
        assert [r.getMessage() for r in caplog.records] == [
            "refused POST /callback/ww0: bad signature",
            "refused POST /callback/ww1: bad signature",
            "refused POST /callback/ww2: bad signature",
            "refused POST /callback/x: too large",  # another reason has a budget of its own
        ]
        caplog.clear()
        clock.now += 60.0
        limiter.flush()
        assert [r.getMessage() for r in caplog.records] == [
            "297 more 'bad_signature' warnings suppressed in the last 60s"
        ]
        caplog.clear()
        limiter.warn(log, "bad_signature", "refused again")  # a new interval: logged again
        assert [r.getMessage() for r in caplog.records] == ["refused again"]


async def test_the_suppressed_count_is_reported_when_the_interval_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With an event loop running, the count comes by itself, without waiting for another warning."""
    limiter = WarningLimiter(burst=1, interval=0.05)
    log = logging.getLogger("wxkf.test.timer")
    reported = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "suppressed" in record.getMessage():
                reported.set()

    watch = Watch()
    log.addHandler(watch)
    try:
        with caplog.at_level(logging.WARNING, logger="wxkf.test.timer"):
            for _ in range(10):
                limiter.warn(log, "junk", "refused junk")
            await asyncio.wait_for(reported.wait(), 30)
        messages = [r.getMessage() for r in caplog.records]
        assert messages == ["refused junk", "9 more 'junk' warnings suppressed in the last 0.05s"]
    finally:
        log.removeHandler(watch)


def test_limiter_tracks_a_bounded_number_of_keys() -> None:
    limiter = WarningLimiter(burst=1, max_keys=10)
    log = logging.getLogger("wxkf.test.keys")
    for n in range(1000):
        limiter.warn(log, f"reason-{n}", "refused")
    assert len(limiter._windows) == 10


def test_warn_limited_uses_the_process_wide_limiter(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("wxkf.test.shared")
    with caplog.at_level(logging.WARNING, logger="wxkf.test.shared"):
        for _ in range(50):
            warn_limited(log, "shared-junk", "refused %s", "junk")
    assert len(caplog.records) == 5
