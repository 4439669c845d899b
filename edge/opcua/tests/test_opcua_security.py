"""OPC-UA security against an in-process asyncua server that offers only secure endpoints and
requires a user: certificates from `plantstream edge certs`, an untrusted server refused until
trusted, every policy/mode, wrong password refused, readings delivered over SignAndEncrypt."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from plantstream.config import Settings
from plantstream.edge.agent import Agent
from plantstream.edge.config import EdgeConfig
from plantstream.edge.opcua.pki import create_client_certificate, list_certs
from plantstream.producers.topics import Topics
from plantstream.testing.edge import batches, read_topic
from plantstream.testing.plugin import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

P = ua.SecurityPolicyType


class _Users(UserManager):  # type: ignore[misc]
    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        return User(role=UserRole.User) if (username, password) == ("operator", "s3cret") else None


def _server_cert(tmp: Path) -> tuple[Path, Path]:
    key = generate_private_key()
    uri = "urn:plantstream:test:server"
    cert = generate_self_signed_app_certificate(
        key,
        "test server",
        {},
        [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    c, k = tmp / "server.der", tmp / "server.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    k.write_bytes(dump_private_key_as_pem(key))
    return c, k


def _client_trusting(pki: Path, server_cert: Path) -> None:
    """A client certificate in ``pki`` and the server's certificate in its trust list."""
    create_client_certificate(pki)
    (pki / "trusted").mkdir(exist_ok=True)
    (pki / "trusted" / "server.der").write_bytes(server_cert.read_bytes())


async def _server(port: int, cert: Path, key: Path) -> tuple[Server, Any]:
    server = Server(user_manager=_Users())
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/sec/")
    await server.set_application_uri("urn:plantstream:test:server")
    server.set_security_policy(
        [
            P.Basic256Sha256_SignAndEncrypt,
            P.Basic256Sha256_Sign,
            P.Aes128Sha256RsaOaep_Sign,
            P.Aes128Sha256RsaOaep_SignAndEncrypt,
            P.Aes256Sha256RsaPss_Sign,
            P.Aes256Sha256RsaPss_SignAndEncrypt,
        ]
    )
    server.set_security_IDs(["Username"])
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    idx = await server.register_namespace("urn:plantstream:test")
    var = await server.nodes.objects.add_variable(ua.NodeId(ua.String("press.force"), ua.Int16(idx)), "force", 0.0)
    await server.start()
    return server, var


def _cfg(port: int, pki: Path, tmp: Path, policy: str, mode: str, password: str = "s3cret") -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "agent_id": "sec",
            "plant": "steel",
            "sources": [
                {
                    "type": "opcua",
                    "id": "plc",
                    "endpoint": f"opc.tcp://127.0.0.1:{port}/sec/",
                    "publishing_interval_ms": 50,
                    "sampling_interval_ms": 0,
                    "request_timeout_s": 3,
                    "reconnect": {"min_s": 0.2, "max_s": 0.5},
                    "security": {"policy": policy, "mode": mode, "pki_dir": str(pki)},
                    "username": "operator",
                    "password": password,
                    "tags": [{"node_id": "ns=2;s=press.force", "tag": "press.force", "equipment": "acme/site/press"}],
                }
            ],
            "batch": {"max_delay_ms": 20},
            "kafka": {"partitions": 2},
            "buffer": {"path": str(tmp / "buf.db"), "synchronous": "normal"},
        }
    )


async def _until(cond: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "edge", "certs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PLANTSTREAM_LOG_FORMAT": "text"},
    )


def test_sign_and_encrypt_with_user_refuses_untrusted_server_until_trusted(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    pki = tmp_path / "pki"
    res = _cli("create", "--pki-dir", str(pki))
    assert res.returncode == 0 and (pki / "own" / "key.pem").stat().st_mode & 0o077 == 0, res.stderr
    scert, skey = _server_cert(tmp_path)
    port = free_port()
    cfg = _cfg(port, pki, tmp_path, "Basic256Sha256", "SignAndEncrypt")
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
    )

    async def main() -> list[float]:
        server, var = await _server(port, scert, skey)
        agent = Agent(cfg, settings)
        task = asyncio.create_task(agent.run(install_signals=False))
        src = agent.sources[0]
        try:
            # Not trusted yet: refused, and the certificate parked under rejected/ for review.
            await _until(lambda: list((pki / "rejected").glob("*.der")), 20, "server certificate rejected")
            assert not src.status.connected and "BadCertificateUntrusted" in src.status.last_error
            (rejected,) = (pki / "rejected").glob("*.der")
            trusted = await asyncio.to_thread(_cli, "trust", "--pki-dir", str(pki), str(rejected))
            assert trusted.returncode == 0, trusted.stderr
            await _until(lambda: src.status.connected, 20, "connected after trusting")
            values = [1.25, 2.5, 3.75]
            for v in values:
                await var.write_value(v)
                await asyncio.sleep(0.15)
            raw = await asyncio.to_thread(
                read_topic,
                kafka_bootstrap,
                Topics(topic_prefix, 2).raw,
                lambda ms: set(values) <= {v for b in batches(ms) for v in b.value},
                30,
            )
            return [v for b in batches(raw) for v in b.value if isinstance(v, float)]
        finally:
            agent.request_stop()
            await asyncio.wait_for(task, 20)
            await server.stop()

    got = asyncio.run(main())
    assert {1.25, 2.5, 3.75} <= set(got)
    kinds = {i.kind for i in list_certs(pki)}
    assert kinds == {"own", "trusted"}, "trusting removes the rejected copy"
    listing = _cli("list", "--pki-dir", str(pki))
    assert listing.returncode == 0 and "test server" in listing.stdout and "trusted" in listing.stdout


