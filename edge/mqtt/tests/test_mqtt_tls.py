"""MQTT over TLS with a password file, on a Mosquitto this test starts itself (free ports, own CA):
readings arrive with the url taken from PLANTSTREAM_MQTT_URL; a wrong password or an unknown CA
never connects. The shared broker is not touched."""

from __future__ import annotations

import getpass
import json
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.edge.config import EdgeConfig
from plantstream.producers.topics import Topics
from plantstream.stack import port_open
from plantstream.testing.edge import AgentThread, batches, read_topic
from plantstream.testing.plugin import free_port, wait_until
from plantstream.testing.tls import make_pki

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path(MOSQUITTO).exists() or not Path(PASSWD).exists(), reason="needs mosquitto"),
]


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """(TLS port, CA file, a CA the broker does not use); user edge / s3cret-pw."""
    d = tmp_path / "broker"
    d.mkdir()
    pki = make_pki(d)
    subprocess.run([PASSWD, "-b", "-c", str(d / "passwd"), "edge", "s3cret-pw"], check=True, timeout=30)
    port = free_port()
    (d / "mosquitto.conf").write_text(
        "\n".join(
            [
                "persistence false",
                # Started as root, mosquitto would switch to its own user, which cannot read tmp_path.
                f"user {getpass.getuser()}",
                "allow_anonymous false",
                f"password_file {d / 'passwd'}",
                f"listener {port} 127.0.0.1",
                f"cafile {pki.ca}",
                f"certfile {pki.cert}",
                f"keyfile {pki.key}",
                "tls_version tlsv1.2",
                "",
            ]
        )
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(d / "mosquitto.conf")], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 15, "mosquitto TLS listener")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield port, pki.ca, pki.other_ca
    finally:
        proc.terminate()
        proc.wait(10)


def _cfg(root: str, ca: Path, **source: object) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "agent_id": "tls",
            "plant": "chemical",
            "sources": [
                {
                    "type": "mqtt",
                    "id": "m-tls",
                    "client_id": f"edge-{root}",
                    "tls": {"ca_file": str(ca)},
                    "reconnect": {"min_s": 0.2, "max_s": 1},
                    "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
                    **source,
                }
            ],
            "batch": {"max_delay_ms": 20},
            "kafka": {"partitions": 2},
        }
    )


def test_tls_and_password_with_url_from_environment(
    tmp_path: Path, tls_broker: tuple[int, Path, Path], kafka_bootstrap: str, topic_prefix: str
) -> None:
    port, ca, other_ca = tls_broker
    root = f"tls-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate(
        {
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": topic_prefix,
            "partitions": 2,
            "state_dir": tmp_path / "state",
            # No url in the file: PLANTSTREAM_MQTT_URL (here: the settings) supplies host and credentials.
            "mqtt_url": f"mqtts://edge:s3cret-pw@127.0.0.1:{port}",
        }
    )
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{root}")
    pub.username_pw_set("edge", "s3cret-pw")
    pub.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        with AgentThread(_cfg(root, ca), settings) as agent:
            src = agent.agent.sources[0]
            wait_until(lambda: src.status.connected, 20, "agent connected over TLS")
            sent = {(1_700_000_000_000_000 + i, float(i)) for i in range(20)}
            for ts, v in sorted(sent):
                pub.publish(f"{root}/plant/reactor/temp", json.dumps({"ts_us": ts, "value": v}), qos=1)
            raw = read_topic(
                kafka_bootstrap,
                Topics(topic_prefix, 2).raw,
                lambda ms: {ts for ts, _ in sent} <= {t for b in batches(ms) for t in b.ts_us},
                30,
            )
            shown = json.dumps([s.status.to_dict() for s in agent.agent.sources])
            assert f"127.0.0.1:{port}" in shown and "s3cret-pw" not in shown, "the password never reaches the status"
        got = {(t, v) for b in batches(raw) for t, v in zip(b.ts_us, b.value, strict=True)}
        assert sent <= got
        # Wrong password, then a CA that did not sign the broker's certificate: never connected.
        for bad in (
            _cfg(root + "x", ca, url=f"mqtts://127.0.0.1:{port}", username="edge", password="wrong"),
            _cfg(root + "y", other_ca, url=f"mqtts://edge:s3cret-pw@127.0.0.1:{port}"),
        ):
            with AgentThread(bad, settings) as agent:
                st = agent.agent.sources[0].status
                wait_until(lambda: bool(st.last_error), 15, "a refused attempt")  # noqa: B023 - used at once
                assert not st.connected
    finally:
        pub.loop_stop()
        pub.disconnect()
