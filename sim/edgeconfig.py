"""Edge-agent configs for the simulated plants (used by the demo and the end-to-end tests).

The simulators publish OPC-UA tags on their own server and MQTT tags as
``{"ts_us": int, "value": v, "unit": str, "quality": "good"}`` on
``plantstream-sim/<plant>/<equipment path...>/<tag>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from plantstream.contract import Grade
from plantstream.edge.config import EdgeConfig, dump_dict
from plantstream.sim.catalog import SimTag

MQTT_ROOT = "plantstream-sim"


def _meta(t: SimTag) -> dict[str, Any]:
    ok_range = t.lo < t.hi
    return {
        "tag": t.tag,
        "equipment": t.equipment,
        "unit": t.unit,
        "datatype": t.datatype,
        "lo": t.lo if ok_range else None,
        "hi": t.hi if ok_range else None,
        "grade": Grade(t.grade),
        "spec_property": t.spec_property,
        "property": t.std_property,
        "description": t.description,
    }


def config_for_sim(
    plant: str, opcua_url: str, mqtt_url: str, tags: list[SimTag] | None = None, session: str = ""
) -> EdgeConfig:
    """One OPC-UA source for the plant's OPC-UA tags, one MQTT source for its MQTT tags.

    The MQTT source keeps a persistent broker session (nothing is lost while the agent is down)
    under a fixed client id; ``session`` names whose session it is: pipelines sharing one broker
    with different sessions do not receive each other's queued messages.

    Raises KeyError for a plant without a catalog and ValueError when the catalog is empty.
    """
    if tags is None:
        from plantstream.sim import catalog

        catalogs: dict[str, list[SimTag]] = getattr(catalog, "CATALOGS", {})
        tags = catalogs[plant]
    opc = [t for t in tags if t.transport == "opcua"]
    mq = [t for t in tags if t.transport == "mqtt"]
    sources: list[dict[str, Any]] = []
    if opc:
        sources.append(
            {
                "type": "opcua",
                "id": f"{plant}-opcua",
                "endpoint": opcua_url,
                "mode": "subscription",
                "publishing_interval_ms": 100,
                "sampling_interval_ms": 0,
                "queue_size": 1000,
                "tags": [{**_meta(t), "node_id": t.node_id or f"ns=2;s={t.tag}"} for t in opc],
            }
        )
    if mq:
        sources.append(
            {
                "type": "mqtt",
                "id": f"{plant}-mqtt",
                "url": mqtt_url,
                "client_id": f"plantstream-edge-sim-{plant}" + (f"-{session}" if session else ""),
                "qos": 1,
                "subscriptions": [
                    {
                        "template": f"{MQTT_ROOT}/{plant}/{{equipment+}}/{{tag}}",
                        "value_path": "value",
                        "timestamp_path": "ts_us",
                        "timestamp_format": "epoch_us",
                        "unit_path": "unit",
                        "quality_path": "quality",
                    }
                ],
                "tags": [_meta(t) for t in mq],
            }
        )
    if not sources:
        raise ValueError(f"the {plant!r} catalog has no tags")
    return EdgeConfig.model_validate({"agent_id": f"sim-{plant}", "plant": plant, "sources": sources})


def dump_config(cfg: EdgeConfig, path: str | Path) -> None:
    """Write YAML the agent loads as is (secrets in clear: the file is their home; mode 0600)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dump_dict(cfg), sort_keys=False, allow_unicode=True)
    p.write_text(text, encoding="utf-8")
    p.chmod(0o600)