@pytest.mark.parametrize(
    ("policy", "mode", "password", "connects"),
    [
        ("Basic256Sha256", "Sign", "s3cret", True),
        ("Aes128_Sha256_RsaOaep", "SignAndEncrypt", "s3cret", True),
        ("Aes256_Sha256_RsaPss", "SignAndEncrypt", "s3cret", True),
        ("Aes256_Sha256_RsaPss", "Sign", "wrong", False),
    ],
)
def test_policies_and_modes_and_wrong_password(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, policy: str, mode: str, password: str, connects: bool
) -> None:
    pki = tmp_path / "pki"
    scert, skey = _server_cert(tmp_path)
    _client_trusting(pki, scert)
    port = free_port()
    cfg = _cfg(port, pki, tmp_path, policy, mode, password)
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
    )

    async def main() -> tuple[bool, str]:
        server, _var = await _server(port, scert, skey)
        agent = Agent(cfg, settings)
        task = asyncio.create_task(agent.run(install_signals=False))
        src = agent.sources[0]
        try:
            if connects:
                await _until(lambda: src.status.connected, 20, f"{policy}/{mode} connected")
            else:
                await _until(lambda: src.status.last_error, 20, "refusal")
            return src.status.connected, src.status.last_error
        finally:
            agent.request_stop()
            await asyncio.wait_for(task, 20)
            await server.stop()

    connected, error = asyncio.run(main())
    assert connected is connects
    if not connects:
        assert "BadUserAccessDenied" in error or "BadIdentityToken" in error, error


@pytest.mark.parametrize("certs", [True, False])
def test_security_auto_takes_the_strongest_endpoint_or_refuses_without_a_certificate(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, certs: bool
) -> None:
    """The server offers six secure endpoints and no None: auto picks Aes256_Sha256_RsaPss with
    SignAndEncrypt and says so; without a client certificate it refuses, never downgrades."""
    pki = tmp_path / "pki"
    scert, skey = _server_cert(tmp_path)
    if certs:
        _client_trusting(pki, scert)
    port = free_port()
    cfg = _cfg(port, pki, tmp_path, "auto", "auto")
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
    )

    async def main() -> tuple[bool, str, str]:
        server, _var = await _server(port, scert, skey)
        agent = Agent(cfg, settings)
        task = asyncio.create_task(agent.run(install_signals=False))
        src = agent.sources[0]
        try:
            if certs:
                await _until(lambda: src.status.connected, 20, "auto connected")
            else:
                await _until(lambda: src.status.last_error, 20, "refusal")
            return src.status.connected, src.status.security, src.status.last_error
        finally:
            agent.request_stop()
            await asyncio.wait_for(task, 20)
            await server.stop()

    connected, security, error = asyncio.run(main())
    if certs:
        assert connected and security == "Aes256_Sha256_RsaPss/SignAndEncrypt"
    else:
        assert not connected and security == ""
        assert "needs the client certificate" in error and "plantstream edge certs create" in error, error


def test_browse_a_server_that_refuses_security_none(tmp_path: Path) -> None:
    """`edge browse` walks a secured server with the agent's security (auto), and the file it
    writes pins what worked and passes `edge check`."""
    pki = tmp_path / "pki"
    scert, skey = _server_cert(tmp_path)
    _client_trusting(pki, scert)
    port = free_port()
    out = tmp_path / "browsed.yaml"
    env = {**os.environ, "PLANTSTREAM_LOG_FORMAT": "text", "OPCUA_PW": "s3cret"}

    def browse(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plantstream.cli", "edge", "browse", f"opc.tcp://127.0.0.1:{port}/sec/",
             "--username", "operator", "--password-env", "OPCUA_PW", "--pki-dir", str(pki), *extra],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip

    async def main() -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        server, _var = await _server(port, scert, skey)
        try:
            ok = await asyncio.to_thread(browse, "--out", str(out))
            plain = await asyncio.to_thread(browse, "--security-policy", "None", "--security-mode", "None")
            return ok, plain
        finally:
            await server.stop()

    ok, plain = asyncio.run(main())
    assert ok.returncode == 0, ok.stderr
    assert "with security Aes256_Sha256_RsaPss/SignAndEncrypt" in ok.stderr
    text = out.read_text()
    assert "press.force" in text and "policy: Aes256_Sha256_RsaPss" in text and "mode: SignAndEncrypt" in text
    assert "s3cret" not in text + ok.stderr + ok.stdout
    check = subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "edge", "check", "--config", str(out)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr + check.stdout
    # Asked for None explicitly, against a server that offers no None endpoint: refused, named.
    assert plain.returncode == 1 and "cannot browse" in plain.stderr
