"""/api/tags shows each tag's standard property (issue 18), written through the real sink."""

from __future__ import annotations

import dataclasses

import pytest

from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.testing.monitor import OWNER, PUBLIC, Served, tag_metas
from plantstream.testing.sinks import records

pytestmark = pytest.mark.integration


def test_api_tags_carries_the_standard_property(api: Served, loaded_db: tuple[str, int]) -> None:
    metas = {m.tag: m for m in tag_metas()}
    props = {"caster1.tundish_temperature": "ps:temperature.melt", "poy1.quench_air_temperature": "ps:temperature.air"}
    sink = PostgresSink(loaded_db[0])
    sink.connect()
    try:
        sink.write(records("tags", [dataclasses.replace(metas[t], std_property=p) for t, p in props.items()]))
        sink.flush()
    finally:
        sink.close()
    status, body = api.get("/api/tags", OWNER)
    assert status == 200, body
    got = {t["tag"]: t["std_property"] for t in body["tags"]}
    assert {t: got[t] for t in props} == props
    assert got["caster1.casting_speed"] == ""  # a tag without one: empty, not missing
    # Withholding is unchanged: the public tier sees neither important tag, nor its property.
    status, body = api.get("/api/tags", PUBLIC)
    assert status == 200 and not {t["tag"] for t in body["tags"]} & set(props)
