"""The monitor's bounds: listening without tokens, HTTPS, SSE client caps, history limits, pull
limits, and the audit trail (real PostgreSQL, real HTTP)."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plantstream.config import Settings, is_loopback
from plantstream.datasets.api import ENGINE
from plantstream.monitor.auth import MonitorConfig, token_label
from plantstream.monitor.cli import check_listen
from plantstream.monitor.web import make_app
from plantstream.testing import datasets as dstesting
from plantstream.testing.monitor import (
    MEMBER,
    OWNER,
    PUBLIC,
    TOKENS,
    TOKENS_ENV,
    EngineOf,
    Served,
    ServerThread,
    SseReader,
)
from plantstream.testing.plugin import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TAG = "caster1.cooling_water_flow"  # general grade: every tier may read it


def serve(settings: Settings, **kw: Any) -> ServerThread:
    return ServerThread(
        make_app(settings, MonitorConfig(tokens=TOKENS, anonymous_tier="none", **kw), kafka=False, engine=ENGINE)
    )


# --- listening ------------------------------------------------------------------------------------


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.9.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.1.2.3")
    assert not is_loopback("no-such-host.invalid")


def test_no_tokens_on_a_public_address_is_refused(settings_env: dict[str, str]) -> None:
    env = {k: v for k, v in settings_env.items() if k != "PLANTSTREAM_MONITOR_TOKENS"}
    proc = subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "monitor", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.decode()
    assert "refusing to listen on 0.0.0.0 without tokens" in err and "PLANTSTREAM_MONITOR_TOKENS" in err
    # With tokens the same address is allowed (checked without binding it).
    check_listen("0.0.0.0", MonitorConfig(tokens=TOKENS))
    check_listen("127.0.0.1", MonitorConfig())


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_serves_https_with_a_certificate(settings_env: dict[str, str], tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    env = {**settings_env, "PLANTSTREAM_MONITOR_TOKENS": TOKENS_ENV}
    args = [sys.executable, "-m", "plantstream.cli", "monitor", "--port", str(port)]
    half = subprocess.run([*args, "--tls-cert", str(cert)], env=env, capture_output=True, timeout=60)
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr.decode()
    proc = subprocess.Popen(
        [*args, "--tls-cert", str(cert), "--tls-key", str(key)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    trusted = ssl.create_default_context(cafile=str(cert))
    try:

        def me() -> Any:
            req = urllib.request.Request(
                f"https://localhost:{port}/api/me", headers={"Authorization": f"Bearer {PUBLIC}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=5, context=trusted) as r:
                    return json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                return None

        assert wait_until(me, 30, "the monitor to serve HTTPS")["tier"] == "public"
        # A client that does not trust the certificate is refused by TLS, and plain HTTP gets no answer.
        with pytest.raises(urllib.error.URLError) as refused:
            urllib.request.urlopen(f"https://localhost:{port}/healthz", timeout=5)
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/healthz")
            plain.getresponse().read()
    finally:
        proc.terminate()
        proc.wait(15)


# --- live streams ---------------------------------------------------------------------------------


def _open(url: str, token: str) -> tuple[int, Any]:
    u = url.removeprefix("http://")
    host, port = u.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", f"/api/stream?token={token}")
    r = conn.getresponse()
    body = json.loads(r.read()) if r.status != 200 else None
    conn.close()
    return r.status, (body, r.getheader("Retry-After"))


def test_sse_clients_capped_per_token_and_in_total(settings: Settings) -> None:
    with serve(settings, sse_max_per_token=2, sse_max_clients=3) as s:
        first = [SseReader(s.url, f"/api/stream?token={PUBLIC}") for _ in range(2)]
        member = None
        try:
            wait_until(lambda: all(r.of("hello") for r in first), 10, "two public streams")
            status, (problem, retry) = _open(s.url, PUBLIC)
            assert status == 429 and retry == "30" and "sse_max_per_token" in problem["detail"]
            assert "at most 2" in problem["detail"]
            member = SseReader(s.url, f"/api/stream?token={MEMBER}")  # another token: its own allowance
            wait_until(lambda: member is not None and member.of("hello"), 10, "the member stream")
            status, (problem, retry) = _open(s.url, OWNER)
            assert status == 503 and "sse_max_clients" in problem["detail"] and "at most 3" in problem["detail"]
            assert s.get("/api/me", OWNER)[0] == 200  # the API keeps serving
            bad = s.get("/api/stream?kinds=aggregates,secrets", OWNER)
            assert bad[0] == 400 and "secrets" in bad[1]["detail"]
            first.pop().close()
            wait_until(lambda: len(s.hub.subscribers) == 2, 10, "the closed stream to be let go")
            again = SseReader(s.url, f"/api/stream?token={PUBLIC}")
            first.append(again)
            wait_until(lambda: again.of("hello"), 10, "a stream in the freed place")
        finally:
            for r in first:
                r.close()
            if member is not None:
                member.close()


# --- history --------------------------------------------------------------------------------------


@pytest.fixture
def api(loaded_db: tuple[str, int], settings: Settings) -> Iterator[Served]:
    with serve(settings, history_max_range_s=3600, history_max_points=100) as s:
        wait_until(lambda: s.get("/healthz", None)[0] == 200, 10, "monitor /healthz")
        yield s


def test_history_bounds_name_the_limit(api: Served) -> None:
    base = f"/api/history?plant=steel&tag={TAG}"
    assert api.get(f"{base}&start=-1h&points=100", PUBLIC)[0] == 200
    status, p = api.get(f"{base}&start=-2h", PUBLIC)
    assert status == 422 and p["field"] == "history_max_range_s" and "3600" in p["detail"]
    status, p = api.get(f"{base}&start=-10m&points=101", PUBLIC)
    assert status == 400 and "history_max_points" in p["detail"] and "'points'" in p["detail"]
    # Times no calendar holds: 400 naming the parameter (-1000000d raised OverflowError, a 500, before).
    for q in ("start=-1000000d", "end=-1000000d", "start=-99999999999999999999999d", "start=0001-01-01T00:00:00+05:00"):
        status, p = api.get(f"{base}&{q}", PUBLIC)
        assert status == 400, (q, p)
        assert q.split("=")[0] in p["detail"]
    status, p = api.get("/api/deviations?since=-1000000d", PUBLIC)
    assert status == 400 and "'since'" in p["detail"]
    status, p = api.get("/api/lots?plant=steel&equipment=acme&start=-1000000d", PUBLIC)
    assert status == 400 and "'start'" in p["detail"]


def test_history_time_limit_names_the_limit(loaded_db: tuple[str, int], settings: Settings) -> None:
    # 1 ms: the history query (plan and scan over partitions) cannot finish in it.
    with serve(settings, api_statement_timeout_s=0.001) as s:
        status, p = s.get(f"/api/history?plant=steel&tag={TAG}&start=-15m", OWNER)
        assert status == 422 and p["field"] == "api_statement_timeout_s", p
        assert "0.001 s" in p["detail"]


# --- pulls ----------------------------------------------------------------------------------------


T0 = dt.datetime.fromtimestamp(dstesting.T0_US / 1e6, dt.UTC)
DS_CORE = sorted(t.tag for t in dstesting.TAGS if t.grade.value == "core")


def _pull(**kw: Any) -> dict[str, Any]:
    return {
        "plant": dstesting.PLANT,
        "start": T0.isoformat(),
        "end": (T0 + dt.timedelta(seconds=600)).isoformat(),
        "interval": "5s",
        **kw,
    }


@pytest.fixture
def pulling(fresh_db: str, settings: Settings, tmp_path: Path) -> Iterator[Served]:
    dstesting.load(fresh_db, 600, lot_s=60)
    from plantstream.access import Tier

    with serve(
        settings,
        datasets_dir=tmp_path / "datasets",
        pull_max_rows=1000,
        pull_max_cells={Tier.OWNER: 10**9, Tier.MEMBER: 240},
    ) as s:
        wait_until(lambda: s.get("/healthz", None)[0] == 200, 10, "monitor /healthz")
        yield s


def test_pull_limits_name_the_limit(pulling: Served) -> None:
    status, p, _ = pulling.post("/api/dataset-pulls", _pull(interval="100ms"), OWNER)  # 6000 rows
    assert status == 422 and p["field"] == "interval" and "pull_max_rows 1000" in p["detail"]
    status, p, _ = pulling.post("/api/dataset-pulls", _pull(), MEMBER)  # 120 rows x the member's tags
    assert status == 422 and "pull_max_cells" in p["detail"] and "tier member (240)" in p["detail"]
    status, p, _ = pulling.post("/api/dataset-pulls", _pull(), PUBLIC)
    assert status == 403 and "tier public may not pull" in p["detail"]


def test_withheld_tag_asked_by_name_answers_like_an_absent_one(pulling: Served) -> None:
    one = _pull(interval="10s")  # 60 rows x 1 tag: within the member's cells
    hidden = pulling.post("/api/dataset-pulls", {**one, "tags": [DS_CORE[0]]}, MEMBER)
    absent = pulling.post("/api/dataset-pulls", {**one, "tags": ["no.such.tag"]}, MEMBER)
    assert hidden[0] == absent[0] == 422
    assert hidden[1]["field"] == absent[1]["field"] == "tags"
    assert hidden[1]["detail"].replace(DS_CORE[0], "X") == absent[1]["detail"].replace("no.such.tag", "X")
    gap = {**one, "tags": ["mould.level"], "tag_gaps": {DS_CORE[0]: {"rule": "none"}}}
    gap_absent = {**one, "tags": ["mould.level"], "tag_gaps": {"no.such.tag": {"rule": "none"}}}
    h, a = pulling.post("/api/dataset-pulls", gap, MEMBER), pulling.post("/api/dataset-pulls", gap_absent, MEMBER)
    assert h[0] == a[0] == 422 and h[1]["detail"].replace(DS_CORE[0], "X") == a[1]["detail"].replace("no.such.tag", "X")


def test_audit_names_the_token_never_the_token(pulling: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plantstream.monitor.audit")
    assert pulling.get("/api/me", PUBLIC)[0] == 200
    assert pulling.get("/api/history?plant=x&tag=y&start=-1000000d", PUBLIC)[0] == 400
    assert pulling.get("/api/me", "wrong-token-123")[0] == 401
    status, accepted, _ = pulling.post("/api/dataset-pulls", _pull(tags=["mould.level"], interval="10s"), MEMBER)
    assert status == 202, accepted
    wait_until(
        # Only the audit logger's record counts: the pull's own progress logs carry the id earlier.
        lambda: any(
            r.name == "plantstream.monitor.audit" and getattr(r, "kv", {}).get("pull") == accepted["id"]
            for r in caplog.records
        ),
        60,
        "the pull's audit",
    )
    kvs = [r.kv for r in caplog.records if r.name == "plantstream.monitor.audit"]  # type: ignore[attr-defined]
    calls = [(k["who"], k["route"], k["status"], k["outcome"]) for k in kvs if "route" in k]
    assert (token_label(PUBLIC), "/api/me", 200, "ok") in calls
    assert (token_label(PUBLIC), "/api/history", 400, "refused") in calls
    assert ("(refused)", "/api/me", 401, "refused") in calls
    assert (token_label(MEMBER), "/api/dataset-pulls", 202, "ok") in calls
    pull = [k for k in kvs if k.get("pull") == accepted["id"]]
    assert pull == [
        {"who": token_label(MEMBER), "tier": "member", "pull": accepted["id"], "outcome": "done", "error": None}
    ]
    text = caplog.text + json.dumps(kvs)
    for secret in (PUBLIC, MEMBER, "wrong-token-123"):
        assert secret not in text


def test_example_config_states_the_default_bounds() -> None:
    from plantstream.monitor.auth import load_config

    example = load_config(Path(__file__).parents[1] / "monitor.example.yaml", env={})
    default = MonitorConfig()
    keys = [k for k in MonitorConfig.model_fields if k.startswith(("sse_", "history_", "pull_max", "max_pulls"))]
    assert len(keys) == 7 and "pull_statement_timeout_s" not in keys
    for key in [
        *keys,
        "pull_statement_timeout_s",
        "api_statement_timeout_s",
        "api_max_inflight_per_token",
        "db_pool_size",
    ]:
        assert getattr(example, key) == getattr(default, key), key


def test_requests_in_progress_capped_per_token(pulling: Served, settings: Settings, tmp_path: Path) -> None:
    """A token holding api_max_inflight_per_token requests gets 429 for one more; others are served.
    The held request is a pull POST whose (stubbed) pull has not begun, so the POST waits
    (``pulling`` loads the tags the POST's checks read)."""
    import threading

    from plantstream.domain.pullrequest import PullRecord
    from plantstream.monitor import pulls
    from plantstream.monitor.web import K_PULLS

    release = threading.Event()

    def held(*_a: Any, **_kw: Any) -> PullRecord:
        assert release.wait(30)
        raise RuntimeError("stub: never a real pull")

    app = make_app(
        settings,
        MonitorConfig(tokens=TOKENS, anonymous_tier="none", api_max_inflight_per_token=1),
        False,
        engine=ENGINE,
    )
    app[K_PULLS] = pulls.PullRunner(settings, tmp_path / "ds", engine=EngineOf(held))
    with ServerThread(app) as s:
        answer: list[Any] = []
        poster = threading.Thread(target=lambda: answer.append(s.post("/api/dataset-pulls", _pull(), OWNER)))
        poster.start()
        try:
            wait_until(lambda: app[K_PULLS].running == 1, 10, "the held pull POST")
            status, problem = s.get("/api/me", OWNER)
            assert status == 429 and "api_max_inflight_per_token" in problem["detail"]
            assert s.get("/api/me", PUBLIC)[0] == 200  # another token is served meanwhile
        finally:
            release.set()
            poster.join(30)
        assert answer and answer[0][0] == 500 and "RuntimeError" in answer[0][1]["detail"]
        assert s.get("/api/me", OWNER)[0] == 200  # the slot is given back
