"""Edge config: precise errors (file:line: key) and exit code 2 from the real CLI; examples valid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plantstream.config import ConfigError
from plantstream.edge.config import MqttSource, OpcuaSource, load_config, template_filter
from plantstream.sim.catalog import SimTag
from plantstream.sim.edgeconfig import config_for_sim, dump_config

HERE = Path(__file__).resolve().parent.parent

GOOD = """\
agent_id: a1
plant: steel
sources:
  - type: opcua
    id: plc1
    endpoint: opc.tcp://127.0.0.1:4840
    tags:
      - node_id: ns=2;s=x
        tag: x
        equipment: acme/site/area
  - type: mqtt
    id: m1
    url: mqtt://edge:s3cret@127.0.0.1:11883
    password: hunter2
    subscriptions:
      - template: "plantstream-sim/steel/{equipment+}/{tag}"
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plantstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PLANTSTREAM_LOG_FORMAT": "text"},
    )


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    p = tmp_path / "edge.yaml"
    p.write_text(GOOD)
    res = _cli("edge", "check", "--config", str(p))
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout and "s3cret" not in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("change", "line", "key"),
    [
        (("endpoint: opc.tcp://127.0.0.1:4840", "endpoint: http://plc"), 6, "sources.0.endpoint"),
        (("        equipment: acme/site/area", "        equipment: a//b"), 10, "sources.0.tags.0.equipment"),
        (("    id: m1", "    id: m1\n    qos: 2"), 13, "sources.1.qos"),
        (("plant: steel", "plant: steel\nbatch: {max_readings: 0}"), 3, "batch.max_readings"),
        (("    id: plc1", "    id: plc1\n    colour: red"), 6, "sources.0.colour"),
    ],
)
def test_check_names_file_line_and_key_and_exits_2(
    tmp_path: Path, change: tuple[str, str], line: int, key: str
) -> None:
    p = tmp_path / "edge.yaml"
    p.write_text(GOOD.replace(*change))
    res = _cli("edge", "check", "--config", str(p))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert f"{p}:{line}: key '{key}'" in res.stderr, res.stderr


def test_duplicate_source_ids_rejected(tmp_path: Path) -> None:
    p = tmp_path / "edge.yaml"
    p.write_text(GOOD.replace("id: m1", "id: plc1"))
    with pytest.raises(ConfigError, match="used twice"):
        load_config(p)


def test_secrets_masked_in_repr(tmp_path: Path) -> None:
    p = tmp_path / "edge.yaml"
    p.write_text(GOOD)
    cfg = load_config(p)
    text = repr(cfg) + str(cfg.model_dump())
    assert "hunter2" not in text and "s3cret" not in text


@pytest.mark.parametrize(
    "example", ["opcua/example.yaml", "mqtt/example.yaml", "sparkplug/example.yaml", "modbus/example.yaml"]
)
def test_examples_are_valid(example: str) -> None:
    cfg = load_config(HERE / example)
    assert cfg.sources and cfg.tag_metas()


def test_template_filter() -> None:
    assert template_filter("plantstream-sim/steel/{equipment+}/{tag}") == "plantstream-sim/steel/#"
    assert template_filter("gw/{_}/{tag}") == "gw/+/+"


def test_simconfig_round_trips_through_yaml(tmp_path: Path) -> None:
    tags = [
        SimTag(
            "caster1.mould_level",
            "acme/site/steelmaking/caster1",
            "mm",
            0,
            200,
            node_id="ns=2;s=caster1.mould_level",
            grade="core",
            spec_property="mould_level",
        ),
        SimTag("ladle.temp", "acme/site/steelmaking/lf1", "degC", 1500, 1700, transport="mqtt"),
    ]
    cfg = config_for_sim("steel", "opc.tcp://127.0.0.1:4841/plantstream/steel", "mqtt://127.0.0.1:11883", tags)
    path = tmp_path / "sim.yaml"
    dump_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    kinds = {s.type: s for s in again.sources}
    opcua, mqtt = kinds["opcua"], kinds["mqtt"]
    assert isinstance(opcua, OpcuaSource) and isinstance(mqtt, MqttSource)
    assert opcua.tags[0].node_id == "ns=2;s=caster1.mould_level"
    assert mqtt.subscriptions[0].filter == "plantstream-sim/steel/#"
    # A pipeline's own persistent MQTT session: another run on the same broker never gets its queue.
    assert mqtt.client_id == "plantstream-edge-sim-steel"
    own = config_for_sim("steel", "opc.tcp://x:1/p", "mqtt://127.0.0.1:11883", tags, session="t1a2b")
    assert [s.client_id for s in own.sources if isinstance(s, MqttSource)] == ["plantstream-edge-sim-steel-t1a2b"]
    assert {m.tag for m in again.tag_metas()} == {"caster1.mould_level", "ladle.temp"}
    assert _cli("edge", "check", "--config", str(path)).returncode == 0


