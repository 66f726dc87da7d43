"""Secrets in a puppet's configuration stay out of what it prints: the one-line "bad config" errors
never quote an inline secret, and a password in the manager's URL (a manager behind a proxy asking
for basic auth: httpx sends the URL's userinfo as such) is masked in the log lines that name the URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from puppets.config import ConfigError, load_file
from wxkf.logging import redact

SECRET = "corp-secret-4f1d0c9e2b7a"
TOKEN = "app-token-8c2e1f"
AES_KEY = "Y8hYa8YI063btFHyBYUzrNXnwXWoasDPt2IpwP+e2Ws"
GOOD_APP = f'corp_id = "ww1"\nsecret = "{SECRET}"\ntoken = "{TOKEN}"\nencoding_aes_key = "{AES_KEY}"\n'


@pytest.mark.parametrize(
    "broken",
    [
        GOOD_APP.replace(AES_KEY, AES_KEY[:-1]) + 'accounts = ["wk1"]',  # the key one character short
        GOOD_APP.replace(AES_KEY, AES_KEY[:-1] + "!") + 'accounts = ["wk1"]',  # not base64
        GOOD_APP + f'accounts = ["wk1"]\nsecrett = "{SECRET}"',  # a misspelt key, carrying the secret
        GOOD_APP.replace(f'"{SECRET}"', f'{{ env = "X", file = "{SECRET}" }}') + 'accounts = ["wk1"]',
        GOOD_APP + "accounts = []",
        GOOD_APP.replace(f'"{TOKEN}"', f'"{TOKEN}') + 'accounts = ["wk1"]',  # unterminated string
        GOOD_APP.replace(f'"{TOKEN}"', f"[{{ a = '{TOKEN}' }}]") + 'accounts = ["wk1"]',
    ],
    ids=["short key", "not base64", "misspelt key", "env and file", "no accounts", "bad toml", "wrong type"],
)
def test_a_bad_config_line_never_quotes_a_secret(tmp_path: Path, broken: str) -> None:
    path = tmp_path / "puppets.toml"
    path.write_text(f'manager = "http://127.0.0.1:9"\n[[apps]]\n{broken}\n')
    with pytest.raises(ConfigError) as refused:
        load_file(path, env={})
    line = str(refused.value)
    assert "\n" not in line
    for secret in (SECRET, TOKEN, AES_KEY, AES_KEY[:-1]):
        assert secret not in line, line


@pytest.mark.parametrize(
    "line",
    [
        "ww1/wk1: registered with the manager at http://puppets:hunter2-pw@10.0.0.2:8080",
        "connected to the manager's socket at wss://puppets:hunter2-pw@hub.example/puppetWxkfManager/ws",
        "token service unreachable (ConnectError on GET https://u:hunter2-pw@tokens/gettoken: refused)",
    ],
)
def test_a_password_in_a_configured_url_is_masked_in_the_log(line: str) -> None:
    masked = redact(line)
    assert "hunter2-pw" not in masked, masked
    assert "puppets:" in masked or "u:" in masked  # the rest of the URL still says where
