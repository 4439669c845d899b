"""``plantstream platform serve`` as a process: HTTPS with the configured certificate (a client
trusting another CA is refused by the handshake), tokens required, secrets out of its log."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from plantstream.testing.plugin import free_port, wait_until
from plantstream.testing.tls import make_pki

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
TOKEN = "member-token-mia-000001"


def get(url: str, ctx: ssl.SSLContext | None, token: str | None = None) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_serve_over_tls(fresh_db: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    cfg = tmp_path / "platform.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": port, "tls_cert": str(pki.cert), "tls_key": str(pki.key)},
                "levels": {"member": {"tier": "member", "access": ["free"]}},
                "members": [{"id": "mia", "level": "member", "token": TOKEN}],
            }
        )
    )
    log = tmp_path / "platform.log"
    env = {**os.environ, "PLANTSTREAM_PLATFORM_DSN": fresh_db, "PLANTSTREAM_LOG_FORMAT": "json"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plantstream.cli", "platform", "serve", "--config", str(cfg)],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        url = f"https://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return get(url + "/healthz", trusted) == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_until(up, 60, "platform over HTTPS")
        assert get(url + "/api/me", trusted) == 401
        assert get(url + "/api/me", trusted, TOKEN) == 200
        other = ssl.create_default_context(cafile=str(pki.other_ca))
        with pytest.raises(urllib.error.URLError) as exc:
            get(url + "/healthz", other)
        assert isinstance(exc.value.reason, ssl.SSLCertVerificationError)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            get(f"http://127.0.0.1:{port}/healthz", None)  # plaintext to the TLS port
    finally:
        proc.terminate()
        proc.wait(15)
    text = log.read_text()
    assert TOKEN not in text and fresh_db.split(":")[2].split("@")[0] not in text
