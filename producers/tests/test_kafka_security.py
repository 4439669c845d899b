"""One definition of Kafka client security (plantstream.config.KafkaSecurity), mapped to librdkafka
and aiokafka settings; bad combinations are refused naming the variable; secrets never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from plantstream.config import ConfigError, KafkaSecurity, Settings
from plantstream.producers.kafka import aiokafka_kwargs, librdkafka_conf
from plantstream.testing.tls import make_pki

SECRET = "pa55-w0rd-never-logged"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    pki = make_pki(tmp_path / "pki")
    return {
        "PLANTSTREAM_DB_DSN": "postgresql://u:dbsecret@h:5/db",
        "PLANTSTREAM_KAFKA_BOOTSTRAP": "kafka-1:9093,kafka-2:9093",
        "PLANTSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "PLANTSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "PLANTSTREAM_KAFKA_SASL_USERNAME": "edge-steel",
        "PLANTSTREAM_KAFKA_SASL_PASSWORD": SECRET,
        "PLANTSTREAM_KAFKA_SSL_CA": str(pki.ca),
        "PLANTSTREAM_KAFKA_REPLICATION_FACTOR": "3",
        "PLANTSTREAM_KAFKA_MIN_INSYNC_REPLICAS": "2",
        **extra,
    }


def test_sasl_ssl_maps_to_both_client_libraries(tmp_path: Path) -> None:
    s = Settings.from_env(_env(tmp_path))
    sec = s.kafka
    assert (sec.replication_factor, sec.min_insync_replicas) == (3, 2)
    conf = librdkafka_conf(s.kafka_bootstrap, {"group.id": "g"}, security=sec)
    assert conf == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "edge-steel",
        "sasl.password": SECRET,
        "ssl.ca.location": str(sec.ssl_ca_location),
        "ssl.endpoint.identification.algorithm": "https",
        "group.id": "g",
    }
    kw = aiokafka_kwargs(sec)
    ctx = kw.pop("ssl_context")
    assert kw == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "edge-steel",
        "sasl_plain_password": SECRET,
    }
    assert ctx.check_hostname and len(ctx.get_ca_certs()) == 1
    # Never the password, in any description of the settings.
    assert SECRET not in repr(s) and SECRET not in str(s.describe()) and SECRET not in repr(sec)
    assert s.describe()["kafka_security"] == f"SASL_SSL SCRAM-SHA-512 as edge-steel ca={sec.ssl_ca_location}"


def test_plaintext_default_and_the_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KafkaSecurity.ENV.values():
        monkeypatch.delenv(name, raising=False)
    assert librdkafka_conf("h:9092") == {"bootstrap.servers": "h:9092", "security.protocol": "PLAINTEXT"}
    monkeypatch.setenv("PLANTSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("PLANTSTREAM_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("PLANTSTREAM_KAFKA_SASL_USERNAME", "sink")
    monkeypatch.setenv("PLANTSTREAM_KAFKA_SASL_PASSWORD", SECRET)
    conf = librdkafka_conf("h:9092")  # no settings passed: every client takes the environment's
    assert (conf["security.protocol"], conf["sasl.mechanism"], conf["sasl.username"]) == (
        "SASL_PLAINTEXT",
        "PLAIN",
        "sink",
    )
    assert "ssl.ca.location" not in conf


def test_mutual_tls_and_oauthbearer(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    sec = KafkaSecurity(
        security_protocol="SSL",
        ssl_ca_location=pki.ca,
        ssl_certificate_location=pki.cert,
        ssl_key_location=pki.key,
        ssl_check_hostname=False,
    )
    conf = librdkafka_conf("h:9093", security=sec)
    assert conf["ssl.certificate.location"] == str(pki.cert) and conf["ssl.key.location"] == str(pki.key)
    assert conf["ssl.endpoint.identification.algorithm"] == "none"
    assert aiokafka_kwargs(sec)["ssl_context"].check_hostname is False
    oauth = KafkaSecurity.from_env(
        {
            "PLANTSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "PLANTSTREAM_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "PLANTSTREAM_KAFKA_OAUTH_TOKEN_ENDPOINT": "https://idp.example/token",
            "PLANTSTREAM_KAFKA_SASL_USERNAME": "client-1",
            "PLANTSTREAM_KAFKA_SASL_PASSWORD": SECRET,
        }
    )
    conf = librdkafka_conf("h:9093", security=oauth)
    assert conf["sasl.oauthbearer.method"] == "oidc"
    assert conf["sasl.oauthbearer.client.id"] == "client-1" and conf["sasl.oauthbearer.client.secret"] == SECRET
    assert conf["sasl.oauthbearer.token.endpoint.url"] == "https://idp.example/token"
    with pytest.raises(ConfigError, match="streams worker \\(aiokafka\\) needs SCRAM"):
        aiokafka_kwargs(oauth)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"PLANTSTREAM_KAFKA_SASL_MECHANISM": ""}, "needs sasl_mechanism"),
        ({"PLANTSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL"}, "needs a SASL_PLAINTEXT or SASL_SSL"),
        ({"PLANTSTREAM_KAFKA_SASL_PASSWORD": ""}, "needs sasl_username and sasl_password"),
        ({"PLANTSTREAM_KAFKA_SSL_CA": "/nonexistent/ca.pem"}, "ssl_ca_location /nonexistent/ca.pem: no such file"),
        ({"PLANTSTREAM_KAFKA_MIN_INSYNC_REPLICAS": "4"}, "min_insync_replicas 4 exceeds replication_factor 3"),
        ({"PLANTSTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"}, "PLANTSTREAM_KAFKA_SECURITY_PROTOCOL: Input should be"),
        (
            {"PLANTSTREAM_KAFKA_REPLICATION_FACTOR": "0"},
            "PLANTSTREAM_KAFKA_REPLICATION_FACTOR: Input should be greater",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(tmp_path: Path, extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        Settings.from_env(_env(tmp_path, **extra))
    assert "PLANTSTREAM_KAFKA_" in str(err.value)
    assert SECRET not in str(err.value)
