"""Platform configuration: the example loads, bad files exit 2 naming file, line and key, the
listen rule fails closed, secrets never show."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from plantstream.cli import cli, main
from plantstream.config import ConfigError
from plantstream.federation.config import check_listen, load_config
from plantstream.log import JsonFormatter

EXAMPLE = Path(__file__).resolve().parent.parent / "platform.example.yaml"

GOOD = """\
database:
  dsn: postgresql://plantstream:pg-secret-pw@127.0.0.1:1/plantstream_platform
nodes:
  - id: steel
    url: http://127.0.0.1:8765/
    credential: node-credential-steel
levels:
  public:
    tier: public
    access: [free]
members:
  - id: pat
    level: public
    token: public-token-pat-0001
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "platform.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_example_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert {n.id for n in cfg.nodes} == {"steel", "fiber"}
    assert cfg.levels["public"].tier == "public" and [a.value for a in cfg.levels["partner"].access] == [
        "free",
        "member",
        "paid",
    ]
    assert cfg.levels["member"].quotas.concurrent_pulls == 2


def test_secrets_masked(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.nodes[0].url == "http://127.0.0.1:8765"  # trailing slash dropped
    shown = repr(cfg) + str(cfg.describe())
    for secret in ("pg-secret-pw", "node-credential-steel", "public-token-pat-0001"):
        assert secret not in shown
    assert "postgresql://plantstream:***@127.0.0.1:1/plantstream_platform" in shown
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, "starting", None, None)
    rec.kv = cfg.describe()  # type: ignore[attr-defined]
    assert "pg-secret-pw" not in JsonFormatter().format(rec)


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (("tier: public", "tier: owner"), ":9: key 'levels.public.tier'"),
        (("access: [free]", "access: [gratis]"), ":10: key 'levels.public.access.0'"),
        (("level: public\n", "level: gold\n"), "level 'gold' is not one of ['public']"),
        (("credential: node-credential-steel", "credential: short"), ":6: key 'nodes.0.credential'"),
        (("url: http://127.0.0.1:8765/", "url: ftp://x"), ":5: key 'nodes.0.url'"),
        (("token: public-token-pat-0001", "token: tiny"), ":14: key 'members.0.token'"),
        (("levels:", "levelz:"), "key 'levelz'"),
    ],
)
def test_bad_config_exits_2_naming_file_line_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str], where: str
) -> None:
    text = GOOD.replace(*edit)
    assert text != GOOD
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(p) in str(exc.value) and where in str(exc.value), str(exc.value)
    # The console script: exit status 2, the same message.
    with pytest.raises(SystemExit) as ex:
        main(["platform", "search", "--config", str(p)])
    assert ex.value.code == 2
    assert where in capsys.readouterr().err


def test_owner_tier_is_never_granted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never granted"):
        load_config(write(tmp_path, GOOD.replace("tier: public", "tier: owner")))


def test_listen_fails_closed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    check_listen(cfg, "p.yaml", "127.0.0.1")
    check_listen(cfg, "p.yaml", "::1")
    with pytest.raises(ConfigError, match="without TLS"):
        check_listen(cfg, "p.yaml", "0.0.0.0")
    proxied = load_config(write(tmp_path, GOOD + "listen:\n  host: 0.0.0.0\n  tls_proxy: true\n"))
    check_listen(proxied, "p.yaml")
    nobody = load_config(write(tmp_path, GOOD.split("members:")[0] + "listen:\n  host: 0.0.0.0\n  tls_proxy: true\n"))
    with pytest.raises(ConfigError, match="no member"):
        check_listen(nobody, "p.yaml")
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_config(write(tmp_path, GOOD + "listen:\n  tls_cert: /nonexistent.pem\n"))


def test_serve_refuses_public_address_without_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from plantstream.cli import main

    p = write(tmp_path, GOOD)
    with pytest.raises(SystemExit) as ex:
        main(["platform", "serve", "--config", str(p), "--host", "0.0.0.0"])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert "key 'listen.host'" in err and "refusing to listen on 0.0.0.0 without TLS" in err


def test_usage_and_harvest_reject_unknown_names(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD)
    res = CliRunner().invoke(cli, ["platform", "usage", "--config", str(p), "--member", "nobody"])
    assert res.exit_code == 2 and "not a configured member" in res.output
    res = CliRunner().invoke(cli, ["platform", "usage", "--config", str(p), "--day", "01/02/2026"])
    assert res.exit_code == 2 and "YYYY-MM-DD" in res.output
    res = CliRunner().invoke(cli, ["platform", "harvest", "--config", str(p), "--node", "copper"])
    assert res.exit_code == 2 and "not a configured node" in res.output
    res = CliRunner().invoke(cli, ["platform", "search", "--config", str(p), "--grade", "secret"])
    assert res.exit_code == 2 and "--grade" in res.output