# --- standard properties (issue 18) ---------------------------------------------------------------

PROPS = """\
agent_id: a1
plant: steel
sources:
  - type: opcua
    id: plc1
    endpoint: opc.tcp://127.0.0.1:4840
    defaults:
      unit: psi
    tags:
      - node_id: ns=2;s=x
        tag: x
        equipment: acme/site/area
        unit: degF
        property: ps:temperature.melt
      - node_id: ns=2;s=y
        tag: y
        equipment: acme/site/area
        property: ps:pressure.gauge
"""


def test_a_tag_carries_a_standard_property_into_its_meta(tmp_path: Path) -> None:
    p = tmp_path / "edge.yaml"
    p.write_text(PROPS)
    metas = {m.tag: m for m in load_config(p).tag_metas()}
    # degF converts to the property's degC; y's psi (from the source defaults) to kPa.
    assert metas["x"].std_property == "ps:temperature.melt" and metas["x"].unit == "degF"
    assert metas["y"].std_property == "ps:pressure.gauge" and metas["y"].unit == "psi"
    assert _cli("edge", "check", "--config", str(p)).returncode == 0


@pytest.mark.parametrize(
    ("change", "line", "key", "says"),
    [
        # An id the vocabulary does not have.
        (("property: ps:temperature.melt", "property: ps:temperature.lava"), 14, "sources.0.tags.0.property",
         "unknown standard property 'ps:temperature.lava'"),
        # The tag's own unit is no temperature.
        (("unit: degF", "unit: bar"), 14, "sources.0.tags.0.property",
         "unit 'bar' cannot be converted to ps:temperature.melt's unit 'degC'"),
        # A unit pint cannot read at all.
        (("unit: degF", "unit: furlongs_per_fortnight"), 14, "sources.0.tags.0.property", "cannot be converted"),
        # The unit comes from the source's defaults (psi -> degC fails): checked after the tags.
        (("property: ps:pressure.gauge", "property: ps:temperature"), 18, "sources.0.tags.1.property",
         "unit 'psi' cannot be converted to ps:temperature's unit 'degC'"),
        # A unit-less property on a tag with a unit.
        (("property: ps:temperature.melt", "property: ps:running"), 14, "sources.0.tags.0.property",
         "has no unit"),
    ],
)  # fmt: skip
def test_a_bad_standard_property_exits_2_naming_file_line_and_key(
    tmp_path: Path, change: tuple[str, str], line: int, key: str, says: str
) -> None:
    p = tmp_path / "edge.yaml"
    p.write_text(PROPS.replace(*change))
    res = _cli("edge", "check", "--config", str(p))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert f"{p}:{line}: key '{key}'" in res.stderr, res.stderr
    assert says in res.stderr, res.stderr


def test_a_vocabulary_set_by_the_environment_is_the_one_checked(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text(
        "vocabulary: site\nprefix: acme\nversion: 0.1.0\niri: 'urn:acme:vocab#'\nproperties:\n"
        "  - {id: 'acme:heat', label: heat, description: a temperature, kind: temperature, unit: degC, ucum: Cel}\n"
    )
    p = tmp_path / "edge.yaml"
    p.write_text(PROPS.replace("ps:temperature.melt", "acme:heat").replace("ps:pressure.gauge", "acme:heat"))
    env = {**os.environ, "PLANTSTREAM_LOG_FORMAT": "text", "PLANTSTREAM_VOCABULARY": str(vocab)}
    cmd = [sys.executable, "-m", "plantstream.cli", "edge", "check", "--config", str(p)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    # x (degF) fits acme:heat; y's psi does not, and the shipped ps: ids are unknown there.
    assert res.returncode == 2 and "sources.0.tags.1.property" in res.stderr, res.stderr
    assert "sources.0.tags.0.property" not in res.stderr, res.stderr
