"""Log output: one line per record, and secrets masked even when code logs them by mistake."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from wxkf.logging import configure_logging, redact


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
