"""Live stream: one Kafka consumer fanned out over SSE, filtered per tier (real broker, real HTTP)."""

from __future__ import annotations

import pytest

from plantstream.config import Settings
from plantstream.contract import Aggregate, ContextEvent, ContextKind, Deviation, Grade, TagMeta, now_us
from plantstream.datasets.api import ENGINE
from plantstream.monitor.auth import MonitorConfig
from plantstream.monitor.web import make_app
from plantstream.producers import codec
from plantstream.producers.kafka import ensure_contract_topics, make_producer, produce
from plantstream.producers.topics import Topics
from plantstream.testing.monitor import OWNER, PUBLIC, TOKENS, ServerThread, SseReader
from plantstream.testing.plugin import wait_until

pytestmark = pytest.mark.integration

EQ = "acme/duisburg/steelmaking/caster1/strand"


def _agg(tag: str, start_us: int, value: float) -> Aggregate:
    return Aggregate("steel", EQ, tag, "1s", start_us, 10, 0, value, value, value, value, 0.0, value, "m/min", "H1")


def test_aggregates_deviations_and_lots_reach_sse_clients_by_tier(settings: Settings) -> None:
    topics = Topics(settings.topic_prefix, settings.partitions)
    ensure_contract_topics(settings.kafka_bootstrap, topics)
    producer = make_producer(settings.kafka_bootstrap)
    # The grade of the core tag arrives on the tags topic, before the monitor starts (compacted history).
    produce(
        producer,
        topics.tags,
        codec.encode_tag_meta(TagMeta("steel", "caster1.casting_speed", EQ, "m/min", grade=Grade.CORE)),
        key="steel/caster1.casting_speed",
    )
    produce(
        producer,
        topics.tags,
        codec.encode_tag_meta(TagMeta("steel", "caster1.cooling_water_flow", EQ, "m3/h", grade=Grade.GENERAL)),
        key="steel/caster1.cooling_water_flow",
    )
    producer.flush(10)
    cfg = MonitorConfig(tokens=TOKENS, anonymous_tier="none")
    with ServerThread(make_app(settings, cfg, engine=ENGINE)) as served:
        wait_until(lambda: served.feed.ready.is_set(), 20, "the monitor's Kafka feed to be assigned")
        wait_until(
            lambda: served.hub.grades.grade("steel", "caster1.cooling_water_flow"), 10, "grades from the tags topic"
        )
        owner = SseReader(served.url, f"/api/stream?token={OWNER}")
        public = SseReader(served.url, f"/api/stream?token={PUBLIC}")
        other_plant = SseReader(served.url, f"/api/stream?token={OWNER}&plants=chemical")
        try:
            wait_until(lambda: owner.of("hello") and public.of("hello") and other_plant.of("hello"), 10, "hello events")
            assert public.of("hello")[0]["tier"] == "public" and owner.of("hello")[0]["kafka"] == "live"
            t = (now_us() // 1_000_000) * 1_000_000
            aggs = [_agg("caster1.casting_speed", t, 1.77), _agg("caster1.cooling_water_flow", t, 412.5)]
            produce(producer, topics.aggregates, codec.encode_aggregates(aggs), key=f"steel/{EQ}")
            dev = {
                "id": f"dev-{settings.topic_prefix}",
                "kind": "process",
                "status": "open",
                "plant": "steel",
                "equipment": EQ,
                "tag": "caster1.casting_speed",
                "lot": "H1",
                "spec": "EN10025-2:S355J2",
                "property": "casting_speed",
                "limit_min": 0.9,
                "limit_max": 1.6,
                "unit": "m/min",
                "start_us": t,
                "end_us": None,
                "peak": 1.77,
            }
            produce(producer, topics.deviations, codec.encode_deviation(Deviation.from_map(dev)), key=f"steel/{EQ}")
            lot = ContextEvent(
                ContextKind.LOT_START, "steel", "acme/duisburg/steelmaking/caster1", t, "H2", "heat", "EN10025-2:S355J2"
            )
            produce(producer, topics.context, codec.encode_context(lot), key=lot.key)
            producer.flush(10)

            wait_until(lambda: owner.of("deviation") and owner.of("lot") and owner.of("aggregates"), 15, "owner events")
            wait_until(lambda: public.of("lot") and public.of("aggregates"), 15, "public events")
            got = {a["tag"]: a for ev in owner.of("aggregates") for a in ev["items"]}
            assert got["caster1.casting_speed"]["last"] == 1.77 and got["caster1.cooling_water_flow"]["last"] == 412.5
            assert owner.of("deviation")[0]["id"] == dev["id"] and owner.of("deviation")[0]["peak"] == 1.77
            assert owner.of("lot")[0]["lot"] == "H2" and public.of("lot")[0]["lot"] == "H2"
            # The public stream carries the general tag only: no core-grade value, no core deviation.
            public_tags = {a["tag"] for ev in public.of("aggregates") for a in ev["items"]}
            assert public_tags == {"caster1.cooling_water_flow"}
            assert public.of("deviation") == []
            assert "casting_speed" not in repr(public.events)
            # The plant filter: a chemical-only client got nothing of steel.
            assert other_plant.of("aggregates") == [] and other_plant.of("lot") == []
            metrics = served.get("/metrics", None)[1]
            assert "plantstream_monitor_clients 3.0" in metrics
            assert 'plantstream_monitor_events_fanned_out_total{kind="aggregates"}' in metrics
        finally:
            for r in (owner, public, other_plant):
                r.close()
    producer.flush(5)
