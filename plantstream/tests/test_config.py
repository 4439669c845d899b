"""Configuration errors name file, line and key; secrets never leak into logs or describe()."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from plantstream import log
from plantstream.config import ConfigError, Settings, load_yaml, mask_url


class Tag(BaseModel):
    tag: str
    lo: float = 0.0
    hi: float = Field(100.0, gt=0)


class Agent(BaseModel):
    plant: str
    tags: list[Tag]


def test_error_names_file_line_and_key(tmp_path: Path) -> None:
    p = tmp_path / "agent.yaml"
    p.write_text("plant: steel\ntags:\n  - tag: a\n    hi: 5\n  - tag: b\n    hi: -3\n")
    with pytest.raises(ConfigError) as exc:
        load_yaml(p, Agent)
    assert f"{p}:6: key 'tags.1.hi'" in str(exc.value)


def test_missing_key_and_yaml_syntax(tmp_path: Path) -> None:
    p = tmp_path / "a.yaml"
    p.write_text("tags: []\n")
    with pytest.raises(ConfigError, match=r"a.yaml:1: key 'plant': Field required"):
        load_yaml(p, Agent)
    p.write_text("plant: steel\ntags: [\n")
    with pytest.raises(ConfigError, match=r"a.yaml:3: invalid YAML"):
        load_yaml(p, Agent)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml(tmp_path / "missing.yaml", Agent)


def test_settings_from_env_masks_secrets() -> None:
    s = Settings.from_env(
        {"PLANTSTREAM_DB_DSN": "postgresql://u:hunter2@h:5/db", "PLANTSTREAM_KAFKA_BOOTSTRAP": "k:9092"}
    )
    assert s.dsn == "postgresql://u:hunter2@h:5/db"
    assert "hunter2" not in repr(s)
    assert s.describe()["db"] == "postgresql://u:***@h:5/db"
    with pytest.raises(ConfigError, match="PLANTSTREAM_PARTITIONS"):
        Settings.from_env({"PLANTSTREAM_DB_DSN": "x", "PLANTSTREAM_PARTITIONS": "zero"})


def test_logs_redact_passwords(caplog: pytest.LogCaptureFixture) -> None:
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, "connecting to %s", ("postgresql://u:s3cret@h/db",), None)
    rec.kv = {"dsn": "host=h password=s3cret"}
    line = json.loads(log.JsonFormatter().format(rec))
    assert "s3cret" not in json.dumps(line)
    assert line["msg"] == "connecting to postgresql://u:***@h/db"
    assert mask_url("host=h password=abc user=u") == "host=h password=*** user=u"


def test_cli_exits_2_on_bad_environment() -> None:
    env = {"PATH": "/usr/bin:/bin", "PLANTSTREAM_DB_DSN": "x", "PLANTSTREAM_PARTITIONS": "-1"}
    out = subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "topics", "create"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "PLANTSTREAM_PARTITIONS" in out.stderr


def test_log_lines_never_carry_a_credential() -> None:
    """Both formats mask secrets in the message, in structured fields (by key and by content) and
    inside nested values, e.g. a librdkafka config or an OPC-UA endpoint with user info."""
    import logging

    from plantstream.log import JsonFormatter, TextFormatter

    kv = {
        "endpoint": "opc.tcp://operator:pl4nt-pw@plc:4840/ua",
        "sasl.password": "k4fka-pw",
        "conf": {"sasl.username": "edge-steel", "sasl.password": "k4fka-pw", "bootstrap.servers": "k:9092"},
        "dsns": ["postgresql://u:db-pw@h/db"],
        "token": "tok-abc",
        "count": 3,
    }
    rec = logging.LogRecord("t", logging.WARNING, __file__, 1, "connect mqtt://u:mq-pw@h:1883 failed", None, None)
    rec.kv = kv
    for fmt in (JsonFormatter(), TextFormatter()):
        line = fmt.format(rec)
        for secret in ("pl4nt-pw", "k4fka-pw", "db-pw", "mq-pw", "tok-abc"):
            assert secret not in line, (type(fmt).__name__, line)
        assert "edge-steel" in line and "k:9092" in line and "3" in line  # what is not secret stays


def test_yaml_the_parser_refuses_is_a_config_error(tmp_path: Path) -> None:
    """Found by the fuzzer: a control character (ReaderError) and deep nesting (RecursionError)
    escaped load_yaml as other exceptions instead of the exit-2 message naming the file."""
    from plantstream.config import ConfigError, load_yaml
    from plantstream.edge.config import EdgeConfig

    for name, text, why in (
        ("nul.yaml", b"agent_id: a\x00b\n", "invalid YAML"),
        ("deep.yaml", b"x: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested too deeply"),
    ):
        path = tmp_path / name
        path.write_bytes(text)
        with pytest.raises(ConfigError, match=why) as err:
            load_yaml(path, EdgeConfig)
        assert str(err.value).startswith(str(path))


def test_one_precedence_rule_cli_over_environment_over_file_over_default() -> None:
    from plantstream.config import layered

    assert layered(cli=1, env=2, file=3, default=4) == 1
    assert layered(env=2, file=3, default=4) == 2
    assert layered(file=3, default=4) == 3
    assert layered(default=4) == 4
    assert layered() is None
    # 0 is a value (any free port), not "unset": it wins over the lower levels.
    assert layered(cli=0, env=2, file=3) == 0
    assert layered(env=0, file=3) == 0
